"""Kala's Celery tasks. Importing this module registers them with any Celery app
(`shared_task`): a team's own app only needs `import kala_celery.tasks`."""

from __future__ import annotations

import socket

from celery import shared_task

from kala_celery.celery_app import RUN_TASK, settings_of
from kala_celery.db import store_for
from kala_celery.publish import CeleryPublisher
from kala_celery.tasks.runner import execute_run

__all__ = ["run_job"]


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
    sessions = store_for(settings.db_url).sessions
    delivery = execute_run(
        sessions,
        run_id,
        hostname=self.request.hostname or socket.gethostname(),
        settings=settings,
    )
    if delivery.publish:
        CeleryPublisher(self.app, sessions).publish_ids(delivery.publish)
    if delivery.retry_in is not None:
        raise self.retry(countdown=delivery.retry_in)
