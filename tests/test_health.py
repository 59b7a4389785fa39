"""GET /health against a real PostgreSQL and a real Redis that are stopped and started again,
and against a server that accepts connections and never answers."""

from __future__ import annotations

import logging
import shutil
import signal
import socket
import time
from pathlib import Path

import httpx
import pytest

from kala_celery.api import create_app
from kala_celery.api.ops import Health
from kala_celery.config import Settings
from tests import openapi_check as ours
from tests import servers
from tests.live import LiveServer
from tests.processes import Command, free_port, port_open, wait_for

pytestmark = [pytest.mark.timeout(120), pytest.mark.serial]  # bounds of seconds
FEW_SECONDS = 5.0


def redis_on(port: int, tmp_path: Path, name: str) -> Command:
    command = Command([shutil.which("redis-server") or "redis-server", "--port", str(port),
                       "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--dir", str(tmp_path)], tmp_path / f"{name}.log")
    wait_for(lambda: port_open(port), 20, "redis-server")
    return command


def timed_get(url: str) -> tuple[httpx.Response, float]:
    began = time.monotonic()
    response = ours.get(url, timeout=30)
    return response, time.monotonic() - began


def test_health_goes_503_while_postgres_or_redis_is_down_and_200_when_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    base = servers.make_base_dir("kala-health-")
    pg = servers.start_postgres(base, durable=True)  # the schema survives the crash
    port = free_port()
    redis = redis_on(port, tmp_path, "redis-a")
    settings = Settings(database_url=pg.url, broker_url=f"redis://127.0.0.1:{port}/0",
                        data_dir=tmp_path, api_token="t0ken")
    server = LiveServer(create_app(settings))
    health = f"{server.url}/health"
    try:
        response, _ = timed_get(health)  # no token needed
        assert response.status_code == 200, response.text
        assert response.json() == {"status": "ok", "database": "ok", "broker": "ok"}

        api = ours.client(base_url=f"{server.url}/api/v1",
                           headers={"Authorization": "Bearer t0ken"}, timeout=30)
        assert api.get("/job/").status_code == 200
        pg.crash()
        caplog.set_level(logging.WARNING)
        response, took = timed_get(health)
        assert response.status_code == 503 and took < FEW_SECONDS, (response.text, took)
        assert response.json()["database"].startswith("unavailable")
        assert response.json()["broker"] == "ok"
        assert [timed_get(health)[0].status_code for _ in range(2)] == [503, 503]
        assert [api.get("/job/").status_code for _ in range(3)] == [503, 503, 503]
        pg.start_again()
        wait_for(lambda: ours.get(health, timeout=30).status_code == 200, 30, "health 200")
        wait_for(lambda: api.get("/job/").status_code == 200, 30, "the API back")
        logged = [r.getMessage() for r in caplog.records]
        # one line when it went, one when it came back: not one per check or request
        assert sum("health: the database is unavailable" in m for m in logged) == 1, logged
        assert sum("health: the database is back" in m for m in logged) == 1, logged
        assert sum(m.startswith("database unavailable (answering 503") for m in logged) == 1
        assert sum("the job store is back after" in m for m in logged) == 1, logged
        api.close()

        redis.stop(signal.SIGKILL)
        response, took = timed_get(health)
        assert response.status_code == 503 and took < FEW_SECONDS, (response.text, took)
        assert response.json() | {"broker": "-"} == {
            "status": "unavailable", "database": "ok", "broker": "-"}
        assert response.json()["broker"].startswith("unavailable")
        redis = redis_on(port, tmp_path, "redis-b")
        wait_for(lambda: ours.get(health, timeout=30).status_code == 200, 30, "health 200")
    finally:
        server.stop()
        redis.stop(signal.SIGTERM)
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def test_health_answers_in_seconds_when_nothing_answers(tmp_path: Path) -> None:
    """A database and a broker that accept the connection and then say nothing (a hung host,
    a full backlog): the check gives up within a few seconds."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        port = silent.getsockname()[1]
        health = Health(Settings(database_url=f"postgresql+psycopg://kala@127.0.0.1:{port}/kala",
                                 broker_url=f"redis://127.0.0.1:{port}/0", data_dir=tmp_path))
        began = time.monotonic()
        report = health.check()
        took = time.monotonic() - began
    assert took < FEW_SECONDS, (report, took)
    assert report["database"].startswith("unavailable")
    assert report["broker"].startswith("unavailable")
