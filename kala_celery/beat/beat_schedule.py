"""A Celery app's own periodic tasks (`beat_schedule`, `add_periodic_task`) as kala jobs.

docs/design.md Decision 30: when a kala beat starts, every entry of its app's beat schedule
becomes a Celery-task job (type 2, Decision 19) with `source: "config"` and an id derived
from the entry's name. The sync is one transaction under a lock (PostgreSQL: an advisory
lock; SQLite: its write lock), so beats that start together make each job once and a
restart with the same code changes nothing:

- an entry that is new is created; one that changed in code is replaced through the store's
  rules (an unchanged interval keeps its job's anchor and progress);
- a job whose entry is gone from code is disabled (its runs stay);
- an operator's disable (the API's, the dashboard's) is kept: the sync never enables a job;
- an app with no beat schedule at all (kala's own, `kala-celery beat`) syncs nothing, so its
  beats can share a store with the beats of the app whose schedule it is. One app's
  schedule per store: two apps with different schedules would disable each other's jobs.

What converts: `crontab(...)` to `cron` (five fields) in the app's timezone; a `timedelta`,
a number of seconds or `schedule(run_every=...)` to `R/<first start>/<interval>`, the first
start one interval after the job is made. `options["queue"]` becomes the job's queue;
`options["expires"]` and `beat_cron_starting_deadline` (crontab entries) become `epsilon`,
how late a run may start. What does not convert (solar, custom schedule classes, fractions
of seconds, a crontab restricting both day of month and day of week, which Celery ANDs
and cron ORs) gets one log line naming the entry and is left out; never guessed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from celery import Celery
from celery.schedules import crontab, schedule, solar
from sqlalchemy import select, text
from sqlalchemy.orm import Session, sessionmaker

from kala_celery import schedule as kala_schedule
from kala_celery.errors import JobError
from kala_celery.runs import start
from kala_celery.store import bulk, jobs
from kala_celery.store.tables import JOB_CELERY_TASK, SOURCE_CONFIG, Job

log = logging.getLogger(__name__)

_LOCK = "SELECT pg_advisory_xact_lock(7040530)"  # beside store/schema.py's 7040516
_SLUG = re.compile(r"[^a-z0-9]+")
CARRIED_OPTIONS = frozenset({"queue", "expires"})
# The fields of a config job that its entry decides (compared to tell a change).
_COMPARED = ("name", "type", "celery_task", "schedule", "cron", "timezone", "queue", "epsilon")


def job_id_for(entry_name: str) -> str:
    """`beat-<slug>-<8 hex digits>`: stable for a name, valid under store/jobs.py's id rules
    (letters, digits, dashes; at most 60 characters), distinct for names that slug alike."""
    slug = _SLUG.sub("-", entry_name.lower()).strip("-")[:40].strip("-") or "entry"
    digest = hashlib.sha256(entry_name.encode()).hexdigest()[:8]
    return f"beat-{slug}-{digest}"


def _field(value: Any) -> str:
    """One field of a crontab as given to it: '*', '*/15', 5, {0, 30}, range(1, 5)..."""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, int):
        return str(value)
    return ",".join(str(v) for v in sorted(value))


def _cron_text(entry: crontab) -> str:
    fields = [_field(getattr(entry, f"_orig_{name}")) for name in
              ("minute", "hour", "day_of_month", "month_of_year", "day_of_week")]
    if fields[2] != "*" and fields[4] != "*":
        raise ValueError(
            "it restricts both day_of_month and day_of_week, which Celery requires together "
            "and cron takes as either"
        )
    return " ".join(fields)


def _seconds(value: Any) -> timedelta | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, timedelta):
        return value
    if isinstance(value, int | float):
        return timedelta(seconds=value)
    return None


def _whole(every: timedelta, what: str) -> timedelta:
    seconds = every.total_seconds()
    if seconds <= 0 or seconds != math.floor(seconds):
        raise ValueError(f"{what} {seconds:g} s is not a positive whole number of seconds")
    return every


@dataclass
class Wanted:
    """What the app's beat schedule asks for: a job body per entry (by job id), and the
    entries left out with their reason."""

    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    intervals: dict[str, str] = field(default_factory=dict)  # job id -> ISO interval
    left_out: dict[str, str] = field(default_factory=dict)  # entry name -> why

    @property
    def empty(self) -> bool:
        """The app has no beat schedule at all (kala's own app, `kala-celery beat`): its beat
        leaves the jobs from code alone, as another app's beat may share the store."""
        return not (self.bodies or self.left_out)


def _body(name: str, entry: Mapping[str, Any], timezone: str,
          deadline: float | None) -> tuple[dict[str, Any], str | None]:
    """The job body of one entry and, for an interval, its ISO 8601 interval (the start is
    chosen at the sync). ValueError says why the entry is left out."""
    task = entry.get("task")
    if not isinstance(task, str) or not task:
        raise ValueError("it names no task")
    every, value = None, entry.get("schedule")
    body: dict[str, Any] = {
        "name": name,
        "type": JOB_CELERY_TASK,
        # as JSON holds them (tuples are lists): what the store gives back compares equal
        "celery_task": json.loads(json.dumps(
            {"name": task, "args": list(entry.get("args") or ()),
             "kwargs": dict(entry.get("kwargs") or {})})),
        "source": SOURCE_CONFIG,
    }
    epsilons: list[timedelta] = []
    if type(value) is crontab:
        body["cron"] = _cron_text(value)
        body["timezone"] = timezone
        if deadline is not None and deadline > 0:
            epsilons.append(timedelta(seconds=math.ceil(deadline)))
    elif type(value) is solar:
        raise ValueError("solar schedules have no kala equivalent")
    elif type(value) is schedule and not value.relative:
        every = _whole(value.run_every, "its interval")
    elif _seconds(value) is not None:
        every = _whole(_seconds(value), "its interval")  # type: ignore[arg-type]
    else:
        raise ValueError(f"its schedule {type(value).__name__} is not a crontab, a timedelta, "
                         "a number of seconds or a plain schedule")
    options = dict(entry.get("options") or {})
    if options.get("queue"):
        queue = options["queue"]
        body["queue"] = queue if isinstance(queue, str) else getattr(queue, "name", str(queue))
    expires = options.get("expires")
    if expires is not None:
        window = _seconds(expires)
        if window is None or window.total_seconds() <= 0:
            raise ValueError("options.expires is not a positive number of seconds (a point "
                             "in time has no job field)")
        epsilons.append(timedelta(seconds=math.ceil(window.total_seconds())))
    if epsilons:
        body["epsilon"] = kala_schedule.exact_duration(min(epsilons))
    for option in sorted(set(options) - CARRIED_OPTIONS):
        log.warning("beat: beat_schedule entry %r: option %s is not carried (a kala job "
                    "has no equivalent)", name, option)
    return body, kala_schedule.exact_duration(every) if every is not None else None


def wanted(app: Celery) -> Wanted:
    """The app's beat schedule (beat_schedule, add_periodic_task included) as job bodies;
    each entry left out is logged once, here."""
    timezone = str(app.conf.timezone or "UTC")
    deadline = app.conf.get("beat_cron_starting_deadline")
    out = Wanted()
    for name, entry in (app.conf.beat_schedule or {}).items():
        try:
            body, interval = _body(str(name), entry, timezone, deadline)
        except (ValueError, TypeError, AttributeError) as exc:
            out.left_out[str(name)] = str(exc)
            log.warning("beat: beat_schedule entry %r left out: %s", name, exc)
            continue
        job_id = job_id_for(str(name))
        out.bodies[job_id] = {"id": job_id, **body}
        if interval is not None:
            out.intervals[job_id] = interval
    return out


def _current(job: Job) -> dict[str, Any]:
    return {
        "name": job.name, "type": job.job_type, "celery_task": job.celery_task,
        "schedule": job.schedule or None, "cron": job.cron, "timezone": job.timezone,
        "queue": job.queue, "epsilon": job.epsilon or None,
    }


def _start_text(start_at: datetime) -> str:
    return start_at.strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class Synced:
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    disabled: list[str] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)  # job id -> the store's reason


