"""The embedded default's speed knobs (issue 16): the SQL broker's poll, its SQLite pragmas, and
`serve`'s worker pool. Settings parsing is pure and tested exhaustively; the broker file is a
real SQLite file written through a real Celery publish."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from kala_celery import broker
from kala_celery.celery_app import SQLBrokerPolling, make_celery
from kala_celery.config import THREAD_SLOTS, ConfigError, Settings


def test_defaults_pick_threads_on_every_broker() -> None:
    embedded = Settings()
    assert embedded.embedded_broker
    assert (embedded.serve_pool, embedded.serve_concurrency) == ("threads", THREAD_SLOTS)
    redis = Settings(broker_url="redis://127.0.0.1:6379/0")
    assert not redis.embedded_broker
    assert (redis.serve_pool, redis.serve_concurrency) == ("threads", THREAD_SLOTS)
    assert embedded.broker_poll_interval == 0.25


@pytest.mark.parametrize(
    ("env", "pool", "slots"),
    [
        ({"KALA_WORKER_POOL": "prefork"}, "prefork", None),
        ({"KALA_WORKER_POOL": " Threads "}, "threads", THREAD_SLOTS),
        ({"KALA_WORKER_POOL": ""}, "threads", THREAD_SLOTS),
        ({"KALA_WORKER_CONCURRENCY": "4"}, "threads", 4),
        ({"KALA_WORKER_POOL": "prefork", "KALA_WORKER_CONCURRENCY": "3"}, "prefork", 3),
        ({"KALA_WORKER_CONCURRENCY": "0"}, "threads", THREAD_SLOTS),
    ],
)
def test_pool_settings_from_the_environment(env, pool, slots) -> None:
    settings = Settings.from_env(env)
    assert (settings.serve_pool, settings.serve_concurrency) == (pool, slots)
    again = Settings.from_env(settings.to_env())  # what serve hands its worker
    assert (again.serve_pool, again.serve_concurrency) == (pool, slots)


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"KALA_WORKER_POOL": "gevent"}, "KALA_WORKER_POOL"),
        ({"KALA_WORKER_CONCURRENCY": "-1"}, "KALA_WORKER_CONCURRENCY"),
        ({"KALA_WORKER_CONCURRENCY": "two"}, "KALA_WORKER_CONCURRENCY"),
        ({"KALA_BROKER_POLL_INTERVAL": "soon"}, "KALA_BROKER_POLL_INTERVAL"),
        ({"KALA_BROKER_POLL_INTERVAL": "-0.5"}, "KALA_BROKER_POLL_INTERVAL"),
    ],
)
def test_bad_values_are_refused_by_name(env, named) -> None:
    with pytest.raises(ConfigError, match=named):
        Settings.from_env(env)


def test_poll_interval_from_the_environment() -> None:
    assert Settings.from_env({"KALA_BROKER_POLL_INTERVAL": "0.25"}).broker_poll_interval == 0.25
    round_trip = Settings.from_env(Settings(broker_poll_interval=0.5).to_env())
    assert round_trip.broker_poll_interval == 0.5


def test_the_embedded_broker_file_is_wal_and_uses_our_channel(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", broker_poll_interval=0.4)
    app = make_celery(settings)
    try:
        assert SQLBrokerPolling not in app.steps["consumer"]  # the option is read as usual
        with app.connection_for_write() as connection:
            assert isinstance(connection.transport, broker.Transport)
            assert connection.transport.polling_interval == 0.4
        app.send_task("kala.run", args=["no-such-run"])  # a real publish into broker.db
    finally:
        app.close()
    path = settings.broker.removeprefix("sqla+sqlite:///")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT count(*) FROM kombu_message").fetchone()[0] == 1


def test_another_sql_broker_gets_the_poll_step() -> None:
    app = make_celery(Settings(broker_url="sqla+postgresql://127.0.0.1:1/x"))
    try:
        assert SQLBrokerPolling in app.steps["consumer"]
    finally:
        app.close()


def test_a_redis_broker_gets_no_sql_poll_step() -> None:
    app = make_celery(Settings(broker_url="redis://127.0.0.1:1/0"))
    try:
        assert SQLBrokerPolling not in app.steps["consumer"]
    finally:
        app.close()
