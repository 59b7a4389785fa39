"""Claim due jobs: one short transaction per batch that records their runs and advances
`next_run_at` to the next anchored occurrence (Decisions 3-6).

Several beats may claim at once: PostgreSQL hands each beat different rows (FOR UPDATE SKIP
LOCKED); on SQLite, which has no row locks, every row is advanced with a compare-and-set on
its old `next_run_at`. Either way an occurrence is claimed once, and the unique index on
(job_id, scheduled_for) is the last guard.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import and_, bindparam, exists, func, not_, or_, select, update
from sqlalchemy.orm import Session

from kala_celery import dispatch, schedule
from kala_celery.models import Job, JobLink, Run

log = logging.getLogger(__name__)

IN_FLIGHT = ("pending", "sent", "started")


@dataclass(frozen=True)
class Advance:
    """What claiming one due job does: the run to record (if any) and the new next_run_at."""

    run_for: datetime | None
    next_run_at: datetime | None


def advance(
    parsed: schedule.Schedule, due: datetime, runs_used: int, now: datetime, resume: bool
) -> Advance:
    """Coalesce every occurrence up to `now` into at most one run (Decision 5).

    The run is for the latest occurrence that has passed. When a later occurrence than
    `due` has passed too, some were missed (beat down, job busy): a job with
    `resume_at_next_scheduled_time` then skips them all and waits for the next one.
    """
    if parsed.interval is None:  # R0: its single occurrence
        return Advance(due, None)
    k_next = parsed.index_after(now)
    latest = parsed.occurrence(k_next - 1) if k_next > 0 else due
    run_for: datetime | None = max(latest, due)
    if resume and latest > due:
        run_for = None
    used = runs_used + (run_for is not None)
    total = parsed.total_runs
    if total is not None and used >= total:
        return Advance(run_for, None)
    try:
        return Advance(run_for, parsed.occurrence(k_next))
    except schedule.ScheduleOverflowError:
        return Advance(run_for, None)


def _in_flight():
    return exists().where(Run.job_id == Job.id, Run.state.in_(IN_FLIGHT))


def claimable(now: datetime):
    """Due, enabled, and (unless it allows overlap) with no run in flight (Decision 6)."""
    return and_(
        Job.next_run_at.is_not(None),
        Job.next_run_at <= now,
        not_(Job.disabled),
        or_(Job.allow_overlap, not_(_in_flight())),
    )


def claim_batch(session: Session, now: datetime, limit: int, default_tz: str) -> list[str]:
    """Claim up to `limit` due jobs in the caller's transaction; returns the root run ids."""
    due = session.execute(
        select(
            Job.id,
            Job.name,
            Job.next_run_at,
            Job.schedule,
            Job.timezone,
            Job.runs_used,
            Job.resume_at_next_scheduled_time,
        )
        .where(claimable(now), ~exists().where(JobLink.child_id == Job.id))
        .order_by(Job.next_run_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Job.__table__)
    ).all()
    steps: list[tuple[str, datetime, Advance, bool]] = []
    for job_id, name, old, text, zone, runs_used, resume in due:
        try:
            parsed = schedule.parse_schedule(text, schedule.resolve_zone(zone, default_tz))
            steps.append((job_id, old, advance(parsed, old, runs_used, now, resume), False))
        except schedule.ScheduleError as exc:
            log.error(
                "job %s (%s): unusable schedule %r: %s; disabling it", job_id, name, text, exc
            )
            steps.append((job_id, old, Advance(None, None), True))
    roots = [
        (job_id, step.run_for)
        for job_id, _old, step, _off in _move(session, steps)
        if step.run_for is not None
    ]
    return dispatch.record_trees(session, roots, trigger="schedule", now=now)


_MOVE = (
    update(Job.__table__)
    .where(
        Job.__table__.c.id == bindparam("b_id"), Job.__table__.c.next_run_at == bindparam("b_old")
    )
    .values(next_run_at=bindparam("b_next"), disabled=bindparam("b_off"))
)


def _move(session: Session, steps: list[tuple[str, datetime, Advance, bool]]) -> list:
    """Write the new next_run_at of each claimed job; returns the steps that took effect.

    PostgreSQL: the rows are locked by this transaction, so one executemany does it. SQLite has
    no row locks: each row is a compare-and-set on its old next_run_at, and a row another beat
    moved first is left to that beat.
    """
    params = [
        {"b_id": job_id, "b_old": old, "b_next": step.next_run_at, "b_off": off}
        for job_id, old, step, off in steps
    ]
    if not params:
        return []
    if session.get_bind().dialect.name == "postgresql":
        session.execute(_MOVE, params)
        return steps
    return [s for s, p in zip(steps, params, strict=True) if session.execute(_MOVE, p).rowcount]


def next_due(session: Session, after: datetime | None = None) -> datetime | None:
    """The earliest next_run_at of an enabled job (later than `after`, if given): one query
    on the `ix_jobs_due` index."""
    query = select(func.min(Job.next_run_at)).where(
        Job.next_run_at.is_not(None), not_(Job.disabled)
    )
    if after is not None:
        query = query.where(Job.next_run_at > after)
    return session.scalar(query)
