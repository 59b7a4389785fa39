"""The beat and workers ride out a broker restart and an unreachable database."""

from __future__ import annotations

import logging
import shutil
import signal
from datetime import datetime

import pytest
from sqlalchemy import select

from kala_celery.beat import KalaScheduler
from kala_celery.celery_app import make_celery
from kala_celery.config import Settings
from kala_celery.store.tables import Run
from tests.processes import Command, free_port, port_open, wait_for
from tests.test_beat import soon
from tests.test_worker_runs import finished


def redis_on(port: int, tmp_path, name: str) -> Command:
    command = Command([shutil.which("redis-server") or "redis-server", "--port", str(port),
                       "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                       "--dir", str(tmp_path)], tmp_path / f"{name}.log")
    wait_for(lambda: port_open(port), 20, "redis-server")
    return command


@pytest.mark.timeout(180)
def test_broker_restart_loses_and_duplicates_nothing(make_api, db_url, tmp_path) -> None:
    port = free_port()
    broker = redis_on(port, tmp_path, "redis-a")
    url = f"redis://127.0.0.1:{port}/0"
    env = {"KALA_DATABASE_URL": db_url, "KALA_BROKER_URL": url, "KALA_DATA_DIR": str(tmp_path)}
    api = make_api(broker_url=url)
    common = ["-A", "kala_celery"]
    worker = Command(["python", "-m", "celery", *common, "worker", "-c", "2", "-l", "info",
                      "--without-gossip", "--without-mingle"], tmp_path / "worker.log", env)
    beat = Command(["python", "-m", "celery", *common, "beat", "-S", "kala", "-l", "info",
                    "--pidfile="], tmp_path / "beat.log", env)
    try:
        job_id = api.create(name="steady", command="true", schedule=f"R/{soon(2)}/PT1S")
        finished(api, job_id, count=2, timeout=60)
        broker.stop(signal.SIGKILL)
        outage_started = datetime.now().astimezone()
        wait_for(lambda: "publishing runs failed" in beat.output(), 30, "a failed publish")
        broker = redis_on(port, tmp_path, "redis-b")  # back, empty, on the same port
        done_before = len(finished(api, job_id, count=2))
        finished(api, job_id, count=done_before + 3, timeout=90)
        with api.state.sessions() as session:
            rows = session.execute(select(Run.scheduled_for, Run.state)
                                   .where(Run.job_id == job_id)).all()
        times = [t for t, _ in rows]
        assert len(times) == len(set(times))  # no occurrence twice
        stuck = [t for t, state in rows if state in ("pending", "sent") and t < outage_started]
        assert stuck == []  # what was recorded during the outage got out and ran
    finally:
        for command in (beat, worker, broker):
            command.kill()


def test_unreachable_database_makes_the_beat_back_off_not_crash(tmp_path, caplog) -> None:
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/nowhere"
    settings = Settings(database_url=dead, broker_url="memory://", data_dir=tmp_path)
    scheduler = KalaScheduler(app=make_celery(settings), lazy=True)
    with caplog.at_level(logging.ERROR):
        waits = [scheduler.tick() for _ in range(3)]
    assert waits == sorted(waits) and waits[0] >= 1.0  # growing back-off, no exception
    assert "database unavailable" in caplog.text
