"""The links between jobs (Kala's parent_jobs / dependent_jobs): who depends on whom, in
FIFO order, with the checks a change of links must pass: no cycle, known jobs, bounded
depth and tree size, and (Decision 30) no job from a Celery app's beat_schedule made a
dependent. The Decisions cited are those of docs/design.md.
"""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from kala_celery.errors import Conflict, InvalidJob
from kala_celery.store import bulk
from kala_celery.store.tables import SOURCE_CONFIG, Job, JobLink
from kala_celery.wire import limits

MAX_DEPTH = 32  # levels of dependent jobs below any job


def parent_ids(session: Session, job_id: str) -> list[str]:
    rows = session.scalars(
        select(JobLink.parent_id).where(JobLink.child_id == job_id).order_by(JobLink.id)
    )
    return list(rows)


def child_ids(session: Session, job_id: str) -> list[str]:
    rows = session.scalars(
        select(JobLink.child_id).where(JobLink.parent_id == job_id).order_by(JobLink.position)
    )
    return list(rows)


def links_of(session: Session, job_ids: Iterable[str] | None = None) -> tuple[dict, dict]:
    """(parents by child, in link order; children by parent, in FIFO position order) for the
    given jobs (all jobs when None)."""
    query = select(JobLink.parent_id, JobLink.child_id, JobLink.position).order_by(JobLink.id)
    if job_ids is not None:
        ids = list(job_ids)
        query = query.where(JobLink.parent_id.in_(ids) | JobLink.child_id.in_(ids))
    parents: dict[str, list[str]] = {}
    ranked: dict[str, list[tuple[int, str]]] = {}
    for parent, child, position in session.execute(query):
        parents.setdefault(child, []).append(parent)
        ranked.setdefault(parent, []).append((position, child))
    children = {parent: [child for _, child in sorted(edges)] for parent, edges in ranked.items()}
    return parents, children


def children_by_parent(session: Session, roots: list[str]) -> dict[str, list[str]]:
    """Every job below `roots` mapped to its children in FIFO order (one query per level).
    Children with parents_mode "all" are not in their parents' chains: they run on their own
    once all their parents have succeeded (kala_celery/runs/parents.py, Decision 20)."""
    children: dict[str, list[str]] = {}
    frontier = list(roots)
    while frontier:
        rows = session.execute(
            select(JobLink.parent_id, JobLink.child_id)
            .join(Job, Job.id == JobLink.child_id)
            .where(bulk.one_of(session, JobLink.parent_id, frontier))
            .where(Job.parents_mode.is_(None))
            .order_by(JobLink.parent_id, JobLink.position)
        ).all()
        for parent, child in rows:
            children.setdefault(parent, []).append(child)
        frontier = list(dict.fromkeys(c for _, c in rows if c not in children))
    return children


def unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _existing(session: Session, ids: list[str], what: str) -> None:
    found = set(session.scalars(select(Job.id).where(Job.id.in_(ids)))) if ids else set()
    for job_id in ids:
        if job_id not in found:
            raise InvalidJob(f"{what} {job_id!r} does not exist")


def _descendants(session: Session, roots: list[str]) -> set[str]:
    seen: set[str] = set()
    frontier = list(roots)
    while frontier:
        seen.update(frontier)
        nxt = session.scalars(select(JobLink.child_id).where(JobLink.parent_id.in_(frontier)))
        frontier = [c for c in set(nxt) if c not in seen]
    return seen


def set_links(
    session: Session, job_id: str, parents: list[str] | None, children: list[str] | None
) -> None:
    """Replace the job's parent and/or child edges (None keeps that side), refusing cycles."""
    if parents is not None:
        if job_id in parents:
            raise InvalidJob("a job cannot be its own parent")
        _existing(session, parents, "parent job")
    if children is not None:
        if job_id in children:
            raise InvalidJob("a job cannot depend on itself")
        # Kala stores unknown dependent ids and skips them at run time: link the known ones
        # (Decision 9).
        known = set(session.scalars(select(Job.id).where(Job.id.in_(children))))
        children = [child for child in children if child in known]
        for child in session.scalars(  # as a child it would no longer run on its schedule
                select(Job).where(Job.id.in_(children), Job.source == SOURCE_CONFIG)):
            raise Conflict(
                f"job {child.id!r} comes from the beat_schedule entry {child.name!r} of the "
                "Celery app: it runs on the schedule its code gives and cannot become a "
                "dependent job"
            )
    new_parents = parents if parents is not None else parent_ids(session, job_id)
    new_children = children if children is not None else child_ids(session, job_id)
    # A cycle exists iff a (new) parent is reachable from the job through its (new) children.
    below = _descendants(session, new_children) if new_children else set()
    if job_id in below or below.intersection(new_parents):
        raise InvalidJob("the dependency would create a cycle")
    if parents is not None:
        session.execute(delete(JobLink).where(JobLink.child_id == job_id))
        for parent in parents:
            _append_child(session, parent, job_id)
    if children is not None:
        session.execute(delete(JobLink).where(JobLink.parent_id == job_id))
        for position, child in enumerate(children):
            session.add(JobLink(parent_id=job_id, child_id=child, position=position))
    session.flush()
    _check_tree_size(session, job_id)


def _check_tree_size(session: Session, job_id: str) -> None:
    """Every run dispatches its whole dependency tree as one chain: keep trees bounded."""
    tops, frontier, seen = [], [job_id], {job_id}
    while frontier:  # the top-most ancestors of the job
        rows = session.execute(
            select(JobLink.child_id, JobLink.parent_id).where(JobLink.child_id.in_(frontier))
        ).all()
        has_parent = {child for child, _ in rows}
        tops += [j for j in frontier if j not in has_parent]
        frontier = [p for _, p in rows if p not in seen]
        seen.update(frontier)
    children = children_by_parent(session, tops)
    sizes: dict[str, int] = {}

    def size(job: str, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise InvalidJob(f"dependent jobs may nest at most {MAX_DEPTH} levels deep")
        if job not in sizes:
            sizes[job] = 1 + sum(size(c, depth + 1) for c in children.get(job, []))
        return sizes[job]

    for top in tops:
        if size(top, 0) > limits.MAX_TREE_RUNS:
            raise InvalidJob(
                f"job {top!r} would start more than {limits.MAX_TREE_RUNS} runs per run "
                "with its dependent jobs"
            )


def _append_child(session: Session, parent: str, child: str) -> None:
    last = session.scalar(select(func.max(JobLink.position)).where(JobLink.parent_id == parent))
    session.add(JobLink(parent_id=parent, child_id=child, position=(last or 0) + 1))
    session.flush()
