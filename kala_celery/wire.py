"""Kala's JSON in and out (docs/kala.md §1, §4, §9, §12; docs/design.md Decisions 2, 13-15).

Output follows Go's ``encoding/json`` as Kala uses it: compact, HTML-safe escaping, one trailing
newline, struct fields in declaration order (callers build ordered dicts; Go *maps* are sorted).

Input decodes a job body the way Go's ``json.Unmarshal`` decodes into Kala's ``job.Job``:
case-insensitive keys, last key wins, ``null`` leaves a field alone, strict Go types, and Go's
own error messages. Pure: no Flask, no database, no clock.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from kala_celery import limits

__all__ = [
    "JOB_FIELDS",
    "ZERO_DATETIME",
    "ZERO_TIME",
    "WireError",
    "app_stats_document",
    "compact_json",
    "decode_job",
    "decode_status",
    "dumps",
    "execution",
    "finish_json",
    "format_time",
    "go_bytes",
    "is_zero_time",
    "job_document",
    "job_json",
    "job_values",
    "kala_stat",
    "sorted_map",
]

ZERO_TIME = "0001-01-01T00:00:00Z"
ZERO_DATETIME = datetime(1, 1, 1, tzinfo=UTC)  # Go's zero time.Time, as decoded from ZERO_TIME


class WireError(ValueError):
    """A request body Kala would refuse; str(e) is the message for {"error": ...}."""


# ================================================================ output

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

# The extension keys (docs/design.md Decisions 3, 6, 7, 11, 17-21), in the order they are
# written after "is_done", each only when it is not at its default, so that a plain Kala job
# keeps Kala's shape. A new key is one row here (the column of the same name on models.Job).
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


# ================================================================ input: syntax
#
# Python's json module decides whether a body is valid (it accepts exactly JSON, plus
# NaN/Infinity, which are refused through parse_constant). When it is not, the body is run
# through a port of Go's scanner (encoding/json/scanner.go) to get Go's message.

_MAX_DEPTH = 10000  # Go's maxNestingDepth
_SPACE = frozenset(b" \t\r\n")
_DIGITS = frozenset(b"0123456789")
_HEX = frozenset(b"0123456789abcdefABCDEF")
_ESCAPABLE = frozenset(b'bfnrt\\/"')
# Fast paths for the scanner below: regular expressions for stretches of input that Go's
# steps would walk through without an error. Quantifiers are possessive so that a failing
# match (an unterminated string, say) costs linear time instead of backtracking.
_WS = rb"[ \t\r\n]*+"
_ESCAPE = rb'\\["\\/bfnrt]|\\u[0-9a-fA-F]{4}'
_STRING_RUN = re.compile(rb'(?:[^"\\\x00-\x1f]++|' + _ESCAPE + rb")++")
_SPACE_RUN = re.compile(rb"[ \t\r\n]+")
_STRING_TOKEN = rb'"(?:[^"\\\x00-\x1f]++|' + _ESCAPE + rb')*+"'
_NUMBER_TOKEN = rb"-?(?:0|[1-9][0-9]*+)(?:\.[0-9]++)?+(?:[eE][+-]?[0-9]++)?+"
_SCALAR = rb"(?:" + _STRING_TOKEN + rb"|true|false|null|" + _NUMBER_TOKEN + rb")"
_MEMBER = _STRING_TOKEN + _WS + rb":" + _WS + _SCALAR + _WS
# An array or object holding only scalars (one level of nesting).
_FLAT = (
    rb"(?:\[" + _WS + rb"(?:" + _SCALAR + _WS + rb"(?:," + _WS + _SCALAR + _WS + rb")*+)?+\]"
    rb"|\{" + _WS + rb"(?:" + _MEMBER + rb"(?:," + _WS + _MEMBER + rb")*+)?+\})"
)
# A whole value (group 2: a bare number, which needs a look at the next byte) + whitespace.
_VALUE_TOKEN = re.compile(
    rb"(" + _STRING_TOKEN + rb"|true|false|null|(" + _NUMBER_TOKEN + rb")|" + _FLAT + rb")" + _WS
)
_KEY_TOKEN = re.compile(_STRING_TOKEN + _WS)
# Runs of complete array elements / object members, each followed by a comma.
_ELEMENTS = re.compile(rb"(?:(?:" + _SCALAR + rb"|" + _FLAT + rb")" + _WS + rb"," + _WS + rb")++")
_MEMBERS = re.compile(
    rb"(?:"
    + _STRING_TOKEN
    + _WS
    + rb":"
    + _WS
    + rb"(?:"
    + _SCALAR
    + rb"|"
    + _FLAT
    + rb")"
    + _WS
    + rb","
    + _WS
    + rb")++"
)
_NUMBER_MORE = frozenset(b".eE+-0123456789")
_CONTROL_QUOTES = {7: "\\a", 8: "\\b", 9: "\\t", 10: "\\n", 11: "\\v", 12: "\\f", 13: "\\r"}

_OBJECT_KEY, _OBJECT_VALUE, _ARRAY_VALUE = range(3)


def _quote_char(c: int) -> str:
    """Go's quoteChar: the byte as a rune, quoted like strconv.Quote, in single quotes."""
    if c == 0x27:
        return "'\\''"
    if c == 0x22:
        return "'\"'"
    if c == 0x5C:
        return "'\\\\'"
    ch = chr(c)
    if ch.isprintable():
        return f"'{ch}'"
    if c in _CONTROL_QUOTES:
        return f"'{_CONTROL_QUOTES[c]}'"
    if c < 0x20 or c == 0x7F:
        return f"'\\x{c:02x}'"
    return f"'\\u{c:04x}'"


