"""The one way runs come into being: insert them `pending`, in the caller's transaction.

The API (manual start, one-off jobs), the beat (due occurrences) and the tasks (on-failure
jobs) all call `record_tree`: the run of the job itself plus, in Kala's depth-first FIFO
order, a run for every job that depends on it as the dependency tree is at that moment
(trigger `parent`). The tree is published as one Celery chain after the transaction commits.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from kala_celery.models import Job, JobLink, Run

# Triggers that use up one of the schedule's runs (Decision 4: a manual start counts).
COUNTED_TRIGGERS = frozenset({"schedule", "manual"})
MAX_TREE_RUNS = 1000  # a run and its dependents; jobs.py refuses links that would exceed it


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
    root_run_id: str | None = None,
    seq: int = 0,
) -> Run:
    """Insert one pending run of `job`; counted triggers use up one of its runs."""
    run = Run(
        id=new_run_id(),
        job_id=job.id,
        scheduled_for=scheduled_for,
        trigger=trigger,
        parent_run_id=parent_run_id,
        root_run_id=root_run_id,
        seq=seq,
        state="pending",
        attempts=0,
        created_at=now,
    )
    session.add(run)
    if trigger in COUNTED_TRIGGERS:
        session.execute(update(Job).where(Job.id == job.id).values(runs_used=Job.runs_used + 1))
    return run


def children_by_parent(session: Session, roots: list[str]) -> dict[str, list[str]]:
    """Every job below `roots` mapped to its children in FIFO order (one query per level)."""
    children: dict[str, list[str]] = {}
    frontier = list(roots)
    while frontier:
        rows = session.execute(
            select(JobLink.parent_id, JobLink.child_id)
            .where(JobLink.parent_id.in_(frontier))
            .order_by(JobLink.parent_id, JobLink.position)
        ).all()
        for parent, child in rows:
            children.setdefault(parent, []).append(child)
        frontier = [c for _, c in rows if c not in children]
        frontier = list(dict.fromkeys(frontier))
    return children


def record_tree(
    session: Session, job: Job, *, trigger: str, scheduled_for: datetime, now: datetime
) -> Run:
    """Record `job`'s run and a pending run for each dependent, depth first; returns the root."""
    root = record_run(session, job, trigger=trigger, scheduled_for=scheduled_for, now=now)
    children = children_by_parent(session, [job.id])
    if not children:
        return root
    jobs = {
        j.id: j
        for j in session.scalars(select(Job).where(Job.id.in_({c for cs in children.values()
                                                               for c in cs})))
    }
    seq = 0

    def visit(parent_job: str, parent_run: Run) -> None:
        nonlocal seq
        for child_id in children.get(parent_job, []):
            seq += 1
            if seq >= MAX_TREE_RUNS:
                return
            run = record_run(session, jobs[child_id], trigger="parent", scheduled_for=now,
                             now=now, parent_run_id=parent_run.id, root_run_id=root.id, seq=seq)
            visit(child_id, run)

    visit(job.id, root)
    return root
