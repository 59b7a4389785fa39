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

from sqlalchemy import and_, exists, func, not_, or_, select, update
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


def claim_batch(session: Session, now: datetime, limit: int, default_tz: str) -> list[Run]:
    """Claim up to `limit` due jobs in the caller's transaction; returns the runs recorded."""
    due_jobs = session.scalars(
        select(Job)
        .where(claimable(now))
        .order_by(Job.next_run_at)
        .limit(limit)
        .with_for_update(skip_locked=True, of=Job)
    ).all()
    runs: list[Run] = []
    for job in due_jobs:
        old = job.next_run_at
        try:
            if session.scalar(select(JobLink.id).where(JobLink.child_id == job.id).limit(1)):
                raise schedule.ScheduleError("a child job is never scheduled on its own")
            parsed = schedule.parse_schedule(
                job.schedule, schedule.resolve_zone(job.timezone, default_tz)
            )
            step = advance(parsed, old, job.runs_used, now, job.resume_at_next_scheduled_time)
        except schedule.ScheduleError as exc:
            log.error(
                "job %s (%s): unusable schedule %r: %s; disabling it",
                job.id,
                job.name,
                job.schedule,
                exc,
            )
            session.execute(
                update(Job)
                .where(Job.id == job.id, Job.next_run_at == old)
                .values(next_run_at=None, disabled=True)
            )
            continue
        moved = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.next_run_at == old)
            .values(next_run_at=step.next_run_at)
            .execution_options(synchronize_session=False)
        ).rowcount
        if moved != 1 or step.run_for is None:
            continue  # another beat claimed it first, or a skipped (missed) occurrence
        runs.append(
            dispatch.record_tree(
                session, job, trigger="schedule", scheduled_for=step.run_for, now=now
            )
        )
    return runs


def next_due(session: Session, now: datetime) -> datetime | None:
    """The earliest next_run_at among claimable-in-future jobs (one indexed query)."""
    return session.scalar(
        select(func.min(Job.next_run_at)).where(
            Job.next_run_at.is_not(None), Job.next_run_at > now, not_(Job.disabled)
        )
    )