class _GoScanner:
    """Go's JSON scanner, one byte at a time; ``error`` holds Go's message once it fails.

    ``fast=False`` turns the regular-expression shortcuts off (the tests compare both ways).
    """

    def __init__(self, *, fast: bool = True) -> None:
        self.fast = fast
        self.step = self._begin_value
        self.stack: list[int] = []
        self.end_top = False
        self.error: str | None = None
        self.literal = b""  # the rest of true/false/null still expected
        self.literal_name = ""
        self.hex_left = 0

    def check(self, data: bytes) -> str | None:
        values = (self._begin_value, self._begin_value_or_empty)
        keys = (self._begin_string, self._begin_string_or_empty)
        spaces = (*values, *keys, self._end_value, self._end_top)
        i, n = 0, len(data)
        while i < n:
            step = self.step
            run = None
            # Fast paths (see the expressions above); the steps still see every byte that
            # could fail, so the messages are Go's.
            if not self.fast:
                pass
            elif step == self._in_string:
                run = _STRING_RUN.match(data, i)
            elif data[i] in _SPACE:
                if step in spaces:
                    run = _SPACE_RUN.match(data, i)
            elif len(self.stack) >= _MAX_DEPTH:
                pass  # a flat container here would exceed the depth: go byte by byte
            elif step in values:
                if self.stack and self.stack[-1] == _ARRAY_VALUE:
                    run = _ELEMENTS.match(data, i)
                if run is not None:
                    self.step = self._begin_value  # after a comma
                else:
                    run = _VALUE_TOKEN.match(data, i)
                    end = -1 if run is None else run.end(1)
                    if run is not None and run.group(2) and end < n and data[end] in _NUMBER_MORE:
                        run = None  # "1.", "1e", "01": let the steps name the byte
                    if run is not None:
                        self.step = self._end_value
            elif step in keys:
                run = _MEMBERS.match(data, i)
                if run is not None:
                    self.step = self._begin_string  # after a comma
                else:
                    run = _KEY_TOKEN.match(data, i)
                    if run is not None:
                        self.step = self._end_value
            if run is not None:
                i = run.end()
                continue
            step(data[i])
            if self.error is not None:
                return self.error
            i += 1
        return self.eof()

    def eof(self) -> str | None:
        if self.error is not None:
            return self.error
        if self.end_top:
            return None
        self.step(0x20)
        if self.end_top:
            return None
        if self.error is None:
            self.error = "unexpected end of JSON input"
        return self.error

    def _fail(self, c: int, context: str) -> None:
        self.step = self._failed
        self.error = f"invalid character {_quote_char(c)} {context}"

    def _failed(self, c: int) -> None:
        pass

    def _push(self, c: int, state: int) -> None:
        self.stack.append(state)
        if len(self.stack) > _MAX_DEPTH:
            self._fail(c, "exceeded max depth")

    def _pop(self) -> None:
        self.stack.pop()
        if self.stack:
            self.step = self._end_value
        else:
            self.step = self._end_top
            self.end_top = True

    def _begin_value_or_empty(self, c: int) -> None:
        if c in _SPACE:
            return
        if c == 0x5D:  # ]
            self._end_value(c)
            return
        self._begin_value(c)

    def _begin_value(self, c: int) -> None:
        if c in _SPACE:
            return
        if c == 0x7B:  # {
            self.step = self._begin_string_or_empty
            self._push(c, _OBJECT_KEY)
        elif c == 0x5B:  # [
            self.step = self._begin_value_or_empty
            self._push(c, _ARRAY_VALUE)
        elif c == 0x22:
            self.step = self._in_string
        elif c == 0x2D:  # -
            self.step = self._negative
        elif c == 0x30:
            self.step = self._zero
        elif c in _DIGITS:
            self.step = self._one
        elif c in b"tfn":
            self.literal_name = {0x74: "true", 0x66: "false", 0x6E: "null"}[c]
            self.literal = self.literal_name[1:].encode()
            self.step = self._in_literal
        else:
            self._fail(c, "looking for beginning of value")

    def _begin_string_or_empty(self, c: int) -> None:
        if c in _SPACE:
            return
        if c == 0x7D:  # }
            self.stack[-1] = _OBJECT_VALUE
            self._end_value(c)
            return
        self._begin_string(c)

    def _begin_string(self, c: int) -> None:
        if c in _SPACE:
            return
        if c == 0x22:
            self.step = self._in_string
        else:
            self._fail(c, "looking for beginning of object key string")

    def _end_value(self, c: int) -> None:
        if not self.stack:
            self.step = self._end_top
            self.end_top = True
            self._end_top(c)
            return
        if c in _SPACE:
            self.step = self._end_value
            return
        top = self.stack[-1]
        if top == _OBJECT_KEY:
            if c == 0x3A:  # :
                self.stack[-1] = _OBJECT_VALUE
                self.step = self._begin_value
            else:
                self._fail(c, "after object key")
        elif top == _OBJECT_VALUE:
            if c == 0x2C:  # ,
                self.stack[-1] = _OBJECT_KEY
                self.step = self._begin_string
            elif c == 0x7D:
                self._pop()
            else:
                self._fail(c, "after object key:value pair")
        elif c == 0x2C:
            self.step = self._begin_value
        elif c == 0x5D:
            self._pop()
        else:
            self._fail(c, "after array element")

    def _end_top(self, c: int) -> None:
        if c not in _SPACE:
            self._fail(c, "after top-level value")

    def _in_string(self, c: int) -> None:
        if c == 0x22:
            self.step = self._end_value
        elif c == 0x5C:
            self.step = self._in_string_escape
        elif c < 0x20:
            self._fail(c, "in string literal")

    def _in_string_escape(self, c: int) -> None:
        if c in _ESCAPABLE:
            self.step = self._in_string
        elif c == 0x75:  # u
            self.hex_left = 4
            self.step = self._in_string_hex
        else:
            self._fail(c, "in string escape code")

    def _in_string_hex(self, c: int) -> None:
        if c in _HEX:
            self.hex_left -= 1
            if not self.hex_left:
                self.step = self._in_string
        else:
            self._fail(c, "in \\u hexadecimal character escape")

    def _negative(self, c: int) -> None:
        if c == 0x30:
            self.step = self._zero
        elif c in _DIGITS:
            self.step = self._one
        else:
            self._fail(c, "in numeric literal")

    def _one(self, c: int) -> None:
        if c in _DIGITS:
            return
        self._zero(c)

    def _zero(self, c: int) -> None:
        if c == 0x2E:  # .
            self.step = self._dot
        elif c in b"eE":
            self.step = self._exponent
        else:
            self._end_value(c)

    def _dot(self, c: int) -> None:
        if c in _DIGITS:
            self.step = self._fraction
        else:
            self._fail(c, "after decimal point in numeric literal")

    def _fraction(self, c: int) -> None:
        if c in _DIGITS:
            return
        if c in b"eE":
            self.step = self._exponent
        else:
            self._end_value(c)

    def _exponent(self, c: int) -> None:
        if c in b"+-":
            self.step = self._exponent_sign
        else:
            self._exponent_sign(c)

    def _exponent_sign(self, c: int) -> None:
        if c in _DIGITS:
            self.step = self._exponent_digits
        else:
            self._fail(c, "in exponent of numeric literal")

    def _exponent_digits(self, c: int) -> None:
        if c not in _DIGITS:
            self._end_value(c)

    def _in_literal(self, c: int) -> None:
        want = self.literal[0]
        if c != want:
            self._fail(c, f"in literal {self.literal_name} (expecting {_quote_char(want)})")
            return
        self.literal = self.literal[1:]
        if not self.literal:
            self.step = self._end_value


