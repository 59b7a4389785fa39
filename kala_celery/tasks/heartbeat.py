"""A worker process's heartbeat: a row in `workers`, written every sixth of
KALA_WORKER_TIMEOUT by a thread of the process that executes runs, naming the runs it is
executing. The beat's sweep reads it (`runs.orphaned`): a run is taken from a worker only when
that worker is silent, or alive and no longer running it — never for being long.

It starts with the first run a process handles (whatever the pool: prefork children, threads,
solo), so any Celery app that imports kala's tasks has it, and its first row is written before
that run is claimed.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy import Engine

from kala_celery.runs.heartbeats import record_heartbeat
from kala_celery.store import clock
from kala_celery.store.clock import now as db_now
from kala_celery.store.db import DatabaseAway, begin_write

log = logging.getLogger(__name__)

_lock = threading.Lock()
# Run ids this process is handling now, counted: a duplicate delivery of a run beside the one
# executing it (threads pool) must not strike it off when it ends first.
_running: Counter[str] = Counter()
_start_lock = threading.Lock()
_beating: tuple[int, str] | None = None  # (pid, worker name) of the thread running here


def _beat(engine: Engine, name: str) -> bool:
    clock.sync()  # each heartbeat reads the database's time (docs/design.md Decision 27)
    now = db_now()  # before the snapshot: a run listed is one claimed before `now`
    with _lock:
        running = sorted(+_running)
    try:
        with begin_write(engine) as conn:
            record_heartbeat(conn, name, now, running)
    except DatabaseAway as exc:
        log.debug("heartbeat of %s not written: %s", name, exc)
        return False
    return True


def _loop(engine: Engine, name: str, period: float) -> None:
    healthy = True
    stop = threading.Event()
    while not stop.wait(period):
        ok = _beat(engine, name)
        if ok != healthy:
            if ok:
                log.info("heartbeat of %s written again", name)
            else:
                log.warning("heartbeat of %s cannot be written (database away)", name)
            healthy = ok


def ensure(engine: Engine, name: str, period: float) -> None:
    """Start this process's heartbeat (once per process: a forked child starts its own),
    writing the first row now."""
    global _beating
    if _beating == (os.getpid(), name):
        return
    with _start_lock:
        if _beating == (os.getpid(), name):
            return
        _beat(engine, name)
        threading.Thread(
            target=_loop, args=(engine, name, period), name="kala-heartbeat", daemon=True
        ).start()
        _beating = (os.getpid(), name)


def keep(run_id: str) -> Callable[[], None]:
    """List `run_id` until the function returned is called (once): a run whose end is handed
    to the writer stays this process's until the end is written (tasks/writer.py)."""
    with _lock:
        _running[run_id] += 1
    released = threading.Event()

    def release() -> None:
        if released.is_set():
            return
        released.set()
        with _lock:
            _running[run_id] -= 1
            if _running[run_id] <= 0:
                del _running[run_id]

    return release


@contextmanager
def executing(run_id: str) -> Iterator[None]:
    """List `run_id` in this process's heartbeat while the block runs (from before its
    claim to after its outcome is recorded)."""
    with _lock:
        _running[run_id] += 1
    try:
        yield
    finally:
        with _lock:
            _running[run_id] -= 1
            if _running[run_id] <= 0:
                del _running[run_id]
