"""`GET /job/`: every job's Kala document, written straight from plain rows as JSON text.

`wire.job_document` builds the same document as a dict, and is the reference: for 10k jobs,
loading ORM objects, building 10k dicts and encoding them took ~0.8 s, so the list selects
plain tuples (Core, no identity map) and formats each document in one f-string. Strings go
through the json module's own C string encoder and the whole text through
`wire.finish_json`, so the bytes are those of `wire.dumps(wire.job_document(...))`
(tests/test_api_fast_paths.py checks this on random jobs).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from operator import itemgetter
from typing import Any

from sqlalchemy import JSON, Boolean, DateTime, Integer, String, select, type_coerce
from sqlalchemy.orm import Session

from kala_celery import wire
from kala_celery.models import Job, UTCDateTime

# The Job columns a document needs, in the order `job_text` unpacks them.
FIELDS = (
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
    "success_count",
    "last_success",
    "error_count",
    "last_error",
    "last_attempted_run",
    "number_of_finished_runs",
    "job_type",
    "remote_url",
    "remote_method",
    "remote_body",
    "remote_headers",
    "remote_timeout",
    "remote_expected_codes",
    "is_done",
    "timezone",
    "retry_delay",
    "retry_backoff",
    "run_timeout",
    "allow_overlap",
    "queue",
    "cron",
    "overlap",
    "celery_task",
    "parents_mode",
)

_quote = json.encoder.encode_basestring  # the C encoder json.dumps(ensure_ascii=False) uses
_time = wire.format_time
_ZERO = wire.ZERO_TIME


def _raw(column: Any) -> Any:
    """The column without SQLAlchemy's per-value result processing (a third of the time
    of reading 10k rows): booleans as the driver gives them (bool, or 0/1 on SQLite), times
    and JSON as the driver gives them (datetime or text); `job_text` takes either."""
    kind = column.type
    if isinstance(kind, Boolean):
        return type_coerce(column, Integer()).label(column.name)
    if isinstance(kind, (UTCDateTime, DateTime, JSON)):
        return type_coerce(column, String()).label(column.name)
    return column


def job_rows(session: Session) -> list[Sequence[Any]]:
    """Every job as a plain tuple of FIELDS, sorted by id (code point order, as Go's map)."""
    columns = [_raw(Job.__table__.c[name]) for name in FIELDS]
    rows = session.execute(select(*columns)).all()
    rows.sort(key=itemgetter(1))
    return rows


def _time_text(t: Any) -> str:
    """A time column's value (None, a datetime, or SQLite's text) as wire.format_time."""
    if t is None:
        return _ZERO
    if isinstance(t, str):
        t = datetime.fromisoformat(t)  # naive UTC, as stored
    return _time(t)


def _json(value: Any) -> Any:
    """A JSON column's value: parsed already (PostgreSQL) or text (SQLite)."""
    return json.loads(value) if isinstance(value, str) else value


def _text(value: Any) -> str:
    """wire._text, then JSON-quoted."""
    if value is None:
        return '""'
    return _quote(value if type(value) is str else str(value))


def _int(value: Any) -> int:
    return 0 if value is None else int(value)


def _ids(ids: Sequence[str]) -> str:
    return "[" + ",".join([_quote(i) for i in ids]) + "]"


# A job whose counters are all zero and that never ran, and a job without remote properties:
# most jobs, and the same text every time.
_NO_METADATA = (
    f'"metadata":{{"success_count":0,"last_success":"{_ZERO}","error_count":0,'
    f'"last_error":"{_ZERO}","last_attempted_run":"{_ZERO}","number_of_finished_runs":0}}'
)
_NO_REMOTE = (
    '"remote_properties":{"url":"","method":"","body":"","headers":null,"timeout":0,'
    '"expected_response_codes":null}'
)


def _metadata(
    successes: Any,
    last_success: Any,
    errors: Any,
    last_error: Any,
    last_attempt: Any,
    finished: Any,
) -> str:
    never = last_success is None and last_error is None and last_attempt is None
    if never and not (successes or errors or finished):
        return _NO_METADATA
    return (
        f'"metadata":{{"success_count":{_int(successes)},'
        f'"last_success":"{_time_text(last_success)}","error_count":{_int(errors)},'
        f'"last_error":"{_time_text(last_error)}",'
        f'"last_attempted_run":"{_time_text(last_attempt)}",'
        f'"number_of_finished_runs":{_int(finished)}}}'
    )


def _remote(url: Any, method: Any, body: Any, headers: Any, timeout: Any, codes: Any) -> str:
    if not (url or method or body or timeout) and headers is None and codes is None:
        return _NO_REMOTE
    headers, codes = _json(headers), _json(codes)
    if headers is not None:
        headers = {name: list(values) for name, values in sorted(headers.items())}
    return (
        f'"remote_properties":{{"url":{_text(url)},"method":{_text(method)},'
        f'"body":{_text(body)},"headers":{wire.compact_json(headers)},'
        f'"timeout":{_int(timeout)},"expected_response_codes":'
        f"{'null' if codes is None else wire.compact_json([int(c) for c in codes])}}}"
    )


def _extensions(
    timezone: Any,
    delay: Any,
    backoff: Any,
    timeout: Any,
    overlap: Any,
    queue: Any,
    cron: Any,
    policy: Any,
    task: Any,
    parents_mode: Any,
) -> str:
    """The extension keys that are not at their default (as wire.job_document)."""
    out = ""
    if timezone is not None and timezone != "":
        out += f',"timezone":{_text(timezone)}'
    if delay is not None and delay != "" and delay != "PT0S":
        out += f',"retry_delay":{_text(delay)}'
    if backoff:
        out += ',"retry_backoff":true'
    if timeout is not None and timeout != "":
        out += f',"run_timeout":{_text(timeout)}'
    if overlap:
        out += ',"allow_overlap":true'
    if queue is not None and queue != "":
        out += f',"queue":{_text(queue)}'
    if cron is not None and cron != "":
        out += f',"cron":{_text(cron)}'
    if policy is not None and policy != "":
        out += f',"overlap":{_text(policy)}'
    if task is not None and (task := _json(task)):
        out += f',"celery_task":{wire.compact_json(task)}'
    if parents_mode is not None and parents_mode != "":
        out += f',"parents_mode":{_text(parents_mode)}'
    return out


def job_text(
    row: Sequence[Any],
    *,
    parent_ids: Sequence[str] | None,
    child_ids: Sequence[str] | None,
    stats: Sequence[Any] | None,
) -> str:
    """`wire.compact_json(wire.job_document(...))` for one row of FIELDS."""
    (
        name,
        job_id,
        command,
        owner,
        disabled,
        on_failure_job,
        schedule,
        retries,
        epsilon,
        next_run_at,
        template_delimiters,
        resume,
        *metadata,
    ) = row[:18]
    job_type, *remote = row[18:25]
    is_done, *extensions = row[25:]
    # The NOT NULL text and integer columns come from the driver as str and int: quoted and
    # written directly (what wire's _text and _int make of such values).
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
        f'{_metadata(*metadata)},"type":{int(job_type)},{_remote(*remote)},'
        f'"stats":{wire.compact_json([wire.kala_stat(r) for r in stats]) if stats else "null"},'
        f'"is_done":{"true" if is_done else "false"}'
        f"{_extensions(*extensions) if any(extensions) else ''}}}"
    )


def list_document(
    rows: Iterable[Sequence[Any]],
    parents: Mapping[str, Sequence[str]],
    children: Mapping[str, Sequence[str]],
    stats: Mapping[str, Sequence[Any]],
) -> bytes:
    """Kala's `{"jobs": {id: job, ...}}` for rows sorted by id, as wire.dumps writes it."""
    parts = []
    for row in rows:
        job_id = row[1]
        doc = job_text(
            row,
            parent_ids=parents.get(job_id),
            child_ids=children.get(job_id),
            stats=stats.get(job_id),
        )
        parts.append(f"{_quote(job_id)}:{doc}")
    return wire.finish_json('{"jobs":{' + ",".join(parts) + "}}")
