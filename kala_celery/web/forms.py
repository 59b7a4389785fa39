"""The job form: its fields, a job's values for it, and the Kala JSON body it stands for.

The form is only another way to write the body a client would POST: `body_from_form` builds
that JSON text and the caller decodes it with wire.decode_job and stores it with
start.create / start.replace, so a form is refused with the API's own message (a
number field that is not a number gets Go's "cannot unmarshal" text from wire).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kala_celery.store.tables import JOB_CELERY_TASK, JOB_REMOTE, PARENTS_ALL, Job


class FormError(ValueError):
    """The form's own text format (a header line) could not be read."""


@dataclass(frozen=True)
class Field:
    name: str  # the form key
    label: str  # the accessible name
    kind: str = "text"  # text, textarea, number, checkbox, select
    section: str = "job"  # job, local, remote, task, advanced
    hint: str = ""
    placeholder: str = ""
    wide: bool = False  # a whole row of the form


FIELDS = (
    Field("name", "Name", placeholder="nightly backup"),
    Field("type", "Type", "select"),
    Field("owner", "Owner", placeholder="ops@example.com"),
    Field("schedule", "Schedule", hint="R<n>/<start>/<interval>: R = forever, R0 = once, "
          "R5 = 6 runs; empty = once, now", placeholder="R/2026-12-01T09:00:00Z/PT1H"),
    Field("cron", "Cron", hint="instead of a schedule: minute hour day month weekday, "
          "repeats until disabled", placeholder="0 9 * * MON-FRI"),
    Field("timezone", "Time zone", hint="IANA name for calendar steps (days, months) and "
          "cron; empty = the server's zone", placeholder="Europe/Berlin"),
    Field("command", "Command", "textarea", "local", "split into words like a POSIX shell, "
          "run without a shell (bash -c '...' for pipes)", "echo hello"),
    Field("url", "URL", "text", "remote", placeholder="https://example.com/hook", wide=True),
    Field("method", "Method", "text", "remote", "GET when empty", "POST"),
    Field("body", "Body", "textarea", "remote"),
    Field("headers", "Headers", "textarea", "remote", "one per line: Name: value",
          "Content-Type: application/json"),
    Field("timeout", "Timeout", "number", "remote", "seconds; 0 = 30 s"),
    Field("expected_codes", "Expected response codes", "text", "remote",
          "comma separated; empty = any 2xx", "200, 201"),
    Field("task_name", "Task name", "text", "task", "registered in the Celery app of the "
          "workers on the job's queue", "myapp.tasks.report", wide=True),
    Field("task_args", "Arguments", "textarea", "task", "a JSON array", "[1, 2]"),
    Field("task_kwargs", "Keyword arguments", "textarea", "task", "a JSON object",
          '{"scale": 10}'),
    Field("retries", "Retries", "number", "advanced"),
    Field("epsilon", "Epsilon", "text", "advanced", "how late a run may still start",
          "PT5M"),
    Field("retry_delay", "Retry delay", "text", "advanced", "ISO 8601 duration", "PT30S"),
    Field("retry_backoff", "Retry backoff", "checkbox", "advanced", "double the delay each time"),
    Field("run_timeout", "Run timeout", "text", "advanced", "ISO 8601 duration", "PT10M"),
    Field("allow_overlap", "Allow overlap", "checkbox", "advanced"),
    Field("skip_overlap", "Skip while running", "checkbox", "advanced",
          "drop occurrences that fall due while a run is in flight (overlap: skip)"),
    Field("resume", "Resume at next scheduled time", "checkbox", "advanced",
          "skip missed occurrences instead of one catch-up run"),
    Field("queue", "Queue", "text", "advanced", "Celery queue name; empty = default"),
    Field("parents", "Parent jobs", "text", "advanced", "job ids, comma separated: the job "
          "then runs after them"),
    Field("dependents", "Dependent jobs", "text", "advanced", "job ids, comma separated"),
    Field("parents_all", "Wait for all parents", "checkbox", "advanced",
          "run once every parent job has succeeded, not after each"),
    Field("on_failure_job", "On failure job", "text", "advanced",
          "a job id to run after a run fails all its attempts"),
    Field("template_delimiters", "Template delimiters", "text", "advanced",
          "two tokens, e.g. {{ }}: enables templates in the command and request"),
    Field("disabled", "Disabled", "checkbox", "advanced"),
)
NEW_ONLY = (Field("id", "ID", hint="optional; a UUID when empty"),)
TYPES = (("0", "Local command"), ("1", "Remote HTTP call"), ("2", "Celery task"))
_INT = re.compile(r"-?[0-9]+")


def _ids(text: str) -> list[str]:
    return [part for part in re.split(r"[\s,]+", text) if part]


def _number(text: str) -> Any:
    """An integer when it looks like one; otherwise the text, for wire to refuse as Go does."""
    text = text.strip()
    return int(text) if _INT.fullmatch(text) else text