def _go_syntax_error(data: bytes) -> str | None:
    """Go's json.Unmarshal syntax message for ``data``, or None when Go finds it valid."""
    return _GoScanner().check(data)


class _Num:
    """A JSON number, kept as its source text (Go's messages quote it)."""

    __slots__ = ("text",)

    def __init__(self, text: str) -> None:
        self.text = text


class _Obj:
    """A JSON object as its key/value pairs in document order (repeats kept)."""

    __slots__ = ("pairs",)

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


class _Refused(Exception):
    """NaN / Infinity: Python's json accepts them, Go does not."""


def _refuse_constant(_name: str) -> Any:
    raise _Refused


def _as_bytes(body: bytes | bytearray | memoryview | str) -> bytes:
    if isinstance(body, str):
        return body.encode("utf-8", "surrogatepass")
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError(f"body must be bytes, not {type(body).__name__}")


def _parse(body: bytes | bytearray | memoryview | str) -> Any:
    """Parse a JSON document into str/_Num/bool/None/list/_Obj, or raise WireError."""
    data = _as_bytes(body)
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_Obj,
            parse_int=_Num,
            parse_float=_Num,
            parse_constant=_refuse_constant,
        )
    except (UnicodeDecodeError, ValueError, _Refused, RecursionError) as exc:
        message = _go_syntax_error(data)
        if message is None:
            if isinstance(exc, UnicodeDecodeError):
                message = f"invalid UTF-8 in JSON input at offset {exc.start}"
            elif isinstance(exc, RecursionError):
                message = limits.NESTING_ERROR
            else:  # not expected: the scanner and Python's json agree on validity
                message = f"invalid JSON input: {exc}"
        raise WireError(message) from None
    if not limits.nesting_depth_ok(data, value, _containers):  # Decision 25
        raise WireError(limits.NESTING_ERROR)
    return value


