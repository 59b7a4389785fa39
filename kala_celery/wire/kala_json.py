"""Kala's JSON out (docs/kala.md §1, §4, §9, §12; docs/design.md Decisions 2, 13-15).

Output follows Go's ``encoding/json`` as Kala uses it: compact, HTML-safe escaping, one trailing
newline, struct fields in declaration order (callers build ordered dicts; Go *maps* are sorted).
Pure: no Flask, no database, no clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

ZERO_TIME = "0001-01-01T00:00:00Z"
ZERO_DATETIME = datetime(1, 1, 1, tzinfo=UTC)  # Go's zero time.Time, as decoded from ZERO_TIME


_HTML_ESCAPES = {
    "<": "\\u003c",
    ">": "\\u003e",
    "&": "\\u0026",
    "\u2028": "\\u2028",
    "\u2029": "\\u2029",
}
# Python writes \b and \f; Go (the version Kala was checked with) writes \u0008 and \u000c.
# Matching "\\\\" too keeps an escaped backslash followed by "b" intact.
_SHORT_ESCAPE = re.compile(r"\\([\\bf])")
_SHORT_ESCAPES = {"\\": "\\\\", "b": "\\u0008", "f": "\\u000c"}
_SURROGATE = re.compile("[\ud800-\udfff]")


def _encode_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return format_time(obj)
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serializable")


def compact_json(obj: Any) -> str:
    """``obj`` as compact JSON text, before Go's escaping (see :func:`dumps`)."""
    return json.dumps(
        obj,
        ensure_ascii=False,
        separators=(",", ":"),
        allow_nan=False,
        default=_encode_default,
    )


def dumps(obj: Any) -> bytes:
    """Encode like Go's ``json.NewEncoder(w).Encode(obj)``.

    Compact, non-ASCII as raw UTF-8, ``< > &`` and U+2028/U+2029 escaped, one trailing
    newline. Dict order is kept as given; wrap Go maps in :func:`sorted_map`. Datetimes are
    written with :func:`format_time`. NaN and infinities are refused (ValueError), as in Go.
    Floats keep Python's shortest repr (Kala's documents carry none).
    """
    return finish_json(compact_json(obj))


def finish_json(text: str) -> bytes:
    """Compact JSON text as Python's json writes it (``ensure_ascii=False``) -> Go's bytes:
    HTML-safe escapes, ``\\u0008``/``\\u000c``, lone surrogates as ``\\ufffd``, one newline.

    The escaped characters can only occur inside JSON strings, so this is safe on a whole
    document, and on one assembled from pieces of such text (see go_bytes).
    """
    return go_bytes(text) + b"\n"


def go_bytes(text: str) -> bytes:
    """finish_json without the newline: for a piece of a document, which can be escaped on
    its own and joined to the others afterwards."""
    for char, escape in _HTML_ESCAPES.items():
        if char in text:  # a plain substring search: fast on a large document
            text = text.replace(char, escape)
    if "\\b" in text or "\\f" in text:
        text = _SHORT_ESCAPE.sub(lambda m: _SHORT_ESCAPES[m.group(1)], text)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: Go writes invalid UTF-8 as \ufffd
        return _SURROGATE.sub(lambda _m: "\\ufffd", text).encode("utf-8")


def sorted_map(d: dict[str, Any] | None) -> dict[str, Any] | None:
    """A Go map as encoding/json writes it: keys in sorted (byte) order. None stays None."""
    if d is None:
        return None
    return dict(sorted(d.items()))


def format_time(t: datetime | None) -> str:
    """RFC 3339 in UTC with "Z", fraction trimmed (Go's time.Time MarshalJSON).

    None is Go's zero time. A naive datetime is taken as UTC.
    """
    if t is None:
        return ZERO_TIME
    if t.tzinfo is not None:
        if t.utcoffset() is not None:
            t = t.astimezone(UTC)
        t = t.replace(tzinfo=None)
    text = t.isoformat()  # YYYY-MM-DDTHH:MM:SS, then .ffffff when there are microseconds
    return (text.rstrip("0") if t.microsecond else text) + "Z"


