"""store/driver.py: the statements psycopg runs itself (a worker's claim and end on PostgreSQL)
convert values as SQLAlchemy does, and their errors go through SQLAlchemy's own handling: an
outage raises what DatabaseAway names, and a dropped connection takes the pool's older ones
with it, so the next claim runs on a fresh connection instead of failing once per pooled
one."""

from __future__ import annotations

import threading
from contextlib import ExitStack
from datetime import UTC, datetime

import pytest
from sqlalchemy import bindparam, func, literal, literal_column, select, text, update
from sqlalchemy.exc import DBAPIError

from kala_celery.runs.attempts import NotYet, claim
from kala_celery.runs.heartbeats import worker_id
from kala_celery.store.db import DatabaseAway, autocommit_engine, make_engine, store_for
from kala_celery.store.driver import DriverStatement
from kala_celery.store.tables import Job, UTCDateTime, utcnow
from tests.test_runner_sql import FOREVER, create, record


def test_a_dropped_connection_is_an_outage_and_the_next_claim_reconnects(pg_url: str) -> None:
    store = store_for(pg_url, pre_ping=False, prepared=True)  # a worker's engine
    try:
        job_id = create(store, schedule=FOREVER)
        run_id = record(store, job_id)
        alone = autocommit_engine(store.engine)  # the claim's pool (store/driver.py)
        with ExitStack() as held:  # two pooled connections, both cut by the server
            pids = [held.enter_context(alone.connect()).exec_driver_sql(
                "SELECT pg_backend_pid()").scalar() for _ in range(2)]
        admin = make_engine(pg_url)  # another process's connection ends them
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM unnest(%(p)s) pid",
                                 {"p": pids})
        admin.dispose()
        with pytest.raises(DatabaseAway) as caught:
            claim(store.engine, run_id, worker_id("host"), "host", utcnow())
        assert caught.value.connection_invalidated
        claimed = claim(store.engine, run_id, worker_id("host"), "host", utcnow())
        assert claimed is not None and not isinstance(claimed, NotYet)
        run, job, _ = claimed
        assert (run.id, run.attempts, job.id) == (run_id, 1, job_id)
    finally:
        store.engine.dispose()


def test_a_failed_statement_raises_sqlalchemys_error_and_keeps_the_connection(db_url: str
                                                                             ) -> None:
    store = store_for(db_url, pre_ping=False, prepared=True)
    missing = DriverStatement(select(literal_column("x")).select_from(text("no_such_table")),
                              store.engine.dialect)
    one = DriverStatement(select(literal(1)), store.engine.dialect)
    try:
        with store.engine.connect() as conn:
            with pytest.raises(DBAPIError) as caught:
                missing.first(conn, {})
            assert not caught.value.connection_invalidated
            conn.rollback()
            assert one.first(conn, {}) == (1,)
    finally:
        store.engine.dispose()


def test_values_convert_as_through_sqlalchemy(db_url: str) -> None:
    """An aware datetime goes in as the column's naive UTC and comes out aware; a value the
    statement binds itself (here 7) is bound once; a parameter it lacks is ignored; `count`
    is the rows an UPDATE changed."""
    store = store_for(db_url, pre_ping=False, prepared=True)
    statement = select(bindparam("p_at", type_=UTCDateTime), literal(7),
                       literal_column("'x'").label("plain"))
    at = datetime(2026, 12, 7, 14, 30, 1, 250000, tzinfo=UTC)
    job_id = create(store, schedule=FOREVER)
    rename = update(Job).where(Job.id == bindparam("p_job")).values(name=bindparam("p_name"))
    try:
        with store.engine.begin() as conn:
            through = DriverStatement(statement, conn.dialect)
            row = through.first(conn, {"p_at": at, "p_other": 1})
            assert row == tuple(conn.execute(statement, {"p_at": at}).one())
            assert row == (at, 7, "x")
            assert row[0].tzinfo is UTC
            renamed = DriverStatement(rename, conn.dialect)
            assert renamed.count(conn, {"p_job": job_id, "p_name": "renamed"}) == 1
            assert renamed.count(conn, {"p_job": "none", "p_name": "x"}) == 0
            assert renamed.first(conn, {"p_job": job_id, "p_name": "renamed"}) is None
        with store.sessions() as session:
            assert session.get(Job, job_id).name == "renamed"
    finally:
        store.engine.dispose()


