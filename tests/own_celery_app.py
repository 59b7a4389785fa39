"""A team's existing Celery app that adopts kala's tasks by importing them."""

import os

from celery import Celery

app = Celery("their_app", broker=os.environ["KALA_BROKER_URL"])
app.conf.task_serializer = "json"

import kala_celery.tasks  # noqa: E402, F401 - registers kala's tasks with this app


@app.task
def their_own_task() -> str:
    return "still here"


# Tasks that Celery-task jobs (type 2, Decision 19) name; THEIR_WORKER says which worker ran one.
@app.task
def add(x: int, y: int, scale: int = 1) -> dict:
    return {"sum": (x + y) * scale, "worker": os.environ.get("THEIR_WORKER", "")}


@app.task
def explode(message: str) -> None:
    raise ValueError(message)
