"""The one clock (docs/design.md Decision 27): every "now" that decides something — what is
due, a claim, a heartbeat's age, the sweep's cut-offs, a run's times, a manual start, a
preview — is the database's time, so beats and workers on machines whose clocks disagree
still agree on it.

A process reads the database's time (`clock_timestamp()` on PostgreSQL) when it binds its
store, and again at most every RESYNC seconds (its heartbeat or tick does it, or the first
`now()` after that); between readings it carries that time forward on the local monotonic
clock, which measures intervals and is never set. A reading costs one round trip, so a run
pays nothing for it; its error is half that round trip plus the monotonic clock's drift
since the last reading (microseconds a second). A reading whose round trip took over
MOST_ROUND_TRIP is not used: a query sent into a network partition reaches the server when
the link heals, and would set the clock ahead by half the outage. The local wall clock is
only compared with it: an offset over OFFSET_WARNING is logged once, with its size.

On the embedded SQLite default the database is a file on this host: its clock is the host's,
and `now()` is the wall clock.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, text

log = logging.getLogger(__name__)

RESYNC = 15.0  # seconds between readings of the database's time
MOST_ROUND_TRIP = 0.5  # seconds: a slower reading is not used (its error is up to half that)
OFFSET_WARNING = timedelta(seconds=2)


class DatabaseClock:
    """The database's time, as this process knows it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._engine: Engine | None = None
        self._pid = 0  # the process that bound the engine (a forked child binds its own)
        self._base: datetime | None = None  # the database's time at monotonic _at
        self._at = 0.0
        self._tried = float("-inf")  # monotonic time of the last reading tried
        self._warned = False

    def bind(self, engine: Engine) -> None:
        """Read `engine`'s time from now on (a PostgreSQL engine; SQLite's is the host's)."""
        if engine.dialect.name == "sqlite":
            return
        with self._lock:
            self._engine, self._pid, self._tried = engine, os.getpid(), float("-inf")
        self.sync()

    def sync(self) -> bool:
        """Read the database's time now; False when it cannot be read (the clock goes on
        from the last reading, or is the local one if there was none)."""
        engine = self._engine
        if engine is None or self._pid != os.getpid():  # never a parent's pooled connection
            return False
        self._tried = time.monotonic()
        try:
            # autocommit: no ROLLBACK when the connection goes back to the pool (psycopg
            # forgets a connection's prepared statements at every ROLLBACK)
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                before = time.monotonic()
                wall = datetime.now(UTC)
                value = conn.scalar(text("SELECT clock_timestamp()"))
                after = time.monotonic()
        except Exception as exc:  # an outage: the next reading is RESYNC away
            log.debug("the database's time was not read: %s", exc)
            return False
        if not isinstance(value, datetime):
            return False
        if after - before > MOST_ROUND_TRIP:
            # The query may have waited anywhere in that time (sent into a partition, it
            # reaches the server when the link heals): the reading could be off by up to the
            # whole of it. The last good reading goes on instead.
            log.debug("the database's time took %.1f s to read; not used", after - before)
            return False
        value = value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
        with self._lock:
            if engine is not self._engine:
                return False
            self._base, self._at = value, (before + after) / 2
        self._check(value - wall - timedelta(seconds=(after - before) / 2))
        return True

    def _check(self, offset: timedelta) -> None:
        if abs(offset) > OFFSET_WARNING and not self._warned:
            self._warned = True
            log.warning(
                "this host's clock is %+.1f s off the database's; kala-celery uses the "
                "database's time for everything it decides (Decision 27)",
                -offset.total_seconds())

    def now(self) -> datetime:
        """The database's time now, as an aware UTC datetime."""
        if self._engine is None:
            return datetime.now(UTC)
        mono = time.monotonic()
        if mono - self._tried > RESYNC:
            with self._lock:  # one thread reads; the others go on from the last reading
                stale = mono - self._tried > RESYNC
                if stale:
                    self._tried = mono
            if stale:
                self.sync()
                mono = time.monotonic()
        base, at = self._base, self._at
        if base is None:  # never read: the local clock until the database answers
            return datetime.now(UTC)
        return base + timedelta(seconds=mono - at)

    def offset(self) -> timedelta | None:
        """The database's time minus this host's (None before the first reading)."""
        if self._base is None:
            return None
        return self.now() - datetime.now(UTC)


def read(conn: Connection) -> datetime:
    """The database's time, read on `conn` (a one-off process such as `health`)."""
    if conn.dialect.name == "sqlite":
        return datetime.now(UTC)
    value = conn.scalar(text("SELECT clock_timestamp()"))
    return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)


_clock = DatabaseClock()


def bind(engine: Engine) -> None:
    """This process's decisions read `engine`'s time from now on."""
    _clock.bind(engine)


def sync() -> bool:
    """Read the database's time again (a heartbeat, a beat's tick)."""
    return _clock.sync()


def now() -> datetime:
    """The database's time now (Decision 27)."""
    return _clock.now()