def _containers(value: Any) -> list[Any]:
    """The arrays and objects directly inside a parsed value (for the nesting limit)."""
    if isinstance(value, _Obj):
        items = [item for _key, item in value.pairs]
    else:
        items = value if isinstance(value, list) else []
    return [item for item in items if isinstance(item, (list, _Obj))]


# ================================================================ input: Go types


def _clean(s: str) -> str:
    """Lone surrogates from "\\ud800"-style escapes become U+FFFD, as Go decodes them."""
    return _SURROGATE.sub("\ufffd", s) if _SURROGATE.search(s) else s


def _kind(value: Any, *, numeric_target: bool = False) -> str:
    """The JSON kind in Go's UnmarshalTypeError ("number 1.5" only for int/uint targets)."""
    if isinstance(value, str):
        return "string"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, _Num):
        return f"number {value.text}" if numeric_target else "number"
    if isinstance(value, list):
        return "array"
    return "object"


def _type_error(value: Any, path: str, go_type: str, *, numeric: bool = False) -> WireError:
    kind = _kind(value, numeric_target=numeric)
    return WireError(f"json: cannot unmarshal {kind} into Go struct field {path} of type {go_type}")


_INT_TEXT = re.compile(r"-?[0-9]+", re.ASCII)
_UINT_TEXT = re.compile(r"[0-9]+", re.ASCII)
_INT64 = (-(1 << 63), (1 << 63) - 1)
_UINT64 = (0, (1 << 64) - 1)


