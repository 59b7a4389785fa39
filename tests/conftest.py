"""Shared fixtures: real PostgreSQL and Redis servers (tests/servers.py), ``db_url`` (every
test that uses it runs on SQLite and on PostgreSQL) and the API on a real socket."""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

from kala_celery.config import Settings
from tests import servers
from tests.live import LOOPBACK_ALLOW, Api, start_api
from tests.processes import Command, wait_for

T = TypeVar("T")

# Every process the suite starts (workers, beats, `serve`) inherits this environment, and
# Settings.from_env reads it: they may call the test listeners on loopback. A test of the
# refusal gives its worker KALA_REMOTE_ALLOW="" (the default).
os.environ["KALA_REMOTE_ALLOW"] = LOOPBACK_ALLOW


def _start(start: Callable[[Path], T], base_dir: Path) -> T:
    """Start a server; a missing binary fails the test (skips only with KALA_TEST_SKIP_MISSING=1,
    and never when CI=true)."""
    try:
        return start(base_dir)
    except servers.ServerUnavailable as exc:
        ci = os.environ.get("CI", "").lower() == "true"
        if not ci and os.environ.get("KALA_TEST_SKIP_MISSING") == "1":
            pytest.skip(str(exc))
        raise


@pytest.fixture(scope="session")
def server_base_dir() -> Iterator[Path]:
    """A 0755 directory under /tmp (the postgres user must traverse it when we are root)."""
    path = servers.make_base_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server(server_base_dir: Path) -> Iterator[servers.PostgresServer]:
    server = _start(servers.start_postgres, server_base_dir)
    yield server
    server.stop()


@pytest.fixture(scope="session")
def redis_server(server_base_dir: Path) -> Iterator[servers.RedisServer]:
    server = _start(servers.start_redis, server_base_dir)
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: servers.RedisServer) -> str:
    """``redis://127.0.0.1:<port>/0`` of the session's redis-server."""
    return redis_server.url


@pytest.fixture
def pg_url(postgres_server: servers.PostgresServer) -> Iterator[str]:
    """A fresh, empty PostgreSQL database per test (for what only PostgreSQL has)."""
    name = f"kala_test_{uuid.uuid4().hex[:12]}"
    yield postgres_server.create_database(name)
    postgres_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, empty database per test, as a SQLAlchemy URL, on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'kala.db'}"
        return
    server: servers.PostgresServer = request.getfixturevalue("postgres_server")
    name = f"kala_test_{uuid.uuid4().hex[:12]}"
    url = server.create_database(name)
    yield url
    server.drop_database(name)


@pytest.fixture
def make_api(db_url: str, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Start the API (real HTTP, on db_url) with Settings overrides; stopped after the test."""
    started: list[Api] = []

    def start(**overrides: object) -> Api:
        settings = Settings(database_url=db_url, data_dir=tmp_path, start_wait=0.3,
                            remote_allow=LOOPBACK_ALLOW)
        api = start_api(settings.with_overrides(**overrides))
        started.append(api)
        return api

    yield start
    for api in started:
        api.close()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


@pytest.fixture
def cluster(
    make_api: Callable[..., Api], db_url: str, redis_url: str, tmp_path: Path
) -> Iterator[object]:
    """The API and real `celery worker` processes sharing db_url and a real Redis broker."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    env = {"KALA_DATABASE_URL": db_url, "KALA_BROKER_URL": redis_url,
           "KALA_DATA_DIR": str(tmp_path), "KALA_REMOTE_ALLOW": LOOPBACK_ALLOW}
    workers: list[Command] = []

    class Cluster:
        def __init__(self) -> None:
            self.api = make_api(broker_url=redis_url, start_wait=30)
            self.env = env
            self.started = workers  # a test's own processes, killed after it too

        def worker(self, *args: str, app: str = "kala_celery", concurrency: int = 2,
                   extra_env: dict[str, str] | None = None) -> Command:
            name = f"w{len(workers)}-{uuid.uuid4().hex[:6]}@%h"
            command = Command(
                [sys.executable, "-m", "celery", "-A", app, "worker", "-l", "info", "-n", name,
                 "-c", str(concurrency), "--without-gossip", "--without-mingle", *args],
                tmp_path / f"worker{len(workers)}.log",
                {**env, **(extra_env or {})},
            )
            workers.append(command)
            wait_for(lambda: " ready." in command.output() or command.proc.poll() is not None,
                     60, "celery worker ready")
            assert command.proc.poll() is None, command.output()
            return command

        def beat(self, *args: str, extra_env: dict[str, str] | None = None) -> Command:
            command = Command(
                [sys.executable, "-m", "celery", "-A", "kala_celery", "beat", "-S", "kala",
                 "-l", "info", "--pidfile=", *args],
                tmp_path / f"beat{len(workers)}.log",
                {**env, **(extra_env or {})},
            )
            workers.append(command)
            wait_for(lambda: "beat: Starting" in command.output() or command.proc.poll()
                     is not None, 60, "celery beat started")
            assert command.proc.poll() is None, command.output()
            return command

    yield Cluster()
    for command in workers:
        command.kill()
