"""Reading and annotating run history (docs/design.md Decision 15): recent stats for job
documents, paged stats and executions, one run, and NextKala's status callback."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Row, func, select
from sqlalchemy.orm import Session

from kala_celery.errors import NotFound
from kala_celery.store.tables import TERMINAL_STATES, Run

# Runs that produce a Kala "stat": they ended with an outcome (a skipped run has none).
FINISHED_STATES = ("success", "failed", "lost")

# What a Kala stat shows of a run (wire.kala_stat).
STAT_COLUMNS = (
    Run.job_id,
    Run.started_at,
    Run.created_at,
    Run.attempts,
    Run.state,
    Run.duration_ns,
)

# NextKala status names accepted by PUT /job/{id}/executions/{run}/ -> our states.
STATUS_STATES = {
    "success": "success",
    "failed": "failed",
    "started": "started",
    "running": "started",
}


def recent_stats(session: Session, job_ids: list[str] | None, limit: int) -> dict[str, list[Row]]:
    """The last `limit` finished runs of each job (all jobs when job_ids is None), oldest first,
    as plain rows of what a Kala stat shows (wire.kala_stat): no ORM objects, as the job list
    may read a hundred runs for each of thousands of jobs."""
    if limit <= 0:
        return {}
    rank = (
        func.row_number()
        .over(partition_by=Run.job_id, order_by=(Run.created_at.desc(), Run.id.desc()))
        .label("rank")
    )
    inner = select(*STAT_COLUMNS, Run.id, rank).where(Run.state.in_(FINISHED_STATES))
    if job_ids is not None:
        inner = inner.where(Run.job_id.in_(job_ids))
    ranked = inner.subquery()
    rows = session.execute(
        select(*(ranked.c[column.key] for column in STAT_COLUMNS))
        .where(ranked.c.rank <= limit)
        .order_by(ranked.c.created_at, ranked.c.id)
    )
    out: dict[str, list[Row]] = {}
    for row in rows:
        out.setdefault(row.job_id, []).append(row)
    return out


def page_runs(
    session: Session,
    job_id: str,
    *,
    finished_only: bool,
    offset: int | None,
    limit: int,
) -> tuple[list[Run], int]:
    """One page of a job's runs, oldest first, and the total count.

    Without an offset the page is the most recent `limit` runs (what a Kala client that asks
    for "all stats" wants to see); with one, runs [offset, offset + limit) counted from the oldest.
    """
    where = [Run.job_id == job_id]
    if finished_only:
        where.append(Run.state.in_(FINISHED_STATES))
    total = session.scalar(select(func.count()).select_from(Run).where(*where)) or 0
    if offset is None:
        offset = max(total - limit, 0)
    rows = session.scalars(
        select(Run).where(*where).order_by(Run.created_at, Run.id).offset(offset).limit(limit)
    )
    return list(rows), total


def get_run(session: Session, run_id: str) -> Run:
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(run_id)
    return run


def set_status(session: Session, run_id: str, status: str, now: datetime) -> Run:
    """NextKala's remote-run callback: set the run's status (and its duration when it ends)."""
    run = get_run(session, run_id)
    state = STATUS_STATES[status.lower()]
    run.state = state
    if state in TERMINAL_STATES:
        began = run.started_at or run.created_at
        run.finished_at = now
        run.duration_ns = int((now - began).total_seconds() * 1_000_000_000)
    elif run.started_at is None:
        run.started_at = now
    return run
