"""The one way a run comes into being: insert it `pending` (in the caller's transaction).

The API (manual start, one-off jobs), the beat (due occurrences) and the tasks (dependents,
on-failure jobs) all call `record_run`; publishing the recorded runs to the broker happens
after the transaction commits.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from kala_celery.models import Job, Run

# Triggers that use up one of the schedule's runs (Decision 4: a manual start counts).
COUNTED_TRIGGERS = frozenset({"schedule", "manual"})


def new_run_id() -> str:
    return str(uuid.uuid4())


def record_run(
    session: Session,
    job: Job,
    *,
    trigger: str,
    scheduled_for: datetime,
    now: datetime,
    parent_run_id: str | None = None,
) -> Run:
    """Insert a pending run of `job`; counted triggers use up one of its runs."""
    run = Run(
        id=new_run_id(),
        job_id=job.id,
        scheduled_for=scheduled_for,
        trigger=trigger,
        parent_run_id=parent_run_id,
        state="pending",
        attempts=0,
        created_at=now,
    )
    session.add(run)
    if trigger in COUNTED_TRIGGERS:
        session.execute(update(Job).where(Job.id == job.id).values(runs_used=Job.runs_used + 1))
    return run
