"""Publish recorded runs to the broker (task id = run id) and mark them `sent`.

A run that could not be published stays `pending`; the beat's sweep publishes it later, and
workers ignore a run that is already past `sent`, so publishing twice is harmless.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence

from celery import Celery
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

    def publish_ids(self, run_ids: Iterable[str]) -> list[str]:
        """Send the pending runs among `run_ids` on one producer; returns the ids sent."""
        ids = list(run_ids)
        if not ids:
            return []
        with self.sessions() as session:
            rows = session.execute(
                select(Run.id, Job.id, Job.name, Job.queue)
                .join(Job, Job.id == Run.job_id)
                .where(Run.id.in_(ids), Run.state == "pending")
            ).all()
        sent: list[str] = []
        try:
            with self.celery.producer_or_acquire() as producer:
                for run_id, job_id, name, queue in rows:
                    self.celery.send_task(
                        RUN_TASK,
                        args=[run_id],
                        kwargs={"job_id": job_id},
                        task_id=run_id,
                        queue=queue or None,
                        shadow=f"kala: {name}",
                        producer=producer,
                    )
                    sent.append(run_id)
        except Exception:  # broker down: what was not sent stays pending for the sweep
            log.exception("publishing runs failed; %d left pending", len(rows) - len(sent))
        if sent:
            with self.sessions.begin() as session:
                session.execute(
                    update(Run)
                    .where(Run.id.in_(sent), Run.state == "pending")
                    .values(state="sent")
                )
        return sent