def is_zero_time(t: datetime | None) -> bool:
    """True for None and for Go's zero time (what a Go client sends for "unset")."""
    if t is None:
        return True
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t == ZERO_DATETIME


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


# ---------------------------------------------------------------- the job document
#
# One formatter for Kala's Job object (docs/kala.md §4): job_json
# writes it as JSON text straight from a tuple of JOB_FIELDS values, which is what GET /job/
# reads from the database for 10k jobs at a time (plain rows: no ORM objects, no dicts), and
# what job_values makes of a Job object for the single-job answers.

# The extension keys (docs/design.md Decisions 3, 6, 7, 11, 17-21, 30), in the order they are
# written after "is_done", each only when it is not at its default, so that a plain Kala job
# keeps Kala's shape. A new key is one row here (the Job column of the same name).
# How a value is judged set: "text" unless None or ""; "delay" the same and not "PT0S" (Kala's
# immediate retry); "flag" when true (written as true); "json" a JSON column, when the parsed
# value is not empty.
_EXTENSIONS: tuple[tuple[str, str], ...] = (
    ("timezone", "text"),
    ("retry_delay", "delay"),
    ("retry_backoff", "flag"),
    ("run_timeout", "text"),
    ("allow_overlap", "flag"),
    ("queue", "text"),
    ("cron", "text"),  # Decision 18
    ("overlap", "text"),  # Decision 21: "skip" or "allow"; buffer is unset
    ("celery_task", "json"),  # Decision 19
    ("parents_mode", "text"),  # Decision 20
    ("source", "text"),  # Decision 30: "config" or "apply"; the API's jobs have none
)

# Kala's metadata counters: the Job columns under "metadata" (also what a body may seed)
METADATA_FIELDS = (
    "success_count",
    "last_success",
    "error_count",
    "last_error",
    "last_attempted_run",
    "number_of_finished_runs",
)

# The Job columns a document is written from, in the order job_json unpacks them.
JOB_FIELDS: tuple[str, ...] = (
    "name",
    "id",
    "command",
    "owner",
    "disabled",
    "on_failure_job",
    "schedule",
    "retries",
    "epsilon",
    "next_run_at",
    "template_delimiters",
    "resume_at_next_scheduled_time",
    *METADATA_FIELDS,
    "job_type",
    "remote_url",
    "remote_method",
    "remote_body",
    "remote_headers",
    "remote_timeout",
    "remote_expected_codes",
    "is_done",
    *(name for name, _ in _EXTENSIONS),
)
_CORE = JOB_FIELDS.index("is_done") + 1
_TEXT_FIELDS = frozenset(
    {"name", "id", "command", "owner", "on_failure_job", "schedule", "epsilon",
     "template_delimiters", "remote_url", "remote_method", "remote_body"}
)  # fmt: skip
_INT_FIELDS = frozenset(
    {"retries", "success_count", "error_count", "number_of_finished_runs", "job_type",
     "remote_timeout"}
)  # fmt: skip
_EXTENSION_WRITERS = tuple((f',"{name}":', rule) for name, rule in _EXTENSIONS)

_quote = json.encoder.encode_basestring  # the C encoder json.dumps(ensure_ascii=False) uses


def job_values(job: Any) -> tuple[Any, ...]:
    """A Job object (or anything with its attributes; missing extensions count as unset) as
    the tuple of JOB_FIELDS that job_json takes: texts as str, counters as int."""
    values = []
    for name in JOB_FIELDS:
        value = getattr(job, name, None)
        if name in _TEXT_FIELDS:
            value = _text(value)
        elif name in _INT_FIELDS:
            value = _int(value)
        values.append(value)
    return tuple(values)


