"""Shared fixtures: real PostgreSQL and Redis servers (tests/servers.py), ``db_url`` (every
test that uses it runs on SQLite and on PostgreSQL) and the API on a real socket."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest

from kala_celery.api import create_app
from kala_celery.config import Settings
from tests import servers
from tests.live import Api, LiveServer

T = TypeVar("T")


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
        settings = Settings(database_url=db_url, data_dir=tmp_path, start_wait=0.3)
        settings = settings.with_overrides(**overrides)
        app = create_app(settings)
        server = LiveServer(app)
        api = Api(
            server=server,
            state=app.extensions["kala"],
            http=httpx.Client(base_url=f"{server.url}/api/v1", timeout=30),
            raw=httpx.Client(base_url=server.url, timeout=30),
        )
        started.append(api)
        return api

    yield start
    for api in started:
        api.close()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()
