"""The runs the API and the dashboard start: a one-off job created, replaced or enabled runs
now, and a manual start runs at once. Each is the store's job rule, then `dispatch`, in the
caller's transaction, so a job and its first run commit together. The caller publishes the
returned run after the commit.
The Decisions cited are those of docs/design.md.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session

from kala_celery.runs import dispatch
from kala_celery.store import audit, jobs
from kala_celery.store.tables import Job, Run


def _now(session: Session, job: Job, due: bool, now: datetime) -> Run | None:
    if not due:
        return None
    return dispatch.record_tree(session, job, trigger="schedule", scheduled_for=now, now=now)


def create(
    session: Session, data: dict[str, Any], rules: jobs.Rules, now: datetime, *,
    managed: bool = False, only_change_by: audit.Actor | None = None,
) -> tuple[Job, Run | None]:
    """POST /job/: the job, and the run of a one-off job. managed: the beat's beat_schedule
    sync (Decision 30); only_change_by: as in `jobs.create_job` (its audit row written too)."""
    job, due = jobs.create_job(session, data, rules, now, managed=managed,
                               only_change_by=only_change_by)
    return job, _now(session, job, due, now)


def replace(
    session: Session, job_id: str, data: dict[str, Any], rules: jobs.Rules, now: datetime, *,
    managed: bool = False,
) -> tuple[Job, Run | None]:
    """PUT /job/{id}/: the job, and the run of a job that became a one-off."""
    job, due = jobs.replace_job(session, job_id, data, rules, now, managed=managed)
    return job, _now(session, job, due, now)


def enable(
    session: Session, job_id: str, rules: jobs.Rules, now: datetime
) -> tuple[Job, Run | None]:
    """Enable: the job, and the run of a one-off that never ran (Decision 8)."""
    job, due = jobs.enable_job(session, job_id, rules, now)
    return job, _now(session, job, due, now)


def manual(session: Session, job_id: str, rules: jobs.Rules, now: datetime) -> Run:
    """A manual start: a run now, counted as one of the schedule's (Decision 4)."""
    job = jobs.startable(session, job_id)
    run = dispatch.record_tree(session, job, trigger="manual", scheduled_for=now, now=now)
    jobs.count_manual_start(session, job, rules)
    return run