def _time_text(t: Any) -> str:
    """format_time of a time column as a driver gives it: None, a datetime, or SQLite's text
    (naive UTC, "YYYY-MM-DD HH:MM:SS.ffffff")."""
    if t is None:
        return ZERO_TIME
    if t.__class__ is str:
        if len(t) == 26 and t[10] == " " and t[19] == ".":
            fraction = t[20:].rstrip("0")
            return f"{t[:10]}T{t[11:19]}{'.' + fraction if fraction else ''}Z"
        t = datetime.fromisoformat(t)  # any other spelling SQLite may hold
    return format_time(t)


def _json_value(value: Any) -> Any:
    """A JSON column's value: parsed already (PostgreSQL, ORM) or text (SQLite)."""
    if value is None or value == "null":
        return None
    return json.loads(value) if isinstance(value, str) else value


def _ids(ids: Any) -> str:
    return "[" + ",".join([_quote(i) for i in ids]) + "]"


# A job whose counters are all zero and that never ran, and a job without remote properties:
# most jobs, and the same text every time.
_NO_METADATA = (
    f'"metadata":{{"success_count":0,"last_success":"{ZERO_TIME}","error_count":0,'
    f'"last_error":"{ZERO_TIME}","last_attempted_run":"{ZERO_TIME}","number_of_finished_runs":0}}'
)
_NO_REMOTE = (
    '"remote_properties":{"url":"","method":"","body":"","headers":null,"timeout":0,'
    '"expected_response_codes":null}'
)


def _metadata(
    successes: int, last_success: Any, errors: int, last_error: Any, last_attempt: Any,
    finished: int,
) -> str:  # fmt: skip
    if (
        last_success is None
        and last_error is None
        and last_attempt is None
        and not (successes or errors or finished)
    ):
        return _NO_METADATA
    return (
        f'"metadata":{{"success_count":{int(successes)},'
        f'"last_success":"{_time_text(last_success)}","error_count":{int(errors)},'
        f'"last_error":"{_time_text(last_error)}",'
        f'"last_attempted_run":"{_time_text(last_attempt)}",'
        f'"number_of_finished_runs":{int(finished)}}}'
    )


def _remote(url: str, method: str, body: str, headers: Any, timeout: int, codes: Any) -> str:
    if not (url or method or body or timeout) and headers is None and codes is None:
        return _NO_REMOTE
    headers, codes = _json_value(headers), _json_value(codes)
    if headers is not None:
        headers = {name: list(values) for name, values in sorted(headers.items())}
    return (
        f'"remote_properties":{{"url":{_quote(url)},"method":{_quote(method)},'
        f'"body":{_quote(body)},"headers":{compact_json(headers)},'
        f'"timeout":{int(timeout)},"expected_response_codes":'
        f"{'null' if codes is None else compact_json([int(c) for c in codes])}}}"
    )


def _extensions(values: Sequence[Any]) -> str:
    """The extension keys that are set (see _EXTENSIONS), each as `,"key":value`."""
    out = []
    for (key, rule), value in zip(_EXTENSION_WRITERS, values, strict=True):
        if not value:
            continue
        if rule == "flag":
            out.append(key + "true")
        elif rule == "json":
            value = _json_value(value)
            if value:
                out.append(key + compact_json(value))
        elif rule == "text" or value != "PT0S":
            out.append(key + _quote(value if value.__class__ is str else str(value)))
    return "".join(out)


