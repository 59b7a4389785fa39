"""Kala's JSON in: a job body decoded the way Go's ``json.Unmarshal`` decodes into Kala's
``job.Job``: case-insensitive keys, last key wins, ``null`` leaves a field alone, strict Go
types, and Go's own error messages (docs/kala.md §1; docs/design.md Decisions 13-15, 25).
Pure: no Flask, no database, no clock.
"""

from __future__ import annotations

import json
import math
import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from kala_celery.wire import limits
from kala_celery.wire.go_scanner import syntax_error

_SURROGATE = re.compile("[\ud800-\udfff]")  # lone surrogates, from \\ud800-style escapes


class WireError(ValueError):
    """A request body Kala would refuse; str(e) is the message for {"error": ...}."""


# ================================================================ input: syntax
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
        message = syntax_error(data)
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
        ("source", "source", "string", "string"),  # Decision 30
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
