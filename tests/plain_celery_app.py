"""A Celery app that does not import kala_celery.tasks: its workers know no `kala.run`."""

import os

from celery import Celery

app = Celery("plain_app", broker=os.environ["KALA_BROKER_URL"])
app.conf.task_serializer = "json"