def _lock(session: Session) -> None:
    if bulk.is_postgresql(session):
        session.execute(text(_LOCK))
    else:
        bulk.lock_for_write(session)


def _apply(session: Session, want: Wanted, rules: jobs.Rules, now: datetime) -> Synced:
    done = Synced()
    existing = {job.id: job for job in session.scalars(
        select(Job).where(Job.source == SOURCE_CONFIG))}
    for job_id, body in want.bodies.items():
        job = existing.get(job_id) or session.get(Job, job_id)
        body = dict(body)
        interval = want.intervals.get(job_id)
        if interval is not None:  # an unchanged interval keeps its anchor
            old = job.schedule if job is not None else ""
            keep = old.startswith("R/") and old.endswith("/" + interval)
            start_at = (now + timedelta(seconds=math.ceil(
                kala_schedule.parse_plain_duration(interval).total_seconds()))).replace(
                microsecond=0)
            body["schedule"] = old if keep else f"R/{_start_text(start_at)}/{interval}"
        try:
            with session.begin_nested():
                if job is None:
                    start.create(session, body, rules, now, managed=True)
                    done.created.append(job_id)
                elif job.source != SOURCE_CONFIG:
                    raise JobError(f"a job with id {job_id!r} that is not from beat_schedule "
                                   "exists")
                elif _current(job) != {key: body.get(key) for key in _COMPARED}:
                    body["disabled"] = job.disabled
                    start.replace(session, job_id, body, rules, now, managed=True)
                    done.updated.append(job_id)
        except JobError as exc:
            done.refused[job_id] = str(exc)
    for job_id, job in existing.items():
        if job_id not in want.bodies and not job.disabled:
            jobs.disable_job(session, job_id)
            done.disabled.append(job_id)
    return done


def sync_from_code(sessions: sessionmaker[Session], want: Wanted, rules: jobs.Rules,
         now: datetime) -> Synced:
    """Make the store's config jobs what `want` says, in one transaction under the lock."""
    with sessions.begin() as session:
        _lock(session)
        done = _apply(session, want, rules, now)
    for job_id, reason in done.refused.items():
        log.error("beat: beat_schedule entry %r left out: %s",
                  want.bodies[job_id]["name"], reason)
    if done.created or done.updated or done.disabled:
        log.info("beat: beat_schedule: %d jobs created, %d updated, %d disabled (entry gone)",
                 len(done.created), len(done.updated), len(done.disabled))
    return done