def test_a_statement_built_later_on_a_driven_one_keeps_its_columns(db_url: str) -> None:
    """SQLAlchemy memoizes an UPDATE's (empty) RETURNING columns on the statement asked; a
    `.returning()` built on it afterwards inherited them, and runs/attempts builds its
    one-statement ends on the UPDATE the transaction's end runs."""
    engine = make_engine(db_url)
    base = update(Job).where(Job.id == bindparam("p_job")).values(name="x")
    try:
        DriverStatement(base, engine.dialect)
        built = base.returning(Job.id).cte("built")
        assert list(built.c.keys()) == ["id"]
    finally:
        engine.dispose()


def test_a_statement_begins_the_connections_transaction_as_execute_does(db_url: str) -> None:
    """Outside a transaction the driver's statement autobegins one, as Connection.execute
    does: commit() keeps its change, closing without it undoes it."""
    store = store_for(db_url, pre_ping=False, prepared=True)
    job_id = create(store, schedule=FOREVER)
    rename = update(Job).where(Job.id == bindparam("p_job")).values(name=bindparam("p_name"))
    try:
        with store.engine.connect() as conn:
            DriverStatement(rename, conn.dialect).count(conn, {"p_job": job_id, "p_name": "a"})
            assert conn.in_transaction()
        with store.sessions() as session:
            assert session.get(Job, job_id).name == "j"
        with store.engine.connect() as conn:
            DriverStatement(rename, conn.dialect).count(conn, {"p_job": job_id, "p_name": "b"})
            conn.commit()
        with store.sessions() as session:
            assert session.get(Job, job_id).name == "b"
    finally:
        store.engine.dispose()


def test_a_statement_run_alone_commits_on_a_pool_of_its_own(pg_url: str) -> None:
    """Given the engine, a statement runs alone, in autocommit, on a connection of the
    engine's sibling pool (how a worker's claim and end run): its change is kept without a
    commit, the engine's own pool is not touched, and each thread holds one connection for
    all its statements; an error is SQLAlchemy's and the connection goes back."""
    store = store_for(pg_url, pre_ping=False, prepared=True)
    job_id = create(store, schedule=FOREVER)
    rename = update(Job).where(Job.id == bindparam("p_job")).values(name=bindparam("p_name"))
    renaming = DriverStatement(rename, store.engine.dialect)
    backend = DriverStatement(select(func.pg_backend_pid()), store.engine.dialect)
    missing = DriverStatement(select(literal_column("x")).select_from(text("no_such_table")),
                              store.engine.dialect)
    try:
        alone = autocommit_engine(store.engine)
        assert autocommit_engine(store.engine) is alone
        opened = store.engine.pool.checkedin() + store.engine.pool.checkedout()
        assert renaming.count(store.engine, {"p_job": job_id, "p_name": "alone"}) == 1
        with store.sessions() as session:
            assert session.get(Job, job_id).name == "alone"
        # the thread's statements run on one connection, which it holds between them
        mine = {backend.first(store.engine, {})[0] for _ in range(3)}
        assert len(mine) == 1 and alone.pool.checkedout() == 1
        other: list[int] = []  # another thread holds one of its own
        thread = threading.Thread(target=lambda: other.append(
            backend.first(store.engine, {})[0]))
        thread.start()
        thread.join(10)
        assert other and other[0] not in mine
        # the other thread's connection went back to the pool when the thread ended
        assert alone.pool.checkedout() == 1 and alone.pool.checkedin() == 1
        with pytest.raises(DBAPIError) as caught:
            missing.first(store.engine, {})
        assert not caught.value.connection_invalidated
        assert alone.pool.checkedout() == 0 and alone.pool.checkedin() == 2
        assert backend.first(store.engine, {})[0] in {*mine, *other}  # a good one, reused
        assert store.engine.pool.checkedin() + store.engine.pool.checkedout() == opened
        store.engine.dispose()  # the sibling goes with it; the thread takes a new connection
        assert alone.pool.checkedin() == 0
        assert renaming.count(store.engine, {"p_job": job_id, "p_name": "again"}) == 1
        assert alone.pool.checkedout() == 1
    finally:
        store.engine.dispose()


