"""KalaScheduler: a Celery beat scheduler that dispatches Kala jobs from the SQL job store.

It replaces the base class's heap tick (which looks at every entry every tick) with an
indexed query for due rows, and sleeps until the earliest `next_run_at`, at most
`max_interval` (1 s) so API edits take effect within a second with no reload.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime, timedelta

from celery import Celery
from celery.beat import Scheduler
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError

from kala_celery.beat.claim import claim_batch, next_due
from kala_celery.celery_app import settings_of
from kala_celery.db import Store, store_for
from kala_celery.models import Run
from kala_celery.publish import CeleryPublisher

log = logging.getLogger(__name__)

BATCH = 500  # jobs claimed per transaction
SWEEP_EVERY = 5.0  # seconds between sweeps for runs left pending
PENDING_GRACE = timedelta(seconds=10)  # a run pending longer than this was not published
MAX_BACKOFF = 30.0


def utcnow() -> datetime:
    return datetime.now(UTC)


class KalaScheduler(Scheduler):
    max_interval = 1.0

    def __init__(self, app: Celery, *args: object, **kwargs: object) -> None:
        self._store: Store | None = None
        self._publisher: CeleryPublisher | None = None
        self._next_sweep = 0.0
        self._failures = 0
        super().__init__(app, *args, **kwargs)

    # -- the Scheduler contract -------------------------------------------------------

    def setup_schedule(self) -> None:
        settings = settings_of(self.app)
        self._store = store_for(settings.db_url)
        self._publisher = CeleryPublisher(self.app, self._store.sessions)
        self._default_tz = settings.timezone

    def tick(self, *args: object, **kwargs: object) -> float:
        """Claim and publish everything due; return seconds to sleep."""
        if self._store is None:
            self.setup_schedule()
        try:
            wait = self._tick(utcnow())
        except SQLAlchemyError:
            self._failures += 1
            backoff = min(MAX_BACKOFF, 0.5 * 2**self._failures)
            log.exception("beat: database unavailable; retrying in %.1f s", backoff)
            return backoff
        self._failures = 0
        return wait

    def sync(self) -> None:  # all state is in SQL, written as it happens
        pass

    def close(self) -> None:
        if self._store is not None:
            self._store.engine.dispose()

    @property
    def schedule(self) -> dict:
        return {}

    @property
    def info(self) -> str:
        url = self._store.engine.url.render_as_string(hide_password=True) if self._store else "?"
        return f"    . jobs from -> {url}"

    # -- dispatch ---------------------------------------------------------------------

    def _tick(self, now: datetime) -> float:
        assert self._store is not None and self._publisher is not None
        while True:  # drain everything due, a batch per transaction
            with self._store.sessions.begin() as session:
                runs = claim_batch(session, now, BATCH, self._default_tz)
            if runs:
                self._publisher([*runs])
            if len(runs) < BATCH:
                break
        if time.monotonic() >= self._next_sweep:
            self._sweep(now)
            self._next_sweep = time.monotonic() + SWEEP_EVERY
        with self._store.sessions() as session:
            upcoming = next_due(session, utcnow())
        if upcoming is None:
            return self.max_interval
        return max(0.0, min(self.max_interval, (upcoming - utcnow()).total_seconds()))

    def _sweep(self, now: datetime) -> None:
        """Publish runs left pending (a beat or API died between commit and publish, or the
        broker was down). Workers ignore a run already past `sent`, so a repeat is harmless."""
        assert self._store is not None and self._publisher is not None
        with self._store.sessions() as session:
            stale = session.scalars(
                select(Run.id)
                .where(
                    Run.state == "pending",
                    Run.root_run_id.is_(None),  # dependents go out with their root's chain
                    Run.created_at < now - PENDING_GRACE,
                )
                .order_by(Run.created_at)
                .limit(BATCH)
            ).all()
        if stale:
            sent = self._publisher.publish_ids(stale)
            log.info("beat: sweep published %d of %d pending runs", len(sent), len(stale))
