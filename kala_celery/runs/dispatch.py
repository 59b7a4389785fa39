"""The one way runs come into being: insert them `pending`, in the caller's transaction.

The API (manual start, one-off jobs), the beat (due occurrences) and the tasks (on-failure
jobs) all call `record_tree`: the run of the job itself plus, in Kala's depth-first FIFO
order, a run for every job that depends on it as the dependency tree is at that moment
(trigger `parent`). The tree is published as one Celery chain after the transaction commits.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import update
from sqlalchemy.orm import Session

from kala_celery.store import bulk, links
from kala_celery.store.tables import Job, Run
from kala_celery.wire import limits

# Triggers that use up one of the schedule's runs (docs/design.md Decision 4: a manual start
# counts).
COUNTED_TRIGGERS = frozenset({"schedule", "manual"})


def new_run_id() -> str:
    return str(uuid.uuid4())


def _row(job_id: str, when: datetime, trigger: str, now: datetime, **tree: object) -> dict:
    return {
        "id": new_run_id(),
        "job_id": job_id,
        "scheduled_for": when,
        "trigger": trigger,
        "parent_run_id": tree.get("parent_run_id"),
        "root_run_id": tree.get("root_run_id"),
        "seq": tree.get("seq", 0),
        "state": "pending",
        "attempts": 0,
        "created_at": now,
    }


def record_trees(
    session: Session,
    roots: list[tuple[str, datetime]],
    *,
    trigger: str,
    now: datetime,
    count: bool = True,
    children: dict[str, list[str]] | None = None,
    parent_run_id: str | None = None,
) -> list[str]:
    """Record a run for each (job id, scheduled_for) and, depth first in FIFO order, a pending
    run for every job that depends on it. One bulk insert; returns the root run ids.
    `count=False`: the caller has already added the runs to the jobs' runs_used;
    `children`: the caller has already read `children_by_parent` for these roots;
    `parent_run_id`: the roots are dependents (trigger "parent") of this run."""
    if not roots:
        return []
    if children is None:
        children = links.children_by_parent(session, [job_id for job_id, _ in roots])
    rows: list[dict] = []
    root_ids: list[str] = []
    for job_id, when in roots:
        root = _row(job_id, when, trigger, now, parent_run_id=parent_run_id)
        rows.append(root)
        root_ids.append(root["id"])
        seq = 0

        def visit(parent_job: str, parent_run: str, root_id: str = root["id"]) -> None:
            nonlocal seq
            for child_id in children.get(parent_job, []):
                seq += 1
                if seq >= limits.MAX_TREE_RUNS:  # store/jobs.py refuses them; never exceed it
                    return
                row = _row(
                    child_id,
                    now,
                    "parent",
                    now,
                    parent_run_id=parent_run,
                    root_run_id=root_id,
                    seq=seq,
                )
                rows.append(row)
                visit(child_id, row["id"])

        visit(job_id, root["id"])
    bulk.insert_rows(session, Run.__table__, rows)
    if count and trigger in COUNTED_TRIGGERS:
        session.execute(
            update(Job)
            .where(bulk.one_of(session, Job.id, [job_id for job_id, _ in roots]))
            .values(runs_used=Job.runs_used + 1)
            .execution_options(synchronize_session=False)
        )
    return root_ids


def record_tree(
    session: Session, job: Job, *, trigger: str, scheduled_for: datetime, now: datetime
) -> Run:
    """Record one job's run (and its dependents' runs); returns the root run."""
    [run_id] = record_trees(session, [(job.id, scheduled_for)], trigger=trigger, now=now)
    run = session.get(Run, run_id)
    assert run is not None
    return run
