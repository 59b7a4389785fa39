"""tasks: the worker's side. Kala's Celery task `kala.run` (one delivery of a run); importing
this package registers it with any Celery app (`shared_task`), so a team's own app only needs
`import kala_celery.tasks`.

- runner: one delivery (claim, attempts under the retry policy, finish, the chain's next link);
- shell, remote, celery_task: one attempt of each job type; templates: remote bodies;
- heartbeat: the worker process's heartbeat thread;
- writer: the worker process's writer of run ends (docs/design.md Decision 29).

May import config, schedule, store, runs and celery_app; never beat, api, web or ops.
"""

from __future__ import annotations

import contextlib
import logging
import socket
from collections.abc import Callable

from celery import current_app, shared_task, signals, signature
from sqlalchemy import Engine

from kala_celery.celery_app import RUN_TASK, settings_of
from kala_celery.config import Settings
from kala_celery.runs.attempts import Ending
from kala_celery.runs.heartbeats import worker_id
from kala_celery.runs.publish import CeleryPublisher
from kala_celery.runs.sweep import reopen
from kala_celery.runs.warmup import warm
from kala_celery.store.clock import now as db_now
from kala_celery.store.db import DatabaseAway, Store, size_pools_for, store_for
from kala_celery.tasks import heartbeat
from kala_celery.tasks.runner import execute_run
from kala_celery.tasks.writer import Handed, flush_all, writer_for

__all__ = ["RunFailed", "RunSkipped", "run_job"]

log = logging.getLogger(__name__)

DATABASE_RETRY_MAX = 30.0  # seconds between deliveries while the database is away


def _store(settings: Settings) -> Store:
    """This process's job store, without the pool's pre-ping: it is one more round trip
    before a run's claim and again before its finish, on the path from due to start. A
    connection the server dropped fails its statement instead; SQLAlchemy then drops the
    pool's older connections too, and the run is tried again: the claim by a redelivery
    (DatabaseAway below), the finish by `runner.durably`."""
    return store_for(settings.db_url, pre_ping=False, prepared=True)


class RunFailed(Exception):
    """The run failed all its attempts, or was lost: its Celery task ends in FAILURE with the
    run's error (exit status and output tail, or HTTP status), for Flower, result backends
    and the task_failure signal."""


class RunSkipped(Exception):
    """The run was not executed (its parent run failed, its job is disabled, its epsilon
    window had closed): visibly not a success."""


ENDED_BADLY = {"failed": RunFailed, "lost": RunFailed, "skipped": RunSkipped}


def _process_started(hostname: str, runs_at_once: int) -> None:
    """This worker process is alive from its start, not only from its first run (so
    `kala-celery health worker` passes for an idle worker), and its connections are warm
    for as many runs as it executes at once (runs/warmup.py)."""
    try:
        settings = settings_of(current_app)
        engine = _store(settings).engine
        heartbeat.ensure(engine, worker_id(hostname), settings.worker_silence.total_seconds() / 6)
    except Exception as exc:  # the database away: the first run starts it
        log.warning("heartbeat not started (%s); it starts with the first run", exc)
        return
    try:
        warm(engine, runs_at_once, db_now())
    except Exception as exc:  # the runs warm their connections themselves
        log.warning("database connections not opened at start (%s)", exc)


@signals.worker_init.connect(weak=False)
def _size_pools(sender: object = None, **_kwargs: object) -> None:
    """A pool that runs tasks in this process's threads needs a connection per thread."""
    from celery.concurrency import get_implementation
    from celery.concurrency.thread import TaskPool as ThreadPool

    pool_cls = getattr(sender, "pool_cls", None)
    concurrency = getattr(sender, "concurrency", None)
    if pool_cls is None or not isinstance(concurrency, int):
        return
    if issubclass(get_implementation(pool_cls), ThreadPool):
        size_pools_for(concurrency)


@signals.worker_process_init.connect(weak=False)
def _pool_process_started(sender: str | None = None, **_kwargs: object) -> None:
    """A prefork pool process (the one that executes runs) is up."""
    if sender:
        _process_started(sender, 1)