def test_after_a_dropped_connection_every_threads_next_statement_reconnects(pg_url: str
                                                                          ) -> None:
    """Each thread holds its connection for statements run alone. When one statement finds
    its connection dropped (the server restarted), the others' held connections are just as
    dead: each thread's next statement runs on a new connection instead of failing too, as a
    checkout from the pool would give it."""
    store = store_for(pg_url, pre_ping=False, prepared=True)
    backend = DriverStatement(select(func.pg_backend_pid()), store.engine.dialect)
    asked, answered = threading.Event(), threading.Event()
    pids: list[int] = []
    errors: list[BaseException] = []

    def other_thread() -> None:  # holds a connection, then runs a statement when asked
        try:
            pids.append(backend.first(store.engine, {})[0])
            answered.set()
            assert asked.wait(30)
            pids.append(backend.first(store.engine, {})[0])
        except BaseException as exc:
            errors.append(exc)
        finally:
            answered.set()

    thread = threading.Thread(target=other_thread)
    try:
        mine = backend.first(store.engine, {})[0]
        thread.start()
        assert answered.wait(10) and len(pids) == 1 and pids[0] != mine
        answered.clear()
        admin = make_engine(pg_url)  # another process's connection ends both
        with admin.connect() as conn:
            conn.exec_driver_sql("SELECT pg_terminate_backend(pid) FROM unnest(%(p)s) pid",
                                 {"p": [mine, pids[0]]})
        admin.dispose()
        with pytest.raises(DatabaseAway) as caught:
            backend.first(store.engine, {})
        assert caught.value.connection_invalidated
        asked.set()  # the other thread's connection is dead too: it is let go, not used
        thread.join(10)
        assert not errors, errors
        assert len(pids) == 2 and pids[1] not in (mine, pids[0])
        assert backend.first(store.engine, {})[0] not in (mine, *pids)  # mine is new too
    finally:
        asked.set()
        thread.join(10)
        store.engine.dispose()


def test_integers_go_as_their_columns_types_so_a_statement_is_prepared_once(pg_url: str
                                                                             ) -> None:
    """psycopg sends a Python int as the smallest type that holds it, and prepares a statement
    once per query and parameter types: a run's end (its duration 0, then in nanoseconds)
    was prepared again, and planned for its parameters five times over, for each size. The
    driver sends each integer as its column's type: one prepared statement, whatever the
    values (a None still goes as psycopg sends it, a NULL of no type)."""
    from sqlalchemy import BigInteger, Integer

    from kala_celery.store.db import held_connection
    from kala_celery.store.tables import Run

    store = store_for(pg_url, pre_ping=False, prepared=True)
    finding = DriverStatement(
        select(Run.id).where(Run.duration_ns == bindparam("p_ns", type_=BigInteger),
                             Run.attempts == bindparam("p_attempts", type_=Integer)),
        store.engine.dialect)
    try:
        for ns, attempts in ((0, 0), (70_000, 1), (2**40, 40_000), (5, 2**31 - 1)):
            assert finding.first(store.engine, {"p_ns": ns, "p_attempts": attempts}) is None
        held = held_connection(autocommit_engine(store.engine)).driver_connection
        prepared = held.execute(
            "SELECT parameter_types::text FROM pg_prepared_statements "
            "WHERE statement LIKE 'SELECT runs.id%'").fetchall()
        assert prepared == [("{bigint,integer}",)]
    finally:
        store.engine.dispose()
