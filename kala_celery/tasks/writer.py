"""The ends of runs, written by one thread per worker process (docs/design.md Decision 29), on
the embedded SQLite store (on PostgreSQL a task writes its own end: see the Decision).

A run's task hands its end (state, outcome, counters) to this process's writer and returns:
the worker takes its next message while the end is written. The writer takes every end that
is waiting and writes them: on SQLite in one transaction (each still its own compare-and-set),
on PostgreSQL each in its one statement (see Writer). An idle writer writes a lone end at
once, so a run's end is recorded no later than before, and under load ends are grouped
without anyone waiting for a batch to fill. At most 64 ends wait: a
task handing one more waits for room, so the worker never runs far ahead of its records. A
batch that fails is written again end by end, so one bad end cannot fail its neighbours.

What the delivery guarantee needs stays true: until its end is written, a run stays in this
process's heartbeat (so no sweep takes it from a live worker), and a process that dies with
ends unwritten leaves those runs `started` by a dead worker, which the sweep takes back as
for any worker that died before recording an outcome. A worker shutting down writes what is
waiting first. Runs whose chain continues (dependents in a Celery chain) are not handed over:
the next link reads its parent's recorded state, so their end is written before the task
returns, as before.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Engine

from kala_celery.runs.attempts import Ending, end, end_in_one, finish_ending, supersede
from kala_celery.store.db import DatabaseAway, begin_write
from kala_celery.tasks.runner import durably, log_superseded

log = logging.getLogger(__name__)

MOST_AT_ONCE = 64  # ends in one transaction
MOST_WAITING = 64  # ends waiting to be written: a task handing one more waits for room
FLUSH_TIMEOUT = 60.0  # seconds a shutting-down process waits for its ends to be written


@dataclass(frozen=True)
class Handed:
    """An end handed to the writer, with what to do once it is written: `publish` the runs it
    recorded (an on-failure job, a child waiting for all its parents) and `release` the run
    from this process's heartbeat."""

    ending: Ending
    release: Callable[[], None]


Publish = Callable[[list[str]], None]


def end_together(engine: Engine, endings: list[Ending]) -> list[list[str] | None]:
    """The ends of several runs in one transaction (docs/design.md Decision 29): what `end`
    returns for each, in order. Each end is its own compare-and-set, decided as `end` decides
    it; a failure rolls back all of them, and the caller writes them one by one."""
    with begin_write(engine) as conn:
        return [[] if end_in_one(conn, e) else finish_ending(conn, e) for e in endings]


class Writer:
    """One thread that writes the ends handed to it, in order, grouped."""

    def __init__(self, engine: Engine, publish: Publish) -> None:
        self._engine = engine
        self._publish = publish
        # Grouped in one transaction on SQLite only (one writer at a time: no deadlock). On
        # PostgreSQL two transactions that each end several runs lock those runs' jobs and
        # counter rows in different orders, and deadlock; there each end stays its one
        # statement (Decision 29).
        self._together = engine.dialect.name == "sqlite"
        self._queue: queue.Queue[Handed] = queue.Queue(MOST_WAITING)
        self._thread = threading.Thread(target=self._loop, name="kala-writer", daemon=True)
        self._thread.start()

    def hand(self, handed: Handed) -> None:
        """Queue an end; when MOST_WAITING are waiting, wait for room (a writer that cannot
        keep up slows its tasks down instead of holding ever more unwritten ends)."""
        self._queue.put(handed)

    def flush(self, timeout: float = FLUSH_TIMEOUT) -> bool:
        """Wait until every end handed so far is written; False on timeout."""
        done = threading.Event()
        threading.Thread(target=lambda: (self._queue.join(), done.set()), daemon=True).start()
        return done.wait(timeout)

    def _loop(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < MOST_AT_ONCE:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._write(batch)
            except Exception:  # never let the thread die: later ends must still be written
                log.exception("the writer failed to record %d run ends; the sweep takes "
                              "those runs back", len(batch))
            finally:
                for handed in batch:
                    handed.release()
                    self._queue.task_done()

    def _write(self, batch: list[Handed]) -> None:
        endings = [handed.ending for handed in batch]
        try:
            if len(endings) == 1 or not self._together:  # each as the task wrote it
                results = [self._one(e) for e in endings]
            else:
                results = durably(lambda: end_together(self._engine, endings))
        except DatabaseAway:
            raise
        except Exception as exc:  # one bad end: each on its own, so the others land
            log.warning("writing %d run ends together failed (%s); writing them one by one",
                        len(batch), exc)
            results = [self._one(e) for e in endings]
        for ending, follow in zip(endings, results, strict=True):
            self._after(ending, follow)

    def _one(self, e: Ending) -> list[str] | None:
        try:
            return durably(lambda: end(self._engine, e))
        except DatabaseAway:
            raise
        except Exception:
            log.exception("run %s: its end could not be recorded", e.run.id)
            return None

    def _after(self, e: Ending, follow: list[str] | None) -> None:
        run, job = e.run, e.job
        if follow is None:  # the sweep took it back meanwhile (Decision 28)
            kept = durably(lambda: supersede(self._engine, run.id, run.attempts, e.me, e.state,
                                           e.outcome, e.now))
            log_superseded(job, run.id, run.attempts, e.state, kept)
            return
        seconds = (e.now - (run.started_at or e.now)).total_seconds()
        log.info("job %r (%s) run %s: %s in %.3f s%s", job.name, job.id, run.id, e.state,
                 seconds, f": {e.outcome.error}" if e.outcome.error else "")
        if follow:
            try:
                self._publish(follow)
            except Exception as exc:  # they stay pending: the beat's sweep sends them
                log.warning("run %s: %d runs it recorded not sent (%s); the beat sends them",
                            run.id, len(follow), exc)


_writers: dict[tuple[int, str], Writer] = {}
_lock = threading.Lock()


def writer_for(engine: Engine, publish: Publish) -> Writer:
    """This process's writer for `engine` (a forked pool process starts its own)."""
    key = (os.getpid(), str(engine.url))
    found = _writers.get(key)
    if found is None:
        with _lock:
            found = _writers.get(key)
            if found is None:
                found = _writers[key] = Writer(engine, publish)
    return found


def flush_all(timeout: float = FLUSH_TIMEOUT) -> None:
    """Write every end this process was handed (a worker or pool process shutting down)."""
    for (pid, _url), writer in list(_writers.items()):
        if pid == os.getpid() and not writer.flush(timeout):
            log.error("run ends still unwritten after %.0f s at shutdown; the sweep takes "
                      "those runs back", timeout)


atexit.register(flush_all)
