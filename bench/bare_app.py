"""The bare Celery app of `python -m bench ceiling`: what a Celery user gets without
kala-celery, on the same Redis broker. Two tasks: one that does nothing, one that forks the
same command a kala job runs (piping its output, as kala's runner does); and `bare.argv`, a
command split into words, for `python -m bench vs-kala`'s burst.

BARE_BROKER_URL names the broker; BARE_KALA_SETTINGS=1 gives the app the delivery settings
kala-celery's app uses (acks late, prefetch 1, results ignored, Redis without ack emulation),
so the table can tell what those settings cost from what kala-celery's own work costs.
"""

from __future__ import annotations

import os
import subprocess

from celery import Celery

app = Celery("bare", broker=os.environ["BARE_BROKER_URL"])
app.conf.update(task_ignore_result=True, task_serializer="json", accept_content=["json"])
if os.environ.get("BARE_KALA_SETTINGS") == "1":
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_transport_options={"ack_emulation": False},
    )


@app.task(name="bare.noop")
def noop() -> None:
    return None


def _run(words: list[str]) -> int:
    done = subprocess.run(words, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)
    return done.returncode


@app.task(name="bare.fork")
def fork(command: str) -> int:
    return _run([command])


@app.task(name="bare.argv")
def argv(words: list[str]) -> int:
    return _run(words)