def _integer(value: Any, path: str, go_type: str, *, unsigned: bool) -> int:
    if not isinstance(value, _Num):
        raise _type_error(value, path, go_type, numeric=True)
    text = value.text
    pattern, (low, high) = (_UINT_TEXT, _UINT64) if unsigned else (_INT_TEXT, _INT64)
    if len(text) > 21 or not pattern.fullmatch(text):
        raise _type_error(value, path, go_type, numeric=True)
    number = int(text)
    if not low <= number <= high:
        raise _type_error(value, path, go_type, numeric=True)
    return number


def _string(value: Any, path: str, go_type: str = "string") -> str:
    if not isinstance(value, str):
        raise _type_error(value, path, go_type)
    return _clean(value)


def _bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise _type_error(value, path, "bool")
    return value


_RFC3339 = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2})?",
    re.ASCII,
)


def _time(value: Any, path: str) -> datetime:
    """Go's time.Time UnmarshalJSON (RFC 3339 with a zone), as an aware UTC datetime."""
    if not isinstance(value, str):
        raise _type_error(value, path, "time.Time")
    shown = json.dumps(value if len(value) <= 64 else value[:64] + "...", ensure_ascii=False)

    def bad(reason: str) -> WireError:
        return WireError(
            f"parsing time {shown} into Go struct field {path} of type time.Time: {reason}"
        )

    m = _RFC3339.fullmatch(value)
    if m is None:
        raise bad('want RFC 3339, e.g. "2006-01-02T15:04:05Z" or "2006-01-02T15:04:05+07:00"')
    *numbers, fraction, zone = m.groups()
    if zone is None:
        raise bad('missing time zone ("Z" or "+hh:mm")')
    year, month, day, hour, minute, second = (int(n) for n in numbers)
    limits = (
        ("year", year, 1, 9999),
        ("month", month, 1, 12),
        ("hour", hour, 0, 23),
        ("minute", minute, 0, 59),
        ("second", second, 0, 59),
    )
    for name, number, low, high in limits:
        if not low <= number <= high:
            raise bad(f"{name} out of range")
    offset = timedelta(0)
    if zone != "Z":
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        if zone_hours > 23 or zone_minutes > 59:
            raise bad("time zone offset out of range")
        offset = timedelta(hours=zone_hours, minutes=zone_minutes)
        if zone[0] == "-":
            offset = -offset
    micro = int((fraction or "")[:6].ljust(6, "0"))  # Go keeps ns; Python keeps µs
    try:
        parsed = datetime(year, month, day, hour, minute, second, micro, tzinfo=timezone(offset))
    except ValueError:
        raise bad("day out of range") from None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is before year 1 in UTC
        raise bad("year out of range") from None


def _string_list(value: Any, path: str, go_type: str = "[]string") -> list[str]:
    if not isinstance(value, list):
        raise _type_error(value, path, go_type)
    return ["" if item is None else _string(item, path) for item in value]


def _int_list(value: Any, path: str) -> list[int]:
    if not isinstance(value, list):
        raise _type_error(value, path, "[]int")
    return [0 if item is None else _integer(item, path, "int", unsigned=False) for item in value]


def _headers(value: Any, path: str, into: dict[str, list[str]] | None) -> dict[str, list[str]]:
    """map[string][]string; a repeated "headers" key adds to the map, as Go reuses it."""
    if not isinstance(value, _Obj):
        raise _type_error(value, path, "map[string][]string")
    headers = {} if into is None else into
    for name, values in value.pairs:
        headers[_clean(name)] = [] if values is None else _string_list(values, path)
    return headers


def _plain(value: Any) -> Any:
    """A parsed value as plain Python JSON data (for fields kept as given)."""
    if isinstance(value, _Num):
        text = value.text
        if _INT_TEXT.fullmatch(text) and len(text) < 4000:
            return int(text)
        number = float(text)
        return number if math.isfinite(number) else text
    if isinstance(value, _Obj):
        return {_clean(k): _plain(v) for k, v in value.pairs}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, str):
        return _clean(value)
    return value