@signals.worker_ready.connect(weak=False)
def _worker_ready(sender: object = None, **_kwargs: object) -> None:
    """The solo and threads pools execute runs in the worker's own process."""
    from celery.concurrency.prefork import TaskPool

    hostname = getattr(sender, "hostname", None)  # sender: the worker's Consumer
    pool = getattr(sender, "pool", None)
    if hostname and not isinstance(pool, TaskPool):
        limit = getattr(pool, "limit", None)  # the pool's concurrency: threads at once
        _process_started(hostname, limit if isinstance(limit, int) and limit > 0 else 1)


@shared_task(
    name=RUN_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    ignore_result=True,
    max_retries=None,
    throws=(RunFailed, RunSkipped),  # expected outcomes: logged without a trace back
)
def run_job(self, run_id: str, job_id: str | None = None) -> None:
    """Run one run of a job (task id = run id); job_id is there for Flower and logs."""
    settings = settings_of(self.app)
    store = _store(settings)
    hostname = self.request.hostname or socket.gethostname()
    # On SQLite a run's end goes to the process's writer (Decision 29), but not a run whose
    # chain continues: the next link reads its recorded end.
    writes_later = store.engine.dialect.name == "sqlite" and not self.request.chain
    hand = _hand_to_writer(self.app, store, run_id) if writes_later else None
    try:
        heartbeat.ensure(
            store.engine, worker_id(hostname), settings.worker_silence.total_seconds() / 6
        )
        with heartbeat.executing(run_id):
            delivery = execute_run(store.sessions, run_id, hostname=hostname, settings=settings,
                                   hand=hand)
    except DatabaseAway as exc:  # come back when it is: the message is all the run has
        countdown = min(DATABASE_RETRY_MAX, 2.0 ** min(self.request.retries, 5))
        raise self.retry(countdown=countdown, exc=exc) from exc
    if not delivery.owned:  # a duplicate, or taken away: the run's owner continues the chain
        self.request.chain = None
    if delivery.publish:
        CeleryPublisher(self.app, store.sessions).publish_ids(delivery.publish)
    if delivery.retry_in is not None:
        raise self.retry(countdown=delivery.retry_in)
    _continue_chain(self, store.engine)
    failure = ENDED_BADLY.get(delivery.ended or "")
    if failure is not None:
        raise failure(delivery.error or delivery.ended)


def _hand_to_writer(app, store: Store, run_id: str) -> Callable[[Ending], None]:
    """Hand the run's end to this process's writer (tasks/writer.py), keeping the run in the
    heartbeat until it is written."""

    def hand(ending: Ending) -> None:
        writer = writer_for(store.engine,
                            lambda ids: CeleryPublisher(app, store.sessions).publish_ids(ids))
        writer.hand(Handed(ending, heartbeat.keep(run_id)))

    return hand


@signals.worker_process_shutdown.connect(weak=False)
@signals.worker_shutdown.connect(weak=False)
def _write_what_is_left(**_kwargs: object) -> None:
    """A worker or pool process stopping writes the run ends it was handed first."""
    flush_all()


CHAIN_RETRY = {"max_retries": 5, "interval_start": 0.5, "interval_step": 1, "interval_max": 3}


def _continue_chain(task, engine: Engine) -> None:
    """Send the next link of this run's chain ourselves, after a failure as after a success
    (Celery would end the chain on a failure, and a publish error of its own would mark a
    good run's task failed). Each dependent run reads its parent's recorded state and skips
    itself when that failed. If the broker stays away, the next run goes back to `pending`,
    which the beat's sweep publishes (with the rest of the chain) when it is back."""
    chain, task.request.chain = task.request.chain, None
    if not chain:
        return
    link = signature(chain[-1], app=task.app)
    try:
        link.apply_async(
            chain=chain[:-1],
            parent_id=task.request.id,
            root_id=task.request.root_id,
            retry=True,
            retry_policy=CHAIN_RETRY,
        )
    except Exception as exc:
        log.warning("run %s: the next run of its chain was not sent (%s); the beat sends it",
                    task.request.id, exc)
        with contextlib.suppress(*DatabaseAway):
            reopen(engine, db_now(), [link.options["task_id"]])
