"""Engine and session factory for the job store; checks (or creates) the schema on first use."""

from __future__ import annotations

import logging
import os
import select
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool, PoolProxiedConnection

from kala_celery.store import clock, schema

# What a database outage raises (refused, restarting, connection dropped, SQLite busy past
# its timeout): worth waiting out and trying again, unlike a wrong statement.
DatabaseAway = (OperationalError, InterfaceError)
log = logging.getLogger(__name__)


BUSY_TIMEOUT = 30.0  # seconds a SQLite statement waits for another process's lock


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT * 1000)}")
    _use_wal(cursor)  # API, beat and workers share the file
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _use_wal(cursor: sqlite3.Cursor) -> None:
    """Put the file in WAL mode (it stays so). On a new file, processes starting together
    (serve's API, beat and worker) race to switch it, and the switch answers "database is
    locked" at once, without waiting in the busy handler: so try again until the timeout."""
    deadline = time.monotonic() + BUSY_TIMEOUT
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # an in-memory database stays "memory"
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.01)


def sqlite_connection(path: str) -> sqlite3.Connection:
    """A DB-API connection to the SQLite file at `path` with the job store's pragmas (for an
    engine made elsewhere, such as the embedded broker's, via create_engine's `creator`)."""
    connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT, check_same_thread=False)
    _sqlite_pragmas(connection, None)
    return connection


POOL_SIZE = 5  # SQLAlchemy's default: connections an engine keeps open
_threads = 0  # tasks this process runs at once in threads (a threads-pool worker); see below


def size_pools_for(threads: int) -> None:
    """This process runs up to `threads` runs at once in threads (`celery worker --pool
    threads -c N`): its engines keep that many connections open. With SQLAlchemy's default
    5 (+ 10 overflow), 32 threads queued for a connection, and every connection past the 5th
    was opened for one checkout and closed after it: a new PostgreSQL backend per claim."""
    global _threads
    _threads = threads


