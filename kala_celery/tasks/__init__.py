"""Kala's Celery tasks. Importing this module registers them with any Celery app
(`shared_task`): a team's own app only needs `import kala_celery.tasks`."""

from __future__ import annotations

import socket

from celery import shared_task

from kala_celery.celery_app import RUN_TASK, settings_of
from kala_celery.db import DatabaseAway, store_for
from kala_celery.publish import CeleryPublisher
from kala_celery.runs import worker_id
from kala_celery.tasks import heartbeat
from kala_celery.tasks.runner import execute_run

__all__ = ["run_job"]

DATABASE_RETRY_MAX = 30.0  # seconds between deliveries while the database is away


@shared_task(
    name=RUN_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=None,
)
def run_job(self, run_id: str, job_id: str | None = None) -> None:
    """Run one run of a job (task id = run id); job_id is there for Flower and logs."""
    settings = settings_of(self.app)
    store = store_for(settings.db_url)
    hostname = self.request.hostname or socket.gethostname()
    try:
        heartbeat.ensure(
            store.engine, worker_id(hostname), settings.worker_silence.total_seconds() / 6
        )
        with heartbeat.executing(run_id):
            delivery = execute_run(store.sessions, run_id, hostname=hostname, settings=settings)
    except DatabaseAway as exc:  # come back when it is: the message is all the run has
        countdown = min(DATABASE_RETRY_MAX, 2.0 ** min(self.request.retries, 5))
        raise self.retry(countdown=countdown, exc=exc) from exc
    if not delivery.owned:  # a duplicate, or taken away: the run's owner continues the chain
        self.request.chain = None
    if delivery.publish:
        CeleryPublisher(self.app, store.sessions).publish_ids(delivery.publish)
    if delivery.retry_in is not None:
        raise self.retry(countdown=delivery.retry_in)
