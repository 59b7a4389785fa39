"""Publish recorded runs to the broker (task id = run id) and mark them `sent`.

A run with dependents goes out as one Celery chain of immutable signatures (the tree in
depth-first order); each link decides from its parent run's recorded state whether to run.
A run that could not be published stays `pending`; the beat's sweep publishes it later, and
workers ignore a run that is already past `sent`, so publishing twice is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from celery import Celery, chain
from celery.canvas import Signature
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from kala_celery.celery_app import RUN_TASK
from kala_celery.models import Job, Run

log = logging.getLogger(__name__)


class CeleryPublisher:
    def __init__(self, celery: Celery, sessions: sessionmaker[Session]) -> None:
        self.celery = celery
        self.sessions = sessions

    def __call__(self, runs: Sequence[Run]) -> None:
        self.publish_ids(run.id for run in runs)

    def _signature(self, run_id: str, job_id: str, name: str, queue: str | None) -> Signature:
        return self.celery.signature(
            RUN_TASK,
            args=[run_id],
            kwargs={"job_id": job_id},
            task_id=run_id,
            queue=queue or None,
            shadow=f"kala: {name}",
            immutable=True,
        )

    def publish_ids(self, run_ids: Iterable[str]) -> list[str]:
        """Send the pending runs among `run_ids` (each with its dependents' runs, as a chain)
        on one producer; returns the ids of every run sent."""
        ids = list(run_ids)
        if not ids:
            return []
        columns = (Run.id, Run.root_run_id, Job.id, Job.name, Job.queue)
        with self.sessions() as session:
            roots = session.execute(
                select(*columns)
                .join(Job, Job.id == Run.job_id)
                .where(Run.id.in_(ids), Run.state == "pending")
            ).all()
            links: dict[str, list[tuple]] = {}
            if roots:
                for row in session.execute(
                    select(*columns)
                    .join(Job, Job.id == Run.job_id)
                    .where(Run.root_run_id.in_([r[0] for r in roots]), Run.state == "pending")
                    .order_by(Run.root_run_id, Run.seq)
                ):
                    links.setdefault(row[1], []).append(row)
        sent: list[str] = []
        try:
            with self.celery.producer_or_acquire() as producer:
                for run_id, _root, job_id, name, queue in roots:
                    tree = links.get(run_id, [])
                    head = self._signature(run_id, job_id, name, queue)
                    rest = [self._signature(r[0], r[2], r[3], r[4]) for r in tree]
                    (chain(head, *rest) if rest else head).apply_async(producer=producer)
                    sent += [run_id, *(r[0] for r in tree)]
        except Exception:  # broker down: what was not sent stays pending for the sweep
            log.exception("publishing runs failed; %d left pending", len(roots) - len(sent))
        if sent:
            with self.sessions.begin() as session:
                session.execute(
                    update(Run).where(Run.id.in_(sent), Run.state == "pending").values(state="sent")
                )
        return sent