def job_json(
    values: Sequence[Any],
    *,
    parent_ids: Sequence[str] | None,
    child_ids: Sequence[str] | None,
    stats: Sequence[Any] | None,
    include_stats: bool = True,
) -> str:
    """Kala's Job object plus the extension keys that are set, as compact JSON text before
    Go's escaping (wrap it and pass it to finish_json, as dumps does).

    ``values`` are the job's JOB_FIELDS: from job_values, or a database row of those columns
    as the driver gives it (texts str and counters int, as the columns are NOT NULL; booleans
    bool or 0/1; times datetime, naive UTC or SQLite's text; JSON parsed or text).
    """
    (
        name, job_id, command, owner, disabled, on_failure_job, schedule, retries, epsilon,
        next_run_at, template_delimiters, resume, *metadata,
    ) = values[:18]  # fmt: skip
    job_type, *remote = values[18:25]
    is_done = values[25]
    extensions = values[_CORE:]
    stats_text = ""
    if include_stats:
        listed = compact_json([kala_stat(r) for r in stats]) if stats else "null"
        stats_text = f',"stats":{listed}'
    return (
        f'{{"name":{_quote(name)},"id":{_quote(job_id)},"command":{_quote(command)},'
        f'"owner":{_quote(owner)},"disabled":{"true" if disabled else "false"},'
        f'"dependent_jobs":{_ids(child_ids) if child_ids else "null"},'
        f'"parent_jobs":{_ids(parent_ids) if parent_ids else "null"},'
        f'"on_failure_job":{_quote(on_failure_job)},"schedule":{_quote(schedule)},'
        f'"retries":{int(retries)},"epsilon":{_quote(epsilon)},'
        f'"next_run_at":"{_time_text(next_run_at)}",'
        f'"TemplateDelimiters":{_quote(template_delimiters)},'
        f'"resume_at_next_scheduled_time":{"true" if resume else "false"},'
        f'{_metadata(*metadata)},"type":{int(job_type)},{_remote(*remote)}'
        f'{stats_text},"is_done":{"true" if is_done else "false"}'
        f"{_extensions(extensions) if any(extensions) else ''}}}"
    )


def job_document(
    job: Any,
    *,
    parent_ids: list[str],
    child_ids: list[str],
    stats: list[Any] | None,
    include_stats: bool = True,
) -> dict[str, Any]:
    """job_json of a Job object, parsed back: the document as a dict, for callers that want
    one (the API answers with job_json's text)."""
    text = job_json(
        job_values(job),
        parent_ids=parent_ids,
        child_ids=child_ids,
        stats=stats,
        include_stats=include_stats,
    )
    return json.loads(text)


def kala_stat(run: Any) -> dict[str, Any]:
    """Kala's JobStat (docs/kala.md §9) for one run."""
    return {
        "job_id": _text(run.job_id),
        "ran_at": format_time(run.started_at or run.created_at),
        "number_of_retries": max(_int(run.attempts) - 1, 0),
        "success": run.state == "success",
        "execution_duration": _int(run.duration_ns),
    }


_STATUS = {
    "pending": "Pending",
    "sent": "Pending",
    "started": "Started",
    "success": "Success",
    "failed": "Failed",
    "lost": "Failed",
    "skipped": "Skipped",
}


def execution(run: Any) -> dict[str, Any]:
    """NextKala's run object (docs/kala.md §3.6) plus our extension keys."""
    state = _text(run.state)
    return {
        "id": _text(run.id),
        "job_id": _text(run.job_id),
        "ran_at": format_time(run.started_at or run.created_at),
        "number_of_retries": max(_int(run.attempts) - 1, 0),
        "status": _STATUS.get(state, state.capitalize()),
        "execution_duration": _int(run.duration_ns),
        "output": _text(run.output),
        "state": state,
        "trigger": _text(run.trigger),
        "scheduled_for": format_time(run.scheduled_for),
        "error": _text(run.error),
    }


def app_stats_document(
    *,
    active_jobs: int,
    disabled_jobs: int,
    jobs: int,
    error_count: int,
    success_count: int,
    next_run_at: datetime | None,
    last_attempted_run: datetime | None,
    created: datetime | None,
) -> dict[str, Any]:
    """Kala's ``{"Stats": {...}}`` (docs/kala.md §2.9, §12)."""
    return {
        "Stats": {
            "active_jobs": _int(active_jobs),
            "disabled_jobs": _int(disabled_jobs),
            "jobs": _int(jobs),
            "error_count": _int(error_count),
            "success_count": _int(success_count),
            "next_run_at": format_time(next_run_at),
            "last_attempted_run": format_time(last_attempted_run),
            "created": format_time(created),
        }
    }

