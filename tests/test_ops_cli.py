"""The operator's commands: the start-up line of `api`/`serve` (passwords hidden) and
`kala-celery health worker` on heartbeat rows."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import text

from kala_celery.runs.heartbeats import record_heartbeat
from kala_celery.store.db import init_schema, make_engine
from kala_celery.store.tables import utcnow
from tests import openapi_check as ours
from tests.processes import Command, free_port, port_open, wait_for

pytestmark = pytest.mark.timeout(60)


def test_api_prints_where_it_listens_and_what_it_uses_without_passwords(tmp_path: Path) -> None:
    port, dead = free_port(), free_port()
    db = f"postgresql+psycopg://kala:s3cret@127.0.0.1:{dead}/kala"
    broker = f"redis://:hunter2@127.0.0.1:{dead}/0"
    api = Command.kala("api", "-p", str(port), "--db", db, "--broker", broker, "-w", "1",
                       log=tmp_path / "api.log")
    try:  # the database is down: the API starts anyway (503 until it is back) and says so
        line = wait_for(lambda: next((ln for ln in api.output().splitlines()
                                      if ln.startswith("kala-celery: API on")), None), 30,
                        "the start-up line")
    finally:
        api.stop()
    assert line == (f"kala-celery: API on http://127.0.0.1:{port}/api/v1/ · jobs in "
                    f"postgresql+psycopg://kala:***@127.0.0.1:{dead}/kala · broker "
                    f"redis://:***@127.0.0.1:{dead}/0")
    assert "s3cret" not in api.output() and "hunter2" not in api.output()


def test_api_on_a_database_behind_refuses_with_the_command(postgres_server,
                                                          tmp_path: Path) -> None:
    from sqlalchemy import create_engine

    from tests import schema_0_1_0 as old

    name = f"kala_old_{uuid.uuid4().hex[:8]}"
    url = postgres_server.create_database(name)
    try:
        engine = create_engine(url)
        old.Base.metadata.create_all(engine)
        engine.dispose()
        done = subprocess.run([sys.executable, "-m", "kala_celery", "api", "-p", str(free_port()),
                               "--db", url], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1, done.stdout + done.stderr
        assert "Traceback" not in done.stderr, done.stderr
        assert "is at schema revision 0001" in done.stderr
        assert "run `kala-celery db upgrade`" in done.stderr
    finally:
        postgres_server.drop_database(name)


def test_health_worker_reads_this_hosts_heartbeats(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'kala.db'}"
    engine = make_engine(url)
    init_schema(engine)
    host = socket.gethostname()

    def health(*args: str) -> int:
        return subprocess.run([sys.executable, "-m", "kala_celery", "health", "worker",
                               "--db", url, *args], capture_output=True, timeout=30).returncode

    assert health() == 1  # no heartbeat yet
    with engine.begin() as conn:
        record_heartbeat(conn, f"celery@{host}/1", utcnow() - timedelta(minutes=2), [])
        record_heartbeat(conn, "celery@elsewhere/2", utcnow(), [])
    assert health() == 1  # this host's is stale (KALA_WORKER_TIMEOUT: 30 s)
    assert health("--host", "elsewhere") == 0
    assert health("--any") == 0
    with engine.begin() as conn:
        record_heartbeat(conn, f"celery@{host}/3", utcnow(), [])
    assert health() == 0
    engine.dispose()


def test_every_api_process_reports_the_same_metrics(tmp_path: Path) -> None:
    """Two API worker processes, jobs created through either: each scrape (a new connection,
    so either process) counts them all, since the figures come from SQL."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.test_api_jobs import future

    port = free_port()
    api = Command.kala("api", "-p", str(port), "-w", "2", "--data-dir", str(tmp_path / "data"),
                       log=tmp_path / "api.log")
    base = f"http://127.0.0.1:{port}"

    def active() -> float:
        body = ours.get(f"{base}/metrics", timeout=10).text
        [family] = [f for f in text_string_to_metric_families(body) if f.name == "kala_jobs"]
        return next(s.value for s in family.samples if s.labels["state"] == "active")

    try:
        wait_for(lambda: port_open(port) and ours.get(f"{base}/health", timeout=10)
                 .status_code == 200, 60, "the API")
        for n in range(6):
            created = ours.post(f"{base}/api/v1/job/", json={
                "name": f"j{n}", "command": "true", "schedule": f"R/{future()}/PT1H"})
            assert created.status_code == 201, created.text
        assert [active() for _ in range(8)] == [6.0] * 8
    finally:
        assert api.stop() == 0, api.output()


def test_an_idle_worker_is_healthy_from_its_start(tmp_path: Path, redis_url: str) -> None:
    """Each pool process writes its heartbeat when it starts, before any run."""
    url = f"sqlite:///{tmp_path / 'kala.db'}"
    env = {"KALA_DATABASE_URL": url, "KALA_BROKER_URL": redis_url,
           "KALA_DATA_DIR": str(tmp_path)}
    worker = Command([sys.executable, "-m", "celery", "-A", "kala_celery", "worker", "-c", "2",
                      "-l", "info", "-n", "idle@%h", "--without-gossip", "--without-mingle"],
                     tmp_path / "worker.log", env)
    engine = make_engine(url)
    init_schema(engine)
    try:
        def pool_heartbeats() -> list[str]:
            with engine.connect() as conn:
                return [name for (name,) in conn.execute(text("SELECT name FROM workers"))]

        names = wait_for(lambda: len(pool_heartbeats()) >= 2 and pool_heartbeats(), 60,
                         "a heartbeat from each pool process")
        assert all(name.startswith(f"idle@{socket.gethostname()}/") for name in names)
        health = subprocess.run([sys.executable, "-m", "kala_celery", "health", "worker",
                                 "--db", url], capture_output=True, timeout=30)
        assert health.returncode == 0, health
    finally:
        worker.stop(signal.SIGTERM)
        engine.dispose()
