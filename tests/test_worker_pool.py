"""A threads-pool worker keeps a database connection open per thread (db.size_pools_for)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kala_celery.celery_app import make_celery
from kala_celery.config import Settings
from kala_celery.store import db

PG = "postgresql+psycopg://kala@127.0.0.1:1/kala"  # never connected to: pools open lazily


@pytest.fixture(autouse=True)
def _unsized():
    yield
    db.size_pools_for(0)


def test_engines_keep_sqlalchemys_default_pool_outside_a_threads_worker() -> None:
    assert db.make_engine(PG).pool.size() == db.POOL_SIZE


@pytest.mark.parametrize(("pool", "concurrency", "size"),
                         [("threads", 32, 34), ("threads", 2, db.POOL_SIZE),
                          ("prefork", 32, db.POOL_SIZE), ("solo", 1, db.POOL_SIZE)])
def test_a_worker_sizes_the_pool_for_its_threads(tmp_path: Path, pool: str, concurrency: int,
                                                  size: int) -> None:
    settings = Settings(data_dir=tmp_path)
    app = make_celery(settings)
    app.WorkController(pool_cls=pool, concurrency=concurrency)  # sends worker_init
    assert db.make_engine(PG).pool.size() == size


def test_a_sized_worker_sizes_its_sqlite_engine_too(tmp_path: Path) -> None:
    db.size_pools_for(32)
    engine = db.make_engine(f"sqlite:///{tmp_path / 'kala.db'}")
    try:
        assert engine.pool.size() == 34
    finally:
        engine.dispose()


def test_sqlite_writes_of_one_process_take_turns(tmp_path: Path) -> None:
    """db.begin_write holds the file's lock in the process for the whole transaction (so the
    threads queue on it, not in SQLite's busy handler); other databases get no lock."""
    url = f"sqlite:///{tmp_path / 'kala.db'}"
    engine, other = db.make_engine(url), db.make_engine(url)  # two engines, one file
    try:
        with db.begin_write(engine) as conn:
            conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")
            lock = db._write_locks[url]
            assert not lock.acquire(blocking=False)  # a second writer here would wait
        assert lock.acquire(blocking=False)  # released with the transaction
        lock.release()
        with db.begin_write(other) as conn:  # the same file from another engine: same lock
            assert db._write_locks[url].locked()
            conn.exec_driver_sql("INSERT INTO t VALUES (1)")
        with pytest.raises(RuntimeError), db.begin_write(engine) as conn:
            conn.exec_driver_sql("INSERT INTO t VALUES (2)")
            raise RuntimeError("a failed transaction")
        assert not lock.locked()
        with engine.connect() as conn:
            assert conn.exec_driver_sql("SELECT x FROM t").scalars().all() == [1]
    finally:
        engine.dispose()
        other.dispose()


def test_a_worker_opens_its_connections_warm_and_changes_nothing(db_url: str) -> None:
    """runs/warmup.warm: on PostgreSQL the connections the worker's claims and ends run on
    (the engine's autocommit sibling, store/db.py) are open at its start, each with the claim
    and the end prepared and past the executions PostgreSQL plans for their parameters (it
    keeps a generic plan), after the triggers of a run's claim and end fired in a transaction
    rolled back; nothing changed a row, counter or store version. On SQLite nothing is
    opened."""
    from sqlalchemy import select, text

    from kala_celery.runs.warmup import PLANNED_EXECUTIONS, _fire_triggers, warm
    from kala_celery.store import version
    from kala_celery.store.tables import Job, MetricCount, Run, utcnow
    from tests.test_runner_sql import create, record

    db.size_pools_for(3)
    store = db.store_for(db_url, pre_ping=False, prepared=True)
    job_id = create(store, name="warm")
    record(store, job_id)

    def state() -> tuple:
        with store.sessions() as session:
            return (session.scalars(select(Run.state)).all(),
                    session.scalars(select(Job.last_attempted_run)).all(),
                    sorted(session.execute(select(MetricCount.__table__)).tuples().all()),
                    version.read(session))

    before = state()
    store.engine.dispose()
    warm(store.engine, 3, utcnow())
    if store.engine.dialect.name == "sqlite":
        assert store.engine.pool.checkedin() == 0
    else:
        alone = db.autocommit_engine(store.engine)
        assert alone.pool.checkedin() == 3
        assert store.engine.pool.checkedin() == 0  # the engine's own pool opens nothing
        # in autocommit: psycopg forgets a connection's prepared statements at a ROLLBACK
        connections = [alone.connect() for _ in range(3)]
        try:
            for conn in connections:
                prepared = conn.execute(text(
                    "SELECT statement, generic_plans FROM pg_prepared_statements")).all()
                starts = {statement.split()[1] for statement, _ in prepared}
                assert {"claimed", "ended"} <= starts  # WITH claimed AS, WITH ended AS
                assert all(generic >= 1 for _, generic in prepared), prepared
            # in its own transaction: each run claimed and ended, its job counted done
            reached = _fire_triggers(connections[0], utcnow())
            assert reached == [("success", True)] * (PLANNED_EXECUTIONS + 1)
        finally:
            for conn in connections:
                conn.close()
    assert state() == before


def test_a_threads_worker_opens_a_warm_connection_for_each_thread(
        pg_url: str, redis_url: str, tmp_path: Path) -> None:
    """The threads pool runs its runs in the worker's own process: at its start it warms one
    connection per thread (runs/warmup.warm), each ending on the end's statement. It once
    warmed one (the concurrency was asked of Celery's Consumer, which has none), and the first
    burst after a start opened a new backend for each of its threads."""
    import sys

    import psycopg

    from tests.processes import Command, wait_for

    env = {"KALA_DATABASE_URL": pg_url, "KALA_BROKER_URL": redis_url,
           "KALA_DATA_DIR": str(tmp_path)}
    worker = Command([sys.executable, "-m", "celery", "-A", "kala_celery", "worker", "-l",
                      "info", "-P", "threads", "-c", "6", "--without-gossip",
                      "--without-mingle"], tmp_path / "worker.log", env)
    libpq_url = pg_url.replace("postgresql+psycopg://", "postgresql://")
    database = pg_url.rsplit("/", 1)[1]

    def warmed() -> int:
        with psycopg.connect(libpq_url, autocommit=True) as conn:
            return conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND state = 'idle' "
                "AND query LIKE 'WITH ended AS%%'", (database,)).fetchone()[0]

    try:
        wait_for(lambda: " ready." in worker.output() or worker.proc.poll() is not None, 60,
                 "celery worker ready")
        assert worker.proc.poll() is None, worker.output()
        wait_for(lambda: warmed() >= 6 or worker.proc.poll() is not None, 30,
                 "six warm connections")
        assert warmed() == 6, worker.output()
    finally:
        worker.kill()
