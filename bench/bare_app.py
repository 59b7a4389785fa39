"""The bare Celery app of `python -m bench ceiling`: what a Celery user gets without
kala-celery, on the same Redis broker. Tasks: one that does nothing; one that forks the same
command a kala job runs (piping its output, as kala's runner does); one that forks it between
the two writes at-most-once needs in a SQL store (`bare.fork_recorded`); and `bare.argv`, a
command split into words, for `python -m bench vs-kala`'s burst.

`bare.fork_recorded` is the least a task can write to run each message at most once and keep
its outcome: before the command, one UPDATE that takes its row from `sent` to `started` (a
duplicate delivery finds it taken and runs nothing); after it, one UPDATE with the outcome.
Each on a connection of its own thread kept open, in autocommit, prepared: psycopg alone, no
ORM, no counters. BARE_DATABASE_URL names the PostgreSQL database; `RECORDED_TABLE` is made
by `bench.ceiling`.

BARE_BROKER_URL names the broker; BARE_KALA_SETTINGS=1 gives the app the delivery settings
kala-celery's app uses (acks late, prefetch 1, results ignored, Redis without ack emulation),
so the table can tell what those settings cost from what kala-celery's own work costs.
"""

from __future__ import annotations

import os
import subprocess
import threading

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


def _run(words: list[str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(words, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT)


@app.task(name="bare.fork")
def fork(command: str) -> int:
    return _run([command]).returncode


@app.task(name="bare.argv")
def argv(words: list[str]) -> int:
    return _run(words).returncode


RECORDED_TABLE = (
    "CREATE TABLE bare_runs (id text PRIMARY KEY, state text NOT NULL, started_at timestamptz,"
    " finished_at timestamptz, exit_code integer, output text);"
    " CREATE INDEX bare_runs_state ON bare_runs (state)"
)
_CLAIM = ("UPDATE bare_runs SET state = 'started', started_at = now()"
          " WHERE id = %s AND state = 'sent' RETURNING id")
_END = ("UPDATE bare_runs SET state = %s, finished_at = now(), exit_code = %s, output = %s"
        " WHERE id = %s AND state = 'started'")
_local = threading.local()


def _database():  # one connection per thread (the threads pool) and per process (prefork)
    import psycopg

    conn = getattr(_local, "conn", None)
    if conn is None or conn.closed or getattr(_local, "pid", None) != os.getpid():
        conn = _local.conn = psycopg.connect(os.environ["BARE_DATABASE_URL"], autocommit=True)
        _local.pid = os.getpid()
    return conn


@app.task(name="bare.fork_recorded")
def fork_recorded(run_id: str, command: str) -> int | None:
    db = _database()
    if db.execute(_CLAIM, (run_id,), prepare=True).fetchone() is None:
        return None  # taken already: a duplicate delivery runs nothing
    done = _run([command])
    db.execute(_END, ("success" if done.returncode == 0 else "failed", done.returncode,
                      done.stdout.decode(errors="replace")[-4000:], run_id), prepare=True)
    return done.returncode
