"""A periodic task of another Celery beat scheduler (django-celery-beat, RedBeat), read by
ops/import_django.py or ops/import_redbeat.py, as a Celery-task job here (type 2, Decision 19
of docs/design.md), and the import of a list of them through ops/import_table.py.

The mapping (docs/import-celery.md):
- crontab: `cron` with its five fields and `timezone`, next run its first occurrence from now;
- interval: `R/<anchor>/<duration>`, the anchor the last run (or the start time, or when the
  entry was last saved), so the cadence goes on; next run the first occurrence from now;
- clocked, or a one-off (`one_off`): `R0/<time>/`, run at its time, at once when that passed
  and it has not run; refused once it ran;
- disabled stays disabled; `expires` past: imported disabled, with a note; anything else
  (solar, rrule): refused with the reason.
Missed occurrences of a repeating schedule are not made up: the import is a switch of
scheduler, and the next occurrence is the first here.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from kala_celery import schedule, wire
from kala_celery.ops.import_table import (
    HERE,
    Outcome,
    Progress,
    as_dry_run,
    ids_here,
    in_batches,
    refusal,
    write_one,
)
from kala_celery.schedule import cron, occurrences
from kala_celery.store import jobs


@dataclass(frozen=True)
class Entry:
    """One periodic task as another scheduler stores it, read but not yet judged.

    `kind` is "crontab", "interval" or "clocked"; another kind's name is refused. Times are
    aware UTC. `saved_at` is when a never-run interval entry was saved (django-celery-beat's
    `date_changed`, RedBeat's due time), what that scheduler counts its first interval from.
    `dropped` names options this job cannot keep (priority, exchange, ...), shown in the
    report; `problem` is a reason to refuse found while reading (args that are not JSON)."""

    id_prefix: str
    name: str
    task: str
    kind: str
    args: Any = None
    kwargs: Any = None
    queue: str | None = None
    enabled: bool = True
    cron: str | None = None
    timezone: str | None = None
    every: timedelta | None = None
    clocked_time: datetime | None = None
    one_off: bool = False
    start_time: datetime | None = None
    expires: datetime | None = None
    last_run_at: datetime | None = None
    total_run_count: int = 0
    saved_at: datetime | None = None
    dropped: tuple[str, ...] = ()
    problem: str | None = None


_NOT_ID = re.compile(r"[^A-Za-z0-9._~:@-]+")


def job_id(prefix: str, name: str) -> str:
    """The job's id, from its name: the same name gives the same id, so a second import finds
    it here. `<prefix><name>` when the name is a fine id, else the name's id-safe part and a
    hash of the whole name (two names never share an id)."""
    plain = prefix + name
    if _NOT_ID.search(name) is None and name and len(plain) <= 128:
        return plain
    safe = _NOT_ID.sub("-", name).strip("-.~:@")[:80]
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{prefix}{safe}-{digest}" if safe else f"{prefix}{digest}"


def as_utc(value: datetime | None) -> datetime | None:
    """A stored time as aware UTC; a time without a zone is UTC (Django's USE_TZ=True)."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _stamp(t: datetime) -> str:
    text = t.astimezone(UTC).replace(tzinfo=None).isoformat()
    return text + "Z"


@dataclass(frozen=True)
class Mapped:
    """An entry as a job body (decoded as the API decodes one), its progress, and a note."""

    data: dict[str, Any]
    state: Progress
    note: str


def to_job(entry: Entry, rules: jobs.Rules, now: datetime) -> Mapped | Outcome:
    """The job an entry becomes here, or its refusal."""
    ident = job_id(entry.id_prefix, entry.name)
    if entry.problem:
        return refusal(ident, entry.name, entry.problem)
    notes: list[str] = []
    disabled = not entry.enabled
    if entry.expires is not None and entry.expires <= now:
        disabled = True
        notes.append(f"expired {wire.format_time(entry.expires)}: imported disabled")
    elif entry.expires is not None:
        notes.append(f"expires {wire.format_time(entry.expires)} there; no end here: "
                     "disable it then")
    if entry.dropped:
        notes.append("not kept: " + ", ".join(entry.dropped))
    body: dict[str, Any] = {
        "id": ident, "name": entry.name, "type": 2, "disabled": disabled,
        "celery_task": {"name": entry.task, "args": entry.args, "kwargs": entry.kwargs},
    }
    if entry.queue:
        body["queue"] = entry.queue
    timing = _timing(entry, rules, now)
    if isinstance(timing, str):
        return refusal(ident, entry.name, timing)
    fields, state = timing
    body.update(fields)
    try:
        data = wire.decode_job(json.dumps(body).encode())
    except (wire.WireError, ValueError) as exc:
        return refusal(ident, entry.name, f"{exc}", 23)
    data["id"] = ident
    return Mapped(data, state, "; ".join(notes))


def _timing(entry: Entry, rules: jobs.Rules,
            now: datetime) -> tuple[dict[str, Any], Progress] | str:
    """The job's schedule fields and progress, or why the entry cannot have one here."""
    ran = entry.last_run_at is not None or entry.total_run_count > 0
    if entry.kind == "clocked" or (entry.one_off and entry.kind in ("interval", "crontab")):
        if ran:
            when = entry.last_run_at or entry.clocked_time
            return (f"a one-off that ran already ({wire.format_time(when)}): "
                    "nothing is left to run")
        when = _one_off_time(entry, rules, now)
        if isinstance(when, str):
            return when
        return {"schedule": f"R0/{_stamp(when)}/"}, Progress(0, False, when)
    if entry.kind == "crontab":
        fields: dict[str, Any] = {"cron": entry.cron}
        if entry.timezone:
            fields["timezone"] = entry.timezone
        start = max(now, entry.start_time or now)
        try:
            rule = occurrences.parse(None, entry.cron, entry.timezone,
                                     rules.default_timezone).rule
        except schedule.ScheduleError:  # the create path's check refuses it, with its reason
            return fields, Progress(0, False, None)
        assert isinstance(rule, cron.CronSchedule)
        return fields, Progress(0, False, rule.first_at_or_after(start))
    if entry.kind == "interval":
        every = _every(entry)
        if isinstance(every, str):
            return every
        anchor = entry.last_run_at or entry.start_time or entry.saved_at or now
        text = f"R/{_stamp(anchor)}/{schedule.exact_duration(every)}"
        try:
            parsed = schedule.parse_schedule(text)
            # the last run's occurrence was used there: the next is after it
            used = entry.last_run_at is not None
            after = max(now, anchor + timedelta(microseconds=1) if used else anchor,
                        entry.start_time or now)  # nothing before its start time
            nxt = parsed.occurrence(parsed.index_at_or_after(after))
        except schedule.ScheduleError:  # refused by the create path's check, with its reason
            return {"schedule": text}, Progress(0, False, None)
        return {"schedule": text}, Progress(0, False, nxt)
    return (f"a {entry.kind} schedule has no cron or ISO 8601 equivalent here "
            "(crontab, interval and clocked schedules import)")


def _every(entry: Entry) -> timedelta | str:
    every = entry.every or timedelta(0)
    if every <= timedelta(0):
        return f"an interval of {every.total_seconds():g} seconds never falls due"
    if every % timedelta(seconds=1):
        return (f"an interval of {every.total_seconds():g} seconds: the beat here ticks in "
                "whole seconds")
    return every


def _one_off_time(entry: Entry, rules: jobs.Rules, now: datetime) -> datetime | str:
    """When a one-off entry (clocked, or `one_off`) that has not run falls due: its clocked
    time, else when that scheduler would first run it."""
    if entry.kind == "clocked":
        if entry.clocked_time is None:
            return "a clocked schedule without its time"
        return entry.clocked_time.replace(microsecond=0)
    if entry.kind == "interval":
        every = _every(entry)
        if isinstance(every, str):
            return every
        if entry.start_time is not None:
            return entry.start_time.replace(microsecond=0)
        return ((entry.saved_at or now) + every).replace(microsecond=0)
    try:
        rule = occurrences.parse(None, entry.cron, entry.timezone, rules.default_timezone).rule
    except schedule.ScheduleError as exc:
        return f"cron {entry.cron!r}: {exc}"
    assert isinstance(rule, cron.CronSchedule)
    first = rule.first_at_or_after(max(now, entry.start_time or now))
    return first if first is not None else f"cron {entry.cron!r} never falls due"


def import_entries(sessions: sessionmaker[Session], entries: Sequence[Entry],
                   rules: jobs.Rules, now: datetime, *,
                   dry_run: bool = False) -> list[Outcome]:
    """Each entry as a job through the create path's checks (ops/import_table.py), in the
    order read: imported, already here (by its id, from its name) or refused."""
    mapped = {}
    outcomes: dict[str, Outcome] = {}
    order: list[str] = []
    for entry in entries:
        result = to_job(entry, rules, now)
        key = result.data["id"] if isinstance(result, Mapped) else result.job_id
        order.append(key)
        if isinstance(result, Mapped):
            mapped[key] = result
        else:
            outcomes[key] = result
    here = ids_here(sessions, [*mapped, *outcomes])
    for key in here:  # already here wins over a refusal: nothing to do for it
        name = mapped[key].data.get("name", "") if key in mapped else outcomes[key].name
        outcomes[key] = Outcome(key, name, HERE)
        mapped.pop(key, None)

    def write(session: Session, key: str) -> Outcome:
        job = mapped[key]
        return write_one(session, job.data, rules, now, job.state, note=job.note)

    outcomes.update(in_batches(sessions, list(mapped), write, dry_run=dry_run))
    result = [outcomes[key] for key in order]
    return as_dry_run(result) if dry_run else result
