"""The subset of Go's text/template that Kala jobs use (docs/kala.md §7.1, §7.2).

Kala renders a job's command (and a remote job's URL and body) as a Go template whose data is
the Job itself, when ``TemplateDelimiters`` is set. Real jobs only ever print fields:
``{{.Name}}``, ``{{ .Id }}``, ``{{$.Owner}}``, ``{{.Metadata.SuccessCount}}``. That is what this
module implements, with Go's value formatting; trim markers (``{{- .Name -}}``) and comments
(``{{/* ... */}}``) are understood too. Anything else Go's templates can do (pipelines,
functions, ``if``/``range``, variables) is refused with a TemplateError naming the action, so a
job never runs with a half-rendered command.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

__all__ = ["GO_ZERO_TIME", "TemplateError", "go_time", "job_data", "parse_delimiters", "render"]

GO_ZERO_TIME = "0001-01-01 00:00:00 +0000 UTC"  # Go's time.Time{}.String()

_SPACE = " \t\r\n"  # Go's template lexer: what counts as space inside an action
_FIELD_PATH = re.compile(r"(\$?)((?:\.[^\W\d]\w*)+)")  # .A.B or $.A.B (Go identifiers)


class TemplateError(ValueError):
    """The template cannot be rendered; the message says why (for the run's error)."""


def parse_delimiters(delimiters: str) -> tuple[str, str]:
    """``"{{ }}"`` -> ``("{{", "}}")``: exactly two tokens separated by one space (Kala)."""
    parts = delimiters.split(" ")
    if len(parts) != 2 or not all(parts):
        raise TemplateError("Job has invalid templating delimiters.")
    return parts[0], parts[1]


# ---------------------------------------------------------------- the data


def _attr(job: Any, name: str, zero: Any) -> Any:
    value = job.get(name) if isinstance(job, Mapping) else getattr(job, name, None)
    return zero if value is None else value


def job_data(job: Any) -> dict[str, Any]:
    """The job as Go's template sees Kala's ``Job`` struct, from an ORM row (or any object with
    the row's attribute names, or a mapping with those keys). Missing or None strings, numbers
    and booleans become Go's zero values; unset times stay None (rendered as Go's zero time)."""

    def text(name: str) -> str:
        return str(_attr(job, name, ""))

    def number(name: str) -> int:
        return int(_attr(job, name, 0))

    def flag(name: str) -> bool:
        return bool(_attr(job, name, False))

    def time(name: str) -> datetime | None:
        return _attr(job, name, None)

    return {
        "Name": text("name"),
        "Id": text("id"),
        "Command": text("command"),
        "Owner": text("owner"),
        "Disabled": flag("disabled"),
        "OnFailureJob": text("on_failure_job"),
        "Schedule": text("schedule"),
        "Retries": number("retries"),
        "Epsilon": text("epsilon"),
        "NextRunAt": time("next_run_at"),
        "TemplateDelimiters": text("template_delimiters"),
        "ResumeAtNextScheduledTime": flag("resume_at_next_scheduled_time"),
        "Metadata": {
            "SuccessCount": number("success_count"),
            "LastSuccess": time("last_success"),
            "ErrorCount": number("error_count"),
            "LastError": time("last_error"),
            "LastAttemptedRun": time("last_attempted_run"),
            "NumberOfFinishedRuns": number("number_of_finished_runs"),
        },
        "JobType": number("job_type"),
        "RemoteProperties": {
            "Url": text("remote_url"),
            "Method": text("remote_method"),
            "Body": text("remote_body"),
            "Timeout": number("remote_timeout"),
        },
        "IsDone": flag("is_done"),
    }


# ---------------------------------------------------------------- formatting


def go_time(value: datetime | None) -> str:
    """Go's ``time.Time.String()`` layout ``2006-01-02 15:04:05.999999999 -0700 MST``
    (fraction without trailing zeros, omitted when zero). None is Go's zero time; a naive
    datetime is taken as UTC (the database stores UTC)."""
    if value is None:
        return GO_ZERO_TIME
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    offset = value.utcoffset() or timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    numeric = f"{sign}{abs(minutes) // 60:02d}{abs(minutes) % 60:02d}"
    name = value.tzname() or ""
    if value.tzinfo is UTC or (isinstance(value.tzinfo, timezone) and not offset):
        name = "UTC"
    elif isinstance(value.tzinfo, timezone) and name.startswith("UTC"):
        name = numeric  # an unnamed fixed offset: Go prints the offset again
    fraction = f".{value.microsecond:06d}".rstrip("0") if value.microsecond else ""
    date = f"{value.year:04d}-{value.month:02d}-{value.day:02d}"
    clock = f"{value.hour:02d}:{value.minute:02d}:{value.second:02d}{fraction}"
    return f"{date} {clock} {numeric} {name or numeric}"


def _format(value: Any, action: str) -> str:
    if value is None or isinstance(value, datetime):
        return go_time(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int):
        return str(value)
    if isinstance(value, Mapping):
        raise TemplateError(
            f"template: {action}: {action.strip()} is a structure; name one of its fields"
        )
    return str(value)


def _lookup(data: Mapping[str, Any], path: str, action: str) -> Any:
    value: Any = data
    walked = ""
    for name in path[1:].split("."):
        if not isinstance(value, Mapping) or name not in value:
            where = f"{walked} (not a structure)" if walked else "the job"
            if isinstance(value, Mapping) and walked:
                where = walked
            raise TemplateError(f"template: can't evaluate field {name} in {where}: {action}")
        value = value[name]
        walked += "." + name
    return value


# ---------------------------------------------------------------- rendering


def render(text: str, delimiters: str, data: Mapping[str, Any]) -> str:
    """Render ``text`` with ``data`` (see job_data). ``""`` delimiters: templating is off and the
    text is returned as is. Raises TemplateError for bad delimiters, unclosed actions, unknown
    fields and every action that is not a field reference, a comment or empty of output."""
    if not delimiters:
        return text
    left, right = parse_delimiters(delimiters)
    pieces: list[str] = []
    pos = 0
    while (start := text.find(left, pos)) != -1:
        inner_start = start + len(left)
        end = text.find(right, inner_start)
        if end == -1:
            raise TemplateError(
                f"template: unclosed action (starting {text[start : start + 20]!r})"
            )
        inner = text[inner_start:end]
        action = text[start : end + len(right)]
        chunk = text[pos:start]
        after = end + len(right)
        # Trim markers: "{{- " trims space before the action, " -}}" trims space after it.
        if len(inner) >= 2 and inner[0] == "-" and inner[1] in _SPACE:
            chunk = chunk.rstrip(_SPACE)
            inner = inner[1:]
        trim_after = len(inner) >= 2 and inner[-1] == "-" and inner[-2] in _SPACE
        if trim_after:
            inner = inner[:-1]
        pieces.append(chunk)
        pieces.append(_action(inner, action, data))
        if trim_after:
            while after < len(text) and text[after] in _SPACE:
                after += 1
        pos = after
    pieces.append(text[pos:])
    return "".join(pieces)


def _action(inner: str, action: str, data: Mapping[str, Any]) -> str:
    body = inner.strip(_SPACE)
    if body.startswith("/*"):
        if body.endswith("*/") and len(body) >= 4:
            return ""
        raise TemplateError(f"template: unclosed comment in {action}")
    if not body:
        raise TemplateError(f"template: missing value in {action}")
    match = _FIELD_PATH.fullmatch(body)
    if match is None:
        raise TemplateError(
            f"template: unsupported action {action}: only field references such as "
            f"{{{{.Name}}}} or {{{{.Metadata.SuccessCount}}}} are supported"
        )
    return _format(_lookup(data, match.group(2), action), action)