def make_engine(url: str, *, pre_ping: bool = True, prepared: bool = False) -> Engine:
    """An engine for `url`; SQLite gets WAL, foreign keys and a busy timeout.

    `pre_ping` (PostgreSQL) checks every pooled connection at its checkout, without a round
    trip (`_dropped_at_checkout`), so a request never fails on a connection the server
    dropped. The beat and the workers turn it off: a failed tick, claim or finish (the pool
    then drops every connection older than the failure) is retried as in an outage.

    `prepared` (a worker's engine, on PostgreSQL): psycopg prepares each statement at its
    first execution on a connection instead of its sixth; a worker repeats the same few
    statements, and a connection's first runs then skip four parses and plans each."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        if parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT},
                               pool_size=_pool_size())
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    connect_args = {"prepare_threshold": 0} if prepared else {}
    engine = create_engine(url, pool_size=_pool_size(), connect_args=connect_args)
    if pre_ping:
        event.listen(engine, "checkout", _dropped_at_checkout)
    return engine


def _dropped_at_checkout(dbapi_connection, _record, _proxy) -> None:
    """Refuse a pooled connection the server dropped; the pool then connects anew
    (SQLAlchemy's answer to DisconnectionError raised at checkout).

    An idle connection has nothing to read: the server speaks only when asked. What makes
    its socket readable is the server going away (the end of the stream, after a "terminating
    connection" notice when it had time to send one): a restart, a terminated backend, an
    idle timeout. So one poll of the socket, a system call, tells what SQLAlchemy's pre-ping
    learns from a round trip to the server, which cost a create on PostgreSQL a tenth of
    its time (docs/design.md Decision 36). A server that vanished without closing (a cut
    network) is not seen by either: the statement then fails, as it would after a ping that
    passed a moment before."""
    if dbapi_connection.closed or dbapi_connection.broken:
        raise DisconnectionError("the connection is closed")
    try:
        readable, _, _ = select.select([dbapi_connection.pgconn.socket], [], [], 0)
    except Exception as exc:  # its socket is gone
        raise DisconnectionError(str(exc)) from exc
    if readable:
        raise DisconnectionError("the server closed the connection")


_siblings: dict[Engine, Engine] = {}
_siblings_lock = threading.Lock()


def autocommit_engine(engine: Engine) -> Engine:
    """`engine`'s sibling for statements run alone, outside a transaction block (a worker's
    claim and end on PostgreSQL, store/driver.py): the same URL and pool size, every
    connection in autocommit for good and returned to its pool without a rollback. Through
    `engine` each such statement set autocommit on its connection and reset it after, in
    SQLAlchemy and psycopg, at about half the CPU of the statement's own client work
    (docs/design.md Decision 36). Disposed with `engine`; made on first use, so a process
    that runs no such statement opens no connection for it."""
    sibling = _siblings.get(engine)
    if sibling is not None:
        return sibling
    if engine.dialect.name != "postgresql":  # SQLite's writes take turns (begin_write)
        raise ValueError("statements run alone on PostgreSQL only")
    with _siblings_lock:
        sibling = _siblings.get(engine)
        if sibling is None:
            sibling = create_engine(
                engine.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None,
                pool_size=engine.pool.size(),  # type: ignore[attr-defined]  # QueuePool
                pool_pre_ping=False)
            event.listen(engine, "engine_disposed", lambda _engine: sibling.dispose())
            event.listen(sibling, "invalidate", _invalidated(sibling))
            _siblings[engine] = sibling
    return sibling


# Per sibling, how many of its connections were invalidated (a dropped connection
# invalidates the pool's older ones too): a held connection from before one is let go.
_invalidations: dict[Engine, int] = {}


def _invalidated(sibling: Engine) -> Callable[..., None]:
    def count(*_args: object) -> None:
        _invalidations[sibling] = _invalidations.get(sibling, 0) + 1

    return count


class _Held:
    """A connection a thread holds out of an autocommit sibling's pool between its
    statements run alone; back to the pool when the thread ends (this object goes)."""

    __slots__ = ("invalidations", "pid", "pool", "pooled")

    def __init__(self, sibling: Engine, pooled: PoolProxiedConnection) -> None:
        self.pid = os.getpid()
        self.pool = sibling.pool
        self.invalidations = _invalidations.get(sibling, 0)
        self.pooled = pooled

    def usable(self, sibling: Engine) -> bool:
        """Still this process's, from the sibling's pool as it is, and nothing invalidated
        since it was checked out: after a dropped connection every thread's next statement
        runs on a connection the pool makes anew, as a checkout would give it (the pool
        replaces the connections older than the drop), instead of failing once on each."""
        return (self.pid == os.getpid() and self.pool is sibling.pool
                and self.invalidations == _invalidations.get(sibling, 0)
                and self.pooled.is_valid)

    def close(self) -> None:
        if self.pid != os.getpid():  # a parent's, inherited by fork: its socket is the
            _inherited.append(self)  # parent's, and closing it here would end its session
            return
        with suppress(Exception):  # a connection already gone
            self.pooled.close()

    def __del__(self) -> None:
        self.close()


_held = threading.local()  # .connections: {sibling: _Held}
_inherited: list[_Held] = []


def held_connection(sibling: Engine) -> PoolProxiedConnection:
    """This thread's DB-API connection of `sibling` (an `autocommit_engine`), checked out of
    its pool at the thread's first statement run alone and held for the next ones: a
    checkout and return through SQLAlchemy's pool for each of a run's claim and end were a
    fifth of their CPU in the worker (docs/design.md Decision 36). A connection that was
    invalidated, or checked out before another was, or whose pool was disposed, is let go
    and another checked out."""
    connections: dict[Engine, _Held] | None = getattr(_held, "connections", None)
    if connections is None:
        connections = _held.connections = {}
    held = connections.get(sibling)
    if held is not None:
        if held.usable(sibling):
            return held.pooled
        del connections[sibling]
        held.close()
    pooled = sibling.raw_connection()
    connections[sibling] = _Held(sibling, pooled)
    return pooled


def let_go(sibling: Engine) -> None:
    """Return this thread's held connection of `sibling` to its pool (after an error: the
    next statement checks out another, or this one if it is still good)."""
    held = getattr(_held, "connections", {}).pop(sibling, None)
    if held is not None:
        held.close()


def _pool_size() -> int:
    return max(POOL_SIZE, _threads + 2)  # + the heartbeat's and a follow-up publish's


_write_locks: dict[str, threading.Lock] = {}


@contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """`engine.begin()` for a transaction that writes. On SQLite, the threads of one process
    take turns on a lock first: SQLite has one writer at a time, and a writer that finds the
    file locked sleeps in SQLite's busy handler (1, 2, 5, 10 … 100 ms), so 32 worker threads
    claiming runs at once spent most of a burst asleep there. Other processes (the beat, the
    API) still meet the busy handler, rarely."""
    lock = nullcontext()
    if engine.dialect.name == "sqlite":
        key = str(engine.url)
        lock = _write_locks.get(key) or _write_locks.setdefault(key, threading.Lock())
    with lock, engine.begin() as conn:
        yield conn


def probe_engine(url: str, timeout: float = 3.0) -> Engine:
    """An engine for health checks: a new connection per use (no pool, so a connection the
    server dropped is never reused) that gives up connecting after `timeout` seconds."""
    backend = make_url(url).get_backend_name()
    connect_args: dict[str, object] = {}
    if backend == "postgresql":
        connect_args = {"connect_timeout": max(1, round(timeout))}
    elif backend == "sqlite":
        connect_args = {"timeout": timeout}
    return create_engine(url, poolclass=NullPool, connect_args=connect_args)


def init_schema(engine: Engine) -> None:
    """Bring the schema to head, or refuse (kala_celery/store/schema.py): an empty database is
    created at head, SQLite is upgraded, any other database behind head raises
    schema.SchemaBehind naming `kala-celery db upgrade`. Every process does this at start;
    on PostgreSQL they take turns under an advisory lock."""
    schema.ensure(engine)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


def engine_of(sessions: sessionmaker[Session]) -> Engine:
    """The Engine a session factory is bound to."""
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError("expected a sessionmaker bound to an Engine")
    return bind


def read_sessions(engine: Engine) -> sessionmaker[Session]:
    """Sessions for single reads: autocommit, so no BEGIN/ROLLBACK round trips around them."""
    return sessionmaker(engine.execution_options(isolation_level="AUTOCOMMIT"))


@dataclass(frozen=True)
class Store:
    engine: Engine
    sessions: sessionmaker[Session]


_stores: dict[tuple[int, str, bool, bool], Store] = {}


def store_for(url: str, *, pre_ping: bool = True, prepared: bool = False) -> Store:
    """One engine per process and URL (a forked worker child gets its own), schema ensured;
    `pre_ping` and `prepared` as in make_engine."""
    key = (os.getpid(), url, pre_ping, prepared)
    store = _stores.get(key)
    if store is None:
        engine = make_engine(url, pre_ping=pre_ping, prepared=prepared)
        init_schema(engine)
        clock.bind(engine)  # this process's "now": the database's (docs/design.md Decision 27)
        store = _stores[key] = Store(engine, make_sessionmaker(engine))
    return store


def check_at_start(url: str, what: str) -> None:
    """For a beat or worker starting: bring the schema to head, or exit naming the command.
    A database that is away is waited for as before (the process connects when it is back)."""
    engine = make_engine(url)
    try:
        schema.ensure(engine)
    except DatabaseAway as exc:
        log.warning(
            "%s: the job store is unavailable (%s); its schema is checked when it is back",
            what, exc)
    except schema.SchemaError as exc:
        log.critical("%s refuses to start: %s", what, exc)
        raise SystemExit(1) from None
    finally:
        engine.dispose()
