"""The preview routes (Decision 24): the next occurrences of a job, or of a schedule before a
job exists, computed by kala_celery/schedule/occurrences.py as the beat's claim advances
through them.
The Decisions cited are those of docs/design.md."""

from __future__ import annotations

import json
from typing import Any

from flask import Response, request

from kala_celery import schedule, wire
from kala_celery.api.http import json_response, read_body
from kala_celery.api.state import kala
from kala_celery.schedule import occurrences
from kala_celery.store import jobs
from kala_celery.store.clock import now as db_now

DEFAULT_COUNT = 10
_COUNT_HINT = f"count must be a whole number from 1 to {occurrences.MAX_PREVIEW}"


def _count(value: Any) -> int:
    """?count= or the body's count: 1..MAX_PREVIEW, else ValueError (a 400)."""
    if value is None:
        return DEFAULT_COUNT
    if isinstance(value, str):
        text = value.strip()
        value = int(text) if text.isascii() and text.isdigit() else None
    if type(value) is not int or not 1 <= value <= occurrences.MAX_PREVIEW:
        raise ValueError(_COUNT_HINT)
    return value


def _answer(times: list) -> Response:
    return json_response({"next": [wire.format_time(t) for t in times]})


def job_next(job_id: str) -> Response:
    """GET /job/{id}/next/?count=N: the next N occurrences the beat fires for the job, from
    its next_run_at on (none when it has none: disabled, done, a one-off or a child)."""
    count = _count(request.args.get("count"))
    with kala().sessions() as session:
        job = jobs.get_job(session, job_id)
        if job.next_run_at is None or not jobs.is_scheduled(job):
            return _answer([])
        try:
            parsed = jobs.parse_job_schedule(job, kala().rules.default_timezone)
        except schedule.ScheduleError:
            return _answer([])  # the beat disables such a job at its next claim
        return _answer(parsed.upcoming(job.next_run_at, job.runs_used, count))


_PREVIEW_KEYS = ("schedule", "cron", "timezone")


def _preview_body(body: bytes) -> tuple[dict[str, str], Any]:
    try:
        value = json.loads(body or b"null")
    except (ValueError, RecursionError):
        raise ValueError("the body must be a JSON object like "
                         '{"cron": "0 9 * * MON-FRI", "timezone": "Europe/Berlin"}') from None
    if not isinstance(value, dict):
        raise ValueError('the body must be a JSON object with "schedule" or "cron"')
    data: dict[str, str] = {}
    for key in _PREVIEW_KEYS:
        if value.get(key) is not None:
            if not isinstance(value[key], str):
                raise ValueError(f"{key} must be a string")
            data[key] = value[key]
    return data, value.get("count")


def schedule_preview() -> Response:
    """POST /schedule/preview/ {"schedule" | "cron", "timezone", "count"}: the first `count`
    occurrences a job created now with that schedule would fire at. An unusable schedule is
    refused with the message a create would give."""
    data, count = _preview_body(read_body())
    count, now = _count(count), db_now()
    parsed = jobs.validate_timing(data, kala().rules, now)  # the create's checks and messages
    return _answer(parsed.upcoming(parsed.first(now), 0, count))