def _headers(text: str) -> dict[str, list[str]] | None:
    headers: dict[str, list[str]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        name, colon, value = line.partition(":")
        if not colon:
            raise FormError(f"Headers: {line.strip()!r} is not a 'Name: value' line")
        headers.setdefault(name.strip(), []).append(value.strip())
    return headers or None


def _json_field(text: str, label: str) -> Any:
    """A JSON form field (empty: null, the default); the decoder checks its kind."""
    if not text.strip():
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise FormError(f"{label}: not JSON ({exc})") from None


def body_from_form(form: Mapping[str, str], *, new: bool) -> bytes:
    """The Kala job JSON the form stands for (only the fields it sets)."""

    def text(key: str) -> str:
        return form.get(key, "")

    def checked(key: str) -> bool:
        return form.get(key) in ("on", "true", "1")

    doc: dict[str, Any] = {"name": text("name").strip(), "owner": text("owner").strip()}
    if new and text("id").strip():
        doc["id"] = text("id").strip()
    job_type = _number(text("type") or "0")
    doc["type"] = job_type
    doc["schedule"] = text("schedule").strip()
    if text("cron").strip():
        doc["cron"] = text("cron").strip()
    if text("timezone").strip():
        doc["timezone"] = text("timezone").strip()
    if job_type == JOB_REMOTE:
        remote: dict[str, Any] = {
            "url": text("url").strip(),
            "method": text("method").strip().upper(),
            "body": text("body"),
            "headers": _headers(text("headers")),
        }
        if text("timeout").strip():
            remote["timeout"] = _number(text("timeout"))
        if text("expected_codes").strip():
            remote["expected_response_codes"] = [
                _number(code) for code in text("expected_codes").split(",") if code.strip()
            ]
        doc["remote_properties"] = remote
    elif job_type == JOB_CELERY_TASK:
        doc["celery_task"] = {
            "name": text("task_name").strip(),
            "args": _json_field(text("task_args"), "Arguments"),
            "kwargs": _json_field(text("task_kwargs"), "Keyword arguments"),
        }
    else:
        doc["command"] = text("command").strip()
    if checked("parents_all"):
        doc["parents_mode"] = PARENTS_ALL
    if text("retries").strip():
        doc["retries"] = _number(text("retries"))
    for key in ("epsilon", "retry_delay", "run_timeout", "queue", "on_failure_job"):
        if text(key).strip():
            doc[key] = text(key).strip()
    if text("template_delimiters").strip():
        doc["TemplateDelimiters"] = text("template_delimiters").strip()
    doc["retry_backoff"] = checked("retry_backoff")
    doc["allow_overlap"] = checked("allow_overlap")
    if checked("skip_overlap"):
        doc["overlap"] = "skip"
    doc["resume_at_next_scheduled_time"] = checked("resume")
    doc["disabled"] = checked("disabled")
    doc["parent_jobs"] = _ids(text("parents"))
    dependents = _ids(text("dependents"))
    if dependents or not new:  # on edit an emptied field removes the dependents
        doc["dependent_jobs"] = dependents
    return json.dumps(doc).encode()


def values_of(job: Job, parents: list[str], children: list[str]) -> dict[str, str]:
    """A stored job as form values (what the Edit form starts with)."""
    codes = job.remote_expected_codes
    headers = job.remote_headers or {}
    task = job.celery_task or {}
    return {
        "task_name": task.get("name", ""),
        "task_args": json.dumps(task["args"]) if task.get("args") else "",
        "task_kwargs": json.dumps(task["kwargs"]) if task.get("kwargs") else "",
        "parents_all": "on" if job.parents_mode == PARENTS_ALL else "",
        "name": job.name,
        "type": str(job.job_type),
        "owner": job.owner,
        "schedule": job.schedule,
        "timezone": job.timezone or "",
        "command": job.command,
        "url": job.remote_url,
        "method": job.remote_method,
        "body": job.remote_body,
        "headers": "\n".join(f"{n}: {v}" for n, values in headers.items() for v in values),
        "timeout": str(job.remote_timeout) if job.remote_timeout else "",
        "expected_codes": ", ".join(str(c) for c in codes) if codes else "",
        "retries": str(job.retries) if job.retries else "",
        "epsilon": job.epsilon,
        "retry_delay": job.retry_delay or "",
        "retry_backoff": "on" if job.retry_backoff else "",
        "run_timeout": job.run_timeout or "",
        "allow_overlap": "on" if job.allow_overlap else "",
        "skip_overlap": "on" if job.overlap == "skip" else "",
        "cron": job.cron or "",
        "resume": "on" if job.resume_at_next_scheduled_time else "",
        "queue": job.queue or "",
        "parents": ", ".join(parents),
        "dependents": ", ".join(children),
        "on_failure_job": job.on_failure_job,
        "template_delimiters": job.template_delimiters,
        "disabled": "on" if job.disabled else "",
    }


# Where a refusal's message is shown besides the top of the form: the first field whose key
# the message names, else the field whose value it quotes.
_NAMED = (
    ("celery_task.name", "task_name"),
    ("celery_task.args", "task_args"),
    ("Arguments:", "task_args"),
    ("celery_task.kwargs", "task_kwargs"),
    ("Keyword arguments:", "task_kwargs"),
    ("parents_mode", "parents_all"),
    ("Job.type", "type"),
    ("type must", "type"),
    ("name is required", "name"),
    ("command is required", "command"),
    ("local jobs are disabled", "command"),
    ("remote_properties.url", "url"),
    ("remote_properties.method", "method"),
    ("remote_properties.headers", "headers"),
    ("Headers:", "headers"),
    ("remote_properties.timeout", "timeout"),
    ("RemoteProperties.timeout", "timeout"),
    ("expected_response_codes", "expected_codes"),
    ("Job.retries", "retries"),
    ("schedule '", "schedule"),
    ("cron", "cron"),
    ("overlap", "skip_overlap"),
    ("epsilon", "epsilon"),
    ("time zone", "timezone"),
    ("queue", "queue"),
    ("TemplateDelimiters", "template_delimiters"),
    ("parent job", "parents"),
    ("own parent", "parents"),
    ("dependent job", "dependents"),
    ("depend on itself", "dependents"),
    ("cycle", "parents"),
    ("id '", "id"),
)


def field_of(message: str, values: Mapping[str, str]) -> str | None:
    """The form field a refusal is about, to show the message next to it too."""
    for needle, key in _NAMED:
        if needle in message:
            return key
    for key, value in values.items():
        if key != "csrf" and value.strip() and repr(value.strip()) in message:
            return key
    return None
