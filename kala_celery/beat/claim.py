"""Claim due jobs: one short transaction per batch that records their runs and advances
`next_run_at` to the next anchored occurrence (docs/design.md Decisions 3-6), or the next
cron occurrence (Decision 18); a job with overlap "skip" whose run is still in flight has its
due occurrences dropped and counted instead (Decision 21).

Several beats may claim at once: PostgreSQL hands each beat different rows (FOR UPDATE SKIP
LOCKED); SQLite, which has no row locks, lets one claim at a time (the claim takes the
database's write lock before it reads). Either way an occurrence is claimed once, and the
unique index on (job_id, scheduled_for) is the last guard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import NamedTuple

from sqlalchemy import and_, bindparam, exists, func, not_, or_, select, update
from sqlalchemy.orm import Session

from kala_celery import schedule
from kala_celery.runs import dispatch
from kala_celery.schedule import cron, occurrences
from kala_celery.store import bulk, links
from kala_celery.store.tables import Job, JobLink, Run

log = logging.getLogger(__name__)

IN_FLIGHT = ("pending", "sent", "started")


@dataclass(frozen=True)
class Advance:
    """What claiming one due job does: the run to record (if any) and the new next_run_at."""

    run_for: datetime | None
    next_run_at: datetime | None
    missed: int = 0  # passed occurrences without a run of their own (coalesced or skipped)
    skipped: int = 0  # passed occurrences dropped by overlap "skip" (a run was in flight)


def advance(
    parsed: occurrences.Rule,
    due: datetime,
    runs_used: int,
    now: datetime,
    resume: bool,
    busy: bool = False,
) -> Advance:
    """Coalesce every occurrence up to `now` into at most one run (docs/design.md Decision 5).

    The run is for the latest occurrence that has passed. When a later occurrence than
    `due` has passed too, some were missed (beat down, job busy): a job with
    `resume_at_next_scheduled_time` then skips them all and waits for the next one.
    busy: the job has overlap "skip" and a run in flight: every passed occurrence is dropped
    (counted in `skipped`, not `missed`) and the job waits for the next one (Decision 21).
    """
    if busy:
        return _drop(parsed, due, now)
    if isinstance(parsed, cron.CronSchedule):
        return _advance_cron(parsed, due, now, resume)
    if parsed.interval is None:  # R0: its single occurrence
        return Advance(due, None)
    k_next = parsed.index_after(now)
    latest = parsed.occurrence(k_next - 1) if k_next > 0 else due
    run_for: datetime | None = max(latest, due)
    missed = 0
    if latest > due:  # occurrences k_due .. k_next - 1 have all passed
        passed = k_next - (parsed.index_after(due) - 1)
        missed = passed if resume else passed - 1
        if resume:
            run_for = None
    used = runs_used + (run_for is not None)
    total = parsed.total_runs
    if total is not None and used >= total:
        return Advance(run_for, None, missed)
    try:
        return Advance(run_for, parsed.occurrence(k_next), missed)
    except schedule.ScheduleOverflowError:
        return Advance(run_for, None, missed)


def _advance_cron(parsed: cron.CronSchedule, due: datetime, now: datetime,
                  resume: bool) -> Advance:
    """advance() for a cron job: the same coalescing, and no end (Decision 18)."""
    following = parsed.next_after(due)
    if following is None or following > now:  # on time: nothing else has passed
        return Advance(due, following)
    latest = parsed.latest_at_or_before(now)
    run_for: datetime | None = due if latest is None else max(latest, due)
    missed = 0
    if latest is not None and latest > due:  # due, ..., latest have all passed
        passed = 1 + parsed.count_between(due, latest)
        missed = passed if resume else passed - 1
        if resume:
            run_for = None
    return Advance(run_for, parsed.next_after(now), missed)


def _drop(parsed: occurrences.Rule, due: datetime, now: datetime) -> Advance:
    """Overlap "skip" with a run in flight: no run; every occurrence from `due` up to `now`
    is dropped, and next_run_at moves to the first one after `now`. An ISO schedule's
    dropped occurrences do not use up its repetitions (Decision 4 counts runs), as those
    resume_at_next_scheduled_time skips do not. An R0 has no next occurrence: the sweep
    re-arms its one owed run (jobs.rearm), which fires once nothing is in flight."""
    if isinstance(parsed, cron.CronSchedule):
        return Advance(None, parsed.next_after(now), skipped=1 + parsed.count_between(due, now))
    if parsed.interval is None:
        return Advance(None, None, skipped=1)
    passed = parsed.index_after(now) - parsed.index_at_or_after(due)
    return Advance(None, occurrences.after(parsed, now), skipped=max(passed, 1))


_jobs = Job.__table__
# The job (of the enclosing query on jobs) has a run in flight.
RUN_IN_FLIGHT = exists().where(Run.job_id == _jobs.c.id, Run.state.in_(IN_FLIGHT))
_NOW = bindparam("b_now", type_=_jobs.c.next_run_at.type)
# Due, enabled, and (unless its overlap policy is allow or skip) with no run in flight
# (docs/design.md Decisions 6, 21); not a dependent (those run in their parents' chains).
# Built once: building it cost a millisecond a claim, more than running it.
_DUE = (
    select(
        _jobs.c.id,
        _jobs.c.name,
        _jobs.c.next_run_at,
        _jobs.c.schedule,
        _jobs.c.cron,
        _jobs.c.timezone,
        _jobs.c.runs_used,
        _jobs.c.resume_at_next_scheduled_time,
        _jobs.c.queue,
        and_(_jobs.c.overlap == "skip", RUN_IN_FLIGHT).label("busy"),
        exists().where(JobLink.parent_id == _jobs.c.id).label("has_children"),
    )
    .where(
        _jobs.c.next_run_at.is_not(None),
        _jobs.c.next_run_at <= _NOW,
        not_(_jobs.c.disabled),
        or_(_jobs.c.allow_overlap, _jobs.c.overlap == "skip", not_(RUN_IN_FLIGHT)),
        ~exists().where(JobLink.child_id == _jobs.c.id),
    )
    .order_by(_jobs.c.next_run_at)
    .limit(bindparam("b_limit"))
    .with_for_update(skip_locked=True, of=_jobs)
)


class Outgoing(NamedTuple):
    """A run just recorded for a due job without dependents: what its message needs, so the
    publisher need not read the run back (Job.name is the task's shadow name)."""

    run_id: str
    root_run_id: None
    job_id: str
    name: str
    queue: str | None


@dataclass(frozen=True)
class Claimed:
    """What a claim recorded: every root run id, and the message of each run that is alone
    (the rest, chains of dependents, the publisher reads from the database)."""

    run_ids: list[str]
    alone: dict[str, Outgoing]


def claim_batch(session: Session, now: datetime, limit: int, default_tz: str) -> list[str]:
    """Claim up to `limit` due jobs in the caller's transaction; returns the root run ids."""
    return claim_due(session, now, limit, default_tz).run_ids


def claim_due(session: Session, now: datetime, limit: int, default_tz: str) -> Claimed:
    """claim_batch, also saying what each claimed run without dependents sends."""
    bulk.lock_for_write(session)  # SQLite; PostgreSQL locks the rows (SKIP LOCKED) instead
    due = session.connection().execute(_DUE, {"b_now": now, "b_limit": limit}).all()
    steps: list[tuple[str, datetime, Advance, bool]] = []
    parents = [row[0] for row in due if row[-1]]
    alone = {row[0]: (row[1], row[8]) for row in due if not row[-1]}  # name, queue
    for job_id, name, old, text, cron_text, zone, runs_used, resume, _, busy, _ in due:
        try:
            rule = occurrences.parse(text, cron_text, zone, default_tz).rule
            step = advance(rule, old, runs_used, now, resume, bool(busy))
            steps.append((job_id, old, step, False))
        except schedule.ScheduleError as exc:
            log.error(
                "job %s (%s): unusable schedule %r: %s; disabling it",
                job_id, name, cron_text or text, exc,
            )
            steps.append((job_id, old, Advance(None, None), True))
    roots = [
        (job_id, step.run_for)
        for job_id, _old, step, _off in _move(session, steps)
        if step.run_for is not None
    ]
    # Dependents are looked up only below the claimed jobs that have any (most have none).
    children = links.children_by_parent(session, parents) if parents else {}
    run_ids = dispatch.record_trees(
        session, roots, trigger="schedule", now=now, count=False, children=children
    )
    messages = {}
    for (job_id, _when), run_id in zip(roots, run_ids, strict=True):
        if job_id in alone:
            name, queue = alone[job_id]
            messages[run_id] = Outgoing(run_id, None, job_id, name, queue)
    return Claimed(run_ids, messages)


_MOVE = (
    update(Job.__table__)
    .where(
        Job.__table__.c.id == bindparam("b_id"), Job.__table__.c.next_run_at == bindparam("b_old")
    )
    .values(
        next_run_at=bindparam("b_next"),
        disabled=bindparam("b_off"),
        runs_used=Job.__table__.c.runs_used + bindparam("b_used"),
        missed_occurrences=Job.__table__.c.missed_occurrences + bindparam("b_missed"),
        overlap_skipped=Job.__table__.c.overlap_skipped + bindparam("b_skipped"),
    )
)


def _move_all(steps: list[dict]):
    """PostgreSQL: every claimed row in one UPDATE ... FROM unnest(arrays) (the rows are
    locked by this transaction, so no compare-and-set is needed)."""
    table = Job.__table__
    moves = bulk.unnest(
        {
            "b_id": ([p["b_id"] for p in steps], table.c.id.type),
            "b_next": ([p["b_next"] for p in steps], table.c.next_run_at.type),
            "b_off": ([p["b_off"] for p in steps], table.c.disabled.type),
            "b_used": ([p["b_used"] for p in steps], table.c.runs_used.type),
            "b_missed": ([p["b_missed"] for p in steps], table.c.missed_occurrences.type),
            "b_skipped": ([p["b_skipped"] for p in steps], table.c.overlap_skipped.type),
        }
    )
    return (
        update(table)
        .where(table.c.id == moves.c.b_id)
        .values(
            next_run_at=moves.c.b_next,
            disabled=moves.c.b_off,
            runs_used=table.c.runs_used + moves.c.b_used,
            missed_occurrences=table.c.missed_occurrences + moves.c.b_missed,
            overlap_skipped=table.c.overlap_skipped + moves.c.b_skipped,
        )
    )


def _move(session: Session, steps: list[tuple[str, datetime, Advance, bool]]) -> list:
    """Write the new next_run_at of each claimed job, and count the run it gets
    (docs/design.md Decision 4), in the same statement; returns the steps that took effect.

    The rows are locked by this transaction (PostgreSQL: FOR UPDATE; SQLite: the database's
    write lock, taken before they were read), so every step takes effect: PostgreSQL gets
    one UPDATE ... FROM unnest(...) for more than `bulk.FEW` jobs; SQLite, and a few jobs,
    one executemany of a statement built once.
    """
    params = [
        {
            "b_id": job_id,
            "b_old": old,
            "b_next": step.next_run_at,
            "b_off": off,
            "b_used": int(step.run_for is not None),
            "b_missed": step.missed,
            "b_skipped": step.skipped,
        }
        for job_id, old, step, off in steps
    ]
    if not params:
        return []
    if bulk.is_postgresql(session) and len(params) > bulk.FEW:
        session.execute(_move_all(params))
    else:
        session.execute(_MOVE, params)
    return steps


def next_due(session: Session, after: datetime | None = None) -> datetime | None:
    """The earliest next_run_at of an enabled job (later than `after`, if given): one query
    on the `ix_jobs_due` index."""
    query = select(func.min(Job.next_run_at)).where(
        Job.next_run_at.is_not(None), not_(Job.disabled)
    )
    if after is not None:
        query = query.where(Job.next_run_at > after)
    return session.scalar(query)