def _json(value: Any, path: str, kind: str) -> Any:
    """`args` ([]) or `kwargs` ({}) of a Celery-task job, as plain JSON data; a number no
    float64 holds (1e999) is refused rather than changed."""
    if kind == "args" and not isinstance(value, list):
        raise _type_error(value, path, "[]interface {}")
    if kind == "kwargs" and not isinstance(value, _Obj):
        raise _type_error(value, path, "map[string]interface {}")

    def plain(item: Any) -> Any:
        if isinstance(item, _Num):
            number = _plain(item)
            if isinstance(number, str):
                raise WireError(f"json: {path}: number {item.text[:40]} does not fit in a float64")
            return number
        if isinstance(item, _Obj):
            return {_clean(k): plain(v) for k, v in item.pairs}
        if isinstance(item, list):
            return [plain(element) for element in item]
        return _clean(item) if isinstance(item, str) else item

    return plain(value)


def _stats(value: Any, path: str) -> list[Any]:
    if not isinstance(value, list):
        raise _type_error(value, path, "[]*job.JobStat")
    for item in value:
        if item is not None and not isinstance(item, _Obj):
            raise _type_error(item, path, "job.JobStat")
    return _plain(value)


# A field: (canonical name, Go JSON name, decoder kind, Go type for messages).
# Kinds: "string", "bool", "uint", "int", "time", "strings", "ints", "headers", "stats",
# "args" and "kwargs" (a Celery task's: any JSON array / object),
# or the field index of a nested struct (a dict).
_Field = tuple[str, str, Any, str]


def _index(fields: list[_Field]) -> dict[str, _Field]:
    """A field table by lower-cased Go JSON name (see _fold)."""
    return {field[1].lower(): field for field in fields}


_METADATA = _index(
    [
        ("success_count", "success_count", "uint", "uint"),
        ("last_success", "last_success", "time", "time.Time"),
        ("error_count", "error_count", "uint", "uint"),
        ("last_error", "last_error", "time", "time.Time"),
        ("last_attempted_run", "last_attempted_run", "time", "time.Time"),
        ("number_of_finished_runs", "number_of_finished_runs", "uint", "uint"),
    ]
)

_REMOTE = _index(
    [
        ("url", "url", "string", "string"),
        ("method", "method", "string", "string"),
        ("body", "body", "string", "string"),
        ("headers", "headers", "headers", "map[string][]string"),
        ("timeout", "timeout", "int", "int"),
        ("expected_response_codes", "expected_response_codes", "ints", "[]int"),
    ]
)

_CELERY_TASK = _index(
    [
        ("name", "name", "string", "string"),
        ("args", "args", "args", "[]interface {}"),
        ("kwargs", "kwargs", "kwargs", "map[string]interface {}"),
    ]
)

_JOB = _index(
    [
        ("name", "name", "string", "string"),
        ("id", "id", "string", "string"),
        ("command", "command", "string", "string"),
        ("owner", "owner", "string", "string"),
        ("disabled", "disabled", "bool", "bool"),
        ("dependent_jobs", "dependent_jobs", "strings", "[]string"),
        ("parent_jobs", "parent_jobs", "strings", "[]string"),
        ("on_failure_job", "on_failure_job", "string", "string"),
        ("schedule", "schedule", "string", "string"),
        ("retries", "retries", "uint", "uint"),
        ("epsilon", "epsilon", "string", "string"),
        ("next_run_at", "next_run_at", "time", "time.Time"),
        ("template_delimiters", "TemplateDelimiters", "string", "string"),
        ("resume_at_next_scheduled_time", "resume_at_next_scheduled_time", "bool", "bool"),
        ("metadata", "metadata", _METADATA, "job.Metadata"),
        ("type", "type", "int", "job.jobType"),
        ("remote_properties", "remote_properties", _REMOTE, "job.RemoteProperties"),
        ("stats", "stats", "stats", "[]*job.JobStat"),
        ("is_done", "is_done", "bool", "bool"),
        # Extensions (Decisions 3, 6, 7, 11, 17 in docs/design.md)
        ("timezone", "timezone", "string", "string"),
        ("retry_delay", "retry_delay", "string", "string"),
        ("retry_backoff", "retry_backoff", "bool", "bool"),
        ("run_timeout", "run_timeout", "string", "string"),
        ("allow_overlap", "allow_overlap", "bool", "bool"),
        ("queue", "queue", "string", "string"),
        ("cron", "cron", "string", "string"),  # Decision 18
        ("overlap", "overlap", "string", "string"),  # Decision 21
        ("celery_task", "celery_task", _CELERY_TASK, "job.CeleryTask"),  # Decision 19
        ("parents_mode", "parents_mode", "string", "string"),  # Decision 20
    ]
)

