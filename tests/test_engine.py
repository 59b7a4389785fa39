"""store/db.py's engines on PostgreSQL: the API's engine checks a pooled connection at its
checkout without asking the server anything, and still never hands out one the server
ended (a restart, a terminated backend): the pool connects anew instead."""

from __future__ import annotations

import time

from sqlalchemy import Engine

from kala_celery.store.db import make_engine


def _backend_pid(engine: Engine) -> int:
    with engine.connect() as conn:
        return conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()


def _activity(admin: Engine, pid: int) -> object:
    """The backend's last change of state (None when it is gone)."""
    with admin.connect() as conn:
        return conn.exec_driver_sql(
            "SELECT state_change FROM pg_stat_activity WHERE pid = %(p)s", {"p": pid}
        ).scalar()


def test_a_checkout_asks_the_server_nothing(pg_url: str) -> None:
    """SQLAlchemy's pre-ping sent a statement at every checkout (the backend's state changed);
    the check at checkout is local (its state stays as the last statement left it)."""
    engine, admin = make_engine(pg_url), make_engine(pg_url, pre_ping=False)
    try:
        pid = _backend_pid(engine)
        before = _activity(admin, pid)
        assert before is not None
        with engine.connect() as conn:  # checked out, nothing executed on it
            assert conn.connection.dbapi_connection.pgconn.backend_pid == pid
        assert _activity(admin, pid) == before
    finally:
        engine.dispose()
        admin.dispose()


def test_a_connection_the_server_ended_is_replaced_at_checkout(pg_url: str) -> None:
    engine, admin = make_engine(pg_url), make_engine(pg_url, pre_ping=False)
    try:
        pid = _backend_pid(engine)  # back in the pool, idle
        with admin.connect() as conn:
            assert conn.exec_driver_sql("SELECT pg_terminate_backend(%(p)s)", {"p": pid}).scalar()
        deadline = time.monotonic() + 10
        while _has_backend(admin, pid):
            assert time.monotonic() < deadline, "the terminated backend did not exit"
            time.sleep(0.01)
        with engine.connect() as conn:  # no error: the pool connected anew
            assert conn.exec_driver_sql("SELECT 1").scalar_one() == 1
            assert conn.connection.dbapi_connection.pgconn.backend_pid != pid
    finally:
        engine.dispose()
        admin.dispose()


def _has_backend(admin: Engine, pid: int) -> bool:
    with admin.connect() as conn:
        return bool(conn.exec_driver_sql(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %(p)s", {"p": pid}).scalar())
