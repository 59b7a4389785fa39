"""KalaScheduler: a Celery beat scheduler that dispatches Kala jobs from the SQL job store.

It replaces the base class's heap tick (which looks at every entry every tick) with an
indexed query for due rows, and sleeps until the earliest `next_run_at`, at most
`max_interval` (1 s) so API edits take effect within a second with no reload.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta

from celery import Celery
from celery.beat import Scheduler
from sqlalchemy import delete, select, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from kala_celery.beat.beat_schedule import Wanted, sync_from_code, wanted
from kala_celery.beat.claim import RUN_IN_FLIGHT, Outgoing, claim_due, next_due
from kala_celery.celery_app import settings_of
from kala_celery.runs import attempts, heartbeats, sweep
from kala_celery.runs.publish import CeleryPublisher
from kala_celery.schedule import ScheduleError, parse_plain_duration
from kala_celery.store import audit
from kala_celery.store import version as store_version
from kala_celery.store.clock import now as db_now
from kala_celery.store.db import Store, read_sessions, store_for
from kala_celery.store.jobs import Rules, rearm
from kala_celery.store.tables import TERMINAL_STATES, UNARMED, Job, JobLink, Run

log = logging.getLogger(__name__)

BATCH = 500  # jobs claimed per transaction
SWEEP_EVERY = 5.0  # seconds between sweeps for runs without an owner
PENDING_GRACE = timedelta(seconds=10)  # a run pending longer than this was not published
MAX_BACKOFF = 10.0  # seconds between tries while the database or the broker is away
PRUNE_BATCH = 5000
FORGET_WORKERS = timedelta(days=1)  # heartbeat rows of processes gone this long are deleted


class KalaScheduler(Scheduler):
    max_interval = 1.0

    def __init__(self, app: Celery, *args: object, **kwargs: object) -> None:
        self._store: Store | None = None
        self._reads: sessionmaker[Session] = sessionmaker()
        self._publisher: CeleryPublisher | None = None
        self._next_sweep = 0.0
        self._failures = 0
        self._db_up_since: float | None = None  # monotonic time of the first good tick
        self._unsent: list[str] = []
        self._waking_for: datetime | None = None  # the due time the last tick slept until
        self._broker_retry_at = 0.0
        self._broker_failures = 0
        self._default_tz = "UTC"
        self._from_code: Wanted | None = None
        self._publisher_thread = ThreadPoolExecutor(1, thread_name_prefix="kala-publish")
        self.name = f"{socket.gethostname()}/{os.getpid()}"  # its row in `beats`
        super().__init__(app, *args, **kwargs)

    # -- the Scheduler contract -------------------------------------------------------

    def setup_schedule(self) -> None:
        """Nothing to load: jobs are read from SQL as they fall due (connected on first tick,
        so a beat started while the database is down waits for it instead of dying). The
        app's own beat_schedule is read here and made jobs on that first tick
        (beat/beat_schedule.py)."""
        self._default_tz = settings_of(self.app).timezone
        from_code = wanted(self.app)
        self._from_code = None if from_code.empty else from_code

    def _connect(self) -> None:
        if self._store is None:
            store = store_for(settings_of(self.app).db_url, pre_ping=False)
            self._publisher = CeleryPublisher(self.app, store.sessions)
            self._reads = read_sessions(store.engine)  # an idle tick: one round trip
            self._store = store
        if self._from_code is not None:  # once, on the first tick the database is up
            rules = Rules(default_timezone=self._default_tz)
            sync_from_code(self._store.sessions, self._from_code, rules, db_now())
            self._from_code = None

    def tick(self, *args: object, **kwargs: object) -> float:
        """Claim and publish everything due; return seconds to sleep."""
        try:
            self._connect()
            wait = self._tick(db_now())
        except SQLAlchemyError as exc:
            self._failures += 1
            self._db_up_since = None
            backoff = min(MAX_BACKOFF, 0.5 * 2**self._failures)
            if self._failures == 1:
                log.error("beat: database unavailable (%s); retrying with back-off up to "
                          "%.0f s", exc, MAX_BACKOFF)
            else:
                log.debug("beat: database still unavailable; retrying in %.1f s", backoff)
            return backoff
        if self._failures:
            log.warning("beat: database back after %d failed ticks", self._failures)
            self._failures = 0
        return wait

    def sync(self) -> None:  # all state is in SQL, written as it happens
        pass

    def close(self) -> None:
        self._publisher_thread.shutdown()
        if self._store is not None:
            self._store.engine.dispose()

    @property
    def schedule(self) -> dict:
        return {}

    @property
    def info(self) -> str:
        url = make_url(settings_of(self.app).db_url).render_as_string(hide_password=True)
        return f"    . jobs from -> {url}"

    # -- dispatch ---------------------------------------------------------------------

    def _tick(self, now: datetime) -> float:
        assert self._store is not None and self._publisher is not None
        if self._db_up_since is None:
            self._db_up_since = time.monotonic()
        upcoming = self._waking_for
        if upcoming is None or upcoming > now:
            with self._reads() as session:  # an idle tick is this one query
                upcoming = next_due(session)
        # else: this tick is the wake-up for a due time the last one found; claiming at once
        # saves a round trip (a job deleted or moved meanwhile is simply not claimed)
        if upcoming is not None and upcoming <= now:
            self._drain(now)
            with self._reads() as session:  # due jobs left are busy: not before
                upcoming = next_due(session, after=db_now())
        self._waking_for = upcoming
        if self._unsent and time.monotonic() >= self._broker_retry_at:
            self._publish([])  # the broker refused them last time
        if time.monotonic() >= self._next_sweep:
            self._sweep(now)
            self._next_sweep = time.monotonic() + SWEEP_EVERY
        if upcoming is None:
            return self.max_interval
        return max(0.0, min(self.max_interval, (upcoming - db_now()).total_seconds()))

    def _drain(self, now: datetime) -> None:
        """Claim everything due, a batch per transaction. On PostgreSQL each batch is
        published on a second thread while the next one is claimed (the claim mostly waits on
        the server, the publish is mostly Python), one batch in flight at a time, in order.
        SQLite has one writer at a time: there the publish's own write would only wait for
        the claim's, so batches are published in turn."""
        assert self._store is not None
        overlap = self._store.engine.dialect.name != "sqlite"
        publishing: Future[None] | None = None
        try:
            while True:
                with self._store.sessions.begin() as session:
                    claimed = claim_due(session, now, BATCH, self._default_tz)
                if publishing is not None:
                    publishing.result()
                if overlap:
                    publishing = self._publisher_thread.submit(
                        self._publish, claimed.run_ids, claimed.alone
                    )
                else:
                    self._publish(claimed.run_ids, claimed.alone)
                if len(claimed.run_ids) < BATCH:
                    break
        finally:
            if publishing is not None:
                publishing.result()

    def _publish(self, run_ids: list[str], known: Mapping[str, Outgoing] | None = None) -> None:
        assert self._publisher is not None
        wanted = [*self._unsent, *run_ids]
        if not wanted:
            return
        sent = set(self._publisher.publish_ids(wanted, known))
        self._unsent = [run_id for run_id in wanted if run_id not in sent][: BATCH * 10]
        if self._publisher.broker_error is None:
            self._broker_failures = 0
        else:  # back off (the sweep publishes what falls out of the list, later)
            self._broker_failures += 1
            pause = min(MAX_BACKOFF, 0.5 * 2**self._broker_failures)
            self._broker_retry_at = time.monotonic() + pause

    def _sweep(self, now: datetime) -> None:
        """Give every run without an owner one again (runs/sweep.py): publish runs whose message is
        missing (left pending, or sent and never taken), take started runs from workers that
        are gone; then re-arm jobs unscheduled by bulk SQL and prune old runs."""
        assert self._store is not None and self._publisher is not None
        settings = settings_of(self.app)
        engine = self._store.engine
        pending, lost = sweep.missing(
            engine,
            now,
            pending_grace=PENDING_GRACE,
            redeliver_after=settings.redeliver_delay,
            limit=BATCH,
        )
        untaken = sweep.untaken_tasks(
            engine, now, redeliver_after=settings.redeliver_delay, limit=BATCH
        )
        if lost or untaken:  # a queue with messages waiting may still hold theirs
            idle = self._publisher.idle_queues(
                {queue for _, queue in lost} | {run.queue for run in untaken}
            )
            if idle is None:  # the broker is away: nothing to send to, nor to judge by
                idle, untaken = set(), []
            again, failed = sweep.task_verdicts(untaken, idle, now, settings.redeliver_delay)
            again += [r for r, queue in lost if queue in idle]
            pending += sweep.reopen(engine, now, again)
            for run_id, reason in failed:
                self._publish(sweep.fail_untaken(self._store.sessions, run_id, settings, now,
                                                reason))
        if pending:
            log.info("beat: sweep publishing %d runs without a message", len(pending))
            self._publish(pending)
        if self._heartbeats_trusted(settings.worker_silence):
            orphans = heartbeats.orphaned(self._store.engine, now, settings.worker_silence)
            for run_id, reason in orphans:
                log.warning("beat: run %s: %s", run_id, reason)
                self._publish(attempts.abandon(self._store.sessions, run_id, settings, now, reason))
        self._rearm(now)
        self._prune(now - parse_plain_duration(settings.run_retention))
        self._prune_audit(now - parse_plain_duration(settings.audit_retention))
        with engine.begin() as conn:  # one transaction for the beat's own bookkeeping
            store_version.fold(conn)  # the store version's rows, one per transaction, as one
            heartbeats.record_beat(conn, self.name, now)
        heartbeats.prune_workers(engine, now - FORGET_WORKERS)

    def _heartbeats_trusted(self, silence: timedelta) -> bool:
        """A worker's silence means it is gone only if the database was up all that time:
        after an outage (or this beat's start), heartbeats get one silence bound to resume."""
        up = self._db_up_since
        return up is not None and time.monotonic() - up >= silence.total_seconds() * 7 / 6

    def _prune(self, cutoff: datetime) -> None:
        """docs/design.md Decision 15: finished runs older than KALA_RUN_RETENTION go (a batch
        per sweep)."""
        assert self._store is not None
        with self._store.sessions.begin() as session:
            old = select(Run.id).where(Run.state.in_(TERMINAL_STATES), Run.created_at < cutoff)
            pruned = session.execute(
                delete(Run).where(Run.id.in_(old.limit(PRUNE_BATCH).scalar_subquery()))
            ).rowcount
        if pruned:
            log.info("beat: pruned %d runs older than %s", pruned, cutoff.isoformat())

    def _prune_audit(self, cutoff: datetime) -> None:
        """Decision 32: audit rows older than KALA_AUDIT_RETENTION go (a batch per sweep)."""
        assert self._store is not None
        with self._store.sessions.begin() as session:
            pruned = audit.prune(session, cutoff)
        if pruned:
            log.info("beat: pruned %d audit rows older than %s", pruned, cutoff.isoformat())

    def _rearm(self, now: datetime) -> None:
        assert self._store is not None
        rules = Rules(default_timezone=self._default_tz)
        with self._store.sessions.begin() as session:
            # A job with a run in flight is not unarmed: its run's finish decides whether it
            # is done (a used-up schedule's last run is in flight). Rows a worker is writing
            # are skipped, not waited for: the sweep waiting on a worker's job row while
            # holding others deadlocked with 200 runs finishing at once.
            unarmed = session.scalars(
                select(Job)
                .where(text(UNARMED), (Job.schedule != "") | Job.cron.is_not(None))
                .where(~select(JobLink.id).where(JobLink.child_id == Job.id).exists())
                .where(~RUN_IN_FLIGHT)
                .limit(BATCH)
                .with_for_update(skip_locked=True)
            ).all()
            for job in unarmed:
                try:
                    rearm(job, rules, now)
                    if job.next_run_at is not None:  # not a one-off or a finished schedule
                        log.info("beat: job %s had no next run; now %s", job.id,
                                 job.next_run_at)
                except ScheduleError as exc:
                    log.error(
                        "beat: job %s: unusable schedule %r (%s); disabled it",
                        job.id,
                        job.schedule,
                        exc,
                    )