# Slices and maps: Go sets them to nil on null. Scalars and structs: null leaves them alone.
_NIL_ON_NULL = frozenset({"strings", "ints", "headers", "stats", "args", "kwargs"})


def _fold(key: str) -> str | None:
    """Go's case-insensitive key match against ASCII names (bytes.EqualFold): the Kelvin sign
    and long s fold to k and s; any other non-ASCII key matches nothing."""
    if not key.isascii():
        key = key.replace("\u212a", "k").replace("\u017f", "s")
        if not key.isascii():
            return None
    return key.lower()


def _decode_struct(
    obj: _Obj, index: dict[str, _Field], struct: str, prefix: str, out: dict[str, Any]
) -> None:
    """Decode `obj` into `out`. Go names a field in its errors by its innermost struct type
    and its full path from the root: `Metadata.metadata.success_count`."""
    for key, value in obj.pairs:
        folded = _fold(key)
        field = index.get(folded) if folded is not None else None
        if field is None:
            continue  # unknown keys are ignored
        name, wire_name, kind, go_type = field
        field_path = f"{struct}.{prefix}{wire_name}"
        if value is None:
            if isinstance(kind, str) and kind in _NIL_ON_NULL:
                out.pop(name, None)
            continue
        if isinstance(kind, dict):
            if not isinstance(value, _Obj):
                raise _type_error(value, field_path, go_type)
            # A repeated struct key decodes into the same struct: the keys merge.
            _decode_struct(value, kind, go_type.rsplit(".", 1)[-1], f"{prefix}{wire_name}.",
                           out.setdefault(name, {}))
        elif kind == "string":
            out[name] = _string(value, field_path)
        elif kind == "bool":
            out[name] = _bool(value, field_path)
        elif kind == "uint":
            out[name] = _integer(value, field_path, go_type, unsigned=True)
        elif kind == "int":
            out[name] = _integer(value, field_path, go_type, unsigned=False)
        elif kind == "time":
            out[name] = _time(value, field_path)
        elif kind == "strings":
            out[name] = _string_list(value, field_path)
        elif kind == "ints":
            out[name] = _int_list(value, field_path)
        elif kind == "headers":
            out[name] = _headers(value, field_path, out.get(name))
        elif kind in ("args", "kwargs"):
            out[name] = _json(value, field_path, kind)
        else:  # "stats"
            out[name] = _stats(value, field_path)


def decode_job(body: bytes) -> dict[str, Any]:
    """Decode a Kala job body as Go's json.Unmarshal into job.Job would (docs/kala.md §1.5, §4).

    Returns only the fields that were present and not null, under canonical names (see the
    field table above; "TemplateDelimiters" becomes "template_delimiters"); ``metadata`` and
    ``remote_properties`` are dicts of the same kind. Times are aware UTC datetimes (Go's zero
    time decodes to ZERO_DATETIME). Raises WireError, with Go's message where Go has one.
    """
    value = _parse(body)
    if value is None:
        return {}
    if not isinstance(value, _Obj):
        raise WireError(f"json: cannot unmarshal {_kind(value)} into Go value of type job.Job")
    out: dict[str, Any] = {}
    try:
        _decode_struct(value, _JOB, "Job", "", out)
    except RecursionError:
        raise WireError("exceeded max depth") from None
    return out


def decode_status(body: bytes) -> str:
    """NextKala's PUT /executions/{run}/ body: one JSON string, e.g. "Success"."""
    value = _parse(body)
    if not isinstance(value, str):
        kind = "null" if value is None else _kind(value)
        raise WireError(f"json: cannot unmarshal {kind} into Go value of type string")
    return _clean(value)
