"""Read-only queries the dashboard needs and the API has no route for: one page of the job
list (search, state filter), the latest run of each job on that page, a job's runs newest
first (and the columns of its last 100 for its chart), and the newest failures for the stats
page. The charts' aggregates are kala_celery/store/activity.py's. Writes go through
kala_celery/store/jobs.py."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from kala_celery.store.tables import Job, JobLink, Run

FILTERS = ("all", "failing", "disabled", "done")
IN_FLIGHT = ("pending", "sent", "started")
FAILED = ("failed", "lost")

_LIST_COLUMNS = (
    Job.id,
    Job.name,
    Job.owner,
    Job.job_type,
    Job.schedule,
    Job.cron,
    Job.timezone,
    Job.next_run_at,
    Job.runs_used,
    Job.is_done,
    Job.disabled,
    Job.success_count,
    Job.error_count,
    Job.last_success,
    Job.last_error,
)


def _failing() -> Any:
    """The job's latest finished run failed (Kala's metadata times, kept by the runner)."""
    return and_(
        Job.last_error.is_not(None),
        or_(Job.last_success.is_(None), Job.last_error > Job.last_success),
    )


def _like(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def job_filter(search: str, state: str) -> list[Any]:
    where: list[Any] = []
    if search:
        pattern = _like(search)
        where.append(
            or_(Job.name.ilike(pattern, escape="\\"), Job.owner.ilike(pattern, escape="\\"))
        )
    if state == "failing":
        where.append(_failing())
    elif state == "disabled":
        where.append(Job.disabled.is_(True))
    elif state == "done":
        where.append(Job.is_done.is_(True))
    return where


@dataclass(frozen=True)
class JobPage:
    rows: list[Any]  # _LIST_COLUMNS + has_parent
    total: int
    last_runs: dict[str, Any]  # job id -> its latest Run row


def job_page(session: Session, *, search: str, state: str, offset: int, limit: int) -> JobPage:
    """One page of jobs by name, with the count of all matching jobs and their latest runs."""
    where = job_filter(search, state)
    total = session.scalar(select(func.count()).select_from(Job).where(*where)) or 0
    has_parent = exists().where(JobLink.child_id == Job.id).label("has_parent")
    rows = session.execute(
        select(*_LIST_COLUMNS, has_parent)
        .where(*where)
        .order_by(Job.name, Job.id)
        .offset(offset)
        .limit(limit)
    ).all()
    return JobPage(rows, total, latest_runs(session, [row.id for row in rows]))


def latest_runs(session: Session, job_ids: list[str]) -> dict[str, Any]:
    """Each job's most recent run (by creation), one index lookup per job."""
    if not job_ids:
        return {}
    inner = Run.__table__.alias("latest")
    newest = (
        select(inner.c.id)
        .where(inner.c.job_id == Job.id)
        .order_by(inner.c.created_at.desc(), inner.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    ids = select(newest).where(Job.id.in_(job_ids))
    rows = session.execute(
        select(Run.job_id, Run.state, Run.created_at, Run.started_at, Run.finished_at).where(
            Run.id.in_(ids)
        )
    ).all()
    return {row.job_id: row for row in rows}


def runs_newest_first(
    session: Session, job_id: str, *, offset: int, limit: int
) -> tuple[list[Run], int]:
    total = session.scalar(select(func.count()).select_from(Run).where(Run.job_id == job_id))
    runs = session.scalars(
        select(Run)
        .where(Run.job_id == job_id)
        .order_by(Run.created_at.desc(), Run.id.desc())
        .offset(offset)
        .limit(limit)
    )
    return list(runs), total or 0


def chart_runs(session: Session, job_id: str, *, limit: int = 100) -> list[Any]:
    """The job's newest `limit` runs, only the columns its chart draws (not the output)."""
    return list(session.execute(
        select(Run.id, Run.state, Run.trigger, Run.scheduled_for, Run.started_at,
               Run.duration_ns)
        .where(Run.job_id == job_id)
        .order_by(Run.created_at.desc(), Run.id.desc())
        .limit(limit)
    ).all())


def names_of(session: Session, job_ids: list[str]) -> dict[str, str]:
    if not job_ids:
        return {}
    return dict(session.execute(select(Job.id, Job.name).where(Job.id.in_(job_ids))).all())


def recent_failures(session: Session, now: datetime, *, recent: int = 10) -> list[Any]:
    """The newest failed or lost runs created in the last 24 h, with their job's name."""
    since = now - timedelta(hours=24)
    return list(session.execute(
        select(Run, Job.name)
        .join(Job, Job.id == Run.job_id)
        .where(Run.state.in_(FAILED), Run.created_at >= since)
        .order_by(Run.created_at.desc())
        .limit(recent)
    ).all())
