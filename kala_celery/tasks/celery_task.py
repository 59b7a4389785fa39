"""One attempt of a Celery-task job (type 2, Decision 19): run the named task of this
worker's own Celery app, in this process, inside the `kala.run` task that claimed the run.

The run is claimed, heartbeated, retried and finished like any other (tasks/runner.py); only
the attempt differs. The task runs through `Task.apply`, so it gets a request (bound tasks
see `self.request.id` = the run id), Celery's task signals fire and its exceptions are
caught; its return value, as JSON, is the run's output, and an exception fails the attempt
with the exception's text (its trace back is the output).
The Decisions cited are those of docs/design.md.
"""

from __future__ import annotations

import json
import socket
from typing import Any

from celery import Celery, current_app, current_task

from kala_celery.runs.outcome import Outcome


def unknown_task_error(name: str, hostname: str) -> str:
    return (
        f"task {name!r} is not registered on worker {hostname}: the Celery app of the "
        "workers consuming this job's queue must define or import it"
    )


def _output(value: Any) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return repr(value)


def _worker_name() -> str:
    """The Celery worker (`-n` name) running this attempt, for the error of an unknown task."""
    request = getattr(current_task, "request", None)
    return getattr(request, "hostname", None) or socket.gethostname()


def call(task: dict[str, Any], *, run_id: str, app: Celery | None = None) -> Outcome:
    """Run `task` ({"name", "args", "kwargs"}) once; the outcome is the task's."""
    registry = (app or current_app).tasks
    name = task["name"]
    if name not in registry:
        return Outcome(False, error=unknown_task_error(name, _worker_name()))
    result = registry[name].apply(
        args=task.get("args") or [], kwargs=task.get("kwargs") or {}, task_id=run_id,
        throw=False,
    )
    if result.successful():
        return Outcome(True, output=_output(result.result))
    exc = result.result
    error = f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc)
    return Outcome(False, output=result.traceback or "", error=error)
