"""Children that wait for all their parents (`parents_mode: "all"`, docs/design.md
Decision 20).

Such a child is not in its parents' chains (store/links.children_by_parent leaves it out).
Instead each link remembers whether its parent has succeeded since the child's last run
(`job_links.satisfied`). In the transaction that records a parent run's success, the
child's job row is locked (FOR UPDATE on PostgreSQL; SQLite has one writer at a time), the
parent's link is marked, and when every link of the child is marked they are all cleared and
the child's run (with its own dependents) is recorded. The lock serialises the parents' last
steps: of two parents finishing at once, the second to take it sees the first's committed
mark and records the run, the first saw the second's unmarked link and did not: the child
runs once. A parent's failure marks nothing and clears nothing: the child waits until that
parent succeeds.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, false, func, select, update
from sqlalchemy.orm import Session

from kala_celery.runs import dispatch
from kala_celery.store.tables import PARENTS_ALL, Job, JobLink

_jobs = Job.__table__
_links = JobLink.__table__


def after_success(conn: Connection, job_id: str, run_id: str, now: datetime) -> list[str]:
    """Job `job_id`'s run `run_id` succeeded (in `conn`'s transaction): mark its links to
    all-mode children and record the runs of those whose every parent is marked now.
    Returns the run ids to publish."""
    waiting = conn.scalars(
        select(_links.c.child_id)
        .join(_jobs, _jobs.c.id == _links.c.child_id)
        .where(_links.c.parent_id == job_id, _jobs.c.parents_mode == PARENTS_ALL)
        .order_by(_links.c.child_id)
    ).all()
    if not waiting:
        return []
    recorded: list[str] = []
    for child in waiting:  # locked in id order: two parents never wait on each other
        conn.execute(select(_jobs.c.id).where(_jobs.c.id == child).with_for_update())
        conn.execute(
            update(_links)
            .where(_links.c.parent_id == job_id, _links.c.child_id == child)
            .values(satisfied=True)
        )
        unmet = conn.scalar(
            select(func.count())
            .select_from(_links)
            .where(_links.c.child_id == child, _links.c.satisfied == false())
        )
        if unmet:
            continue
        conn.execute(update(_links).where(_links.c.child_id == child).values(satisfied=False))
        with Session(bind=conn) as session:  # joins the caller's transaction
            recorded += dispatch.record_trees(
                session, [(child, now)], trigger="parent", now=now, parent_run_id=run_id
            )
    return recorded
