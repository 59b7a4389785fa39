"""Each clause of the README's delivery guarantee against real faults of real processes: a
worker killed with its pool, a broker restarted empty, a broker down, PostgreSQL down or
restarting. Bounds are shortened through the settings (KALA_WORKER_TIMEOUT,
KALA_REDELIVER_AFTER) so the tests take seconds, not minutes."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from kala_celery.config import Settings
from kala_celery.store.tables import Run
from tests import servers
from tests.conftest import _start
from tests.live import start_api
from tests.processes import Command, free_port, wait_for
from tests.test_beat import soon
from tests.test_outages import redis_on
from tests.test_worker_runs import finished, runs_of

# bounds of 2-3 s on heartbeats: alone, after the parallel part (scripts/test.sh)
pytestmark = [pytest.mark.timeout(240), pytest.mark.serial]

FAST = {"KALA_WORKER_TIMEOUT": "PT3S", "KALA_REDELIVER_AFTER": "PT2S"}


def own_broker(db_url: str, tmp_path: Path) -> tuple[int, Command, str, dict[str, str]]:
    """A redis-server of the test's own (to kill and start again on the same port), its URL,
    and the KALA_* environment of processes using it and `db_url`."""
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    env = {"KALA_DATABASE_URL": db_url, "KALA_BROKER_URL": url, "KALA_DATA_DIR": str(tmp_path)}
    return port, redis_on(port, tmp_path, "redis-a"), url, env


def celery_worker(env: dict[str, str], tmp_path: Path) -> Command:
    return Command([sys.executable, "-m", "celery", "-A", "kala_celery", "worker", "-c", "2",
                    "-l", "info", "--without-gossip", "--without-mingle"],
                   tmp_path / "worker.log", env)


def celery_beat(env: dict[str, str], tmp_path: Path) -> Command:
    return Command([sys.executable, "-m", "celery", "-A", "kala_celery", "beat", "-S", "kala",
                    "-l", "info", "--pidfile="], tmp_path / "beat.log", env)


def record_attempt(path: Path, then: str = "true") -> str:
    """A command that appends its attempt number to `path`, then runs `then` (argv, no
    shell: bash expands the variables inside the single quotes from the run's environment)."""
    return f"bash -c 'echo \"$KALA_RUN_ID $KALA_ATTEMPT\" >> {path}; {then}'"


def executions(path: Path) -> list[str]:
    return path.read_text().split("\n")[:-1] if path.exists() else []


def state_of(api, run_id: str) -> str:
    with api.state.sessions() as session:
        return session.get(Run, run_id).state


def test_a_worker_killed_with_its_pool_has_its_runs_retried_or_lost(cluster, tmp_path) -> None:
    api = cluster.api
    doomed = cluster.worker(extra_env=FAST)
    trace = tmp_path / "attempts.log"
    handler = api.create(name="handler", command="true", schedule=f"R/{soon(3600)}/PT1H")
    # attempt 1 hangs (until the test ends); attempt 2, on the other worker, succeeds
    retried = api.create(name="retried", retries=1,
                         command=record_attempt(trace, '[ "$KALA_ATTEMPT" = 2 ] || sleep 60'))
    lost = api.create(name="lost", command="sleep 60", on_failure_job=handler)
    for job_id in (retried, lost):
        wait_for(lambda job_id=job_id: [r for r in runs_of(api, job_id)
                                        if r["state"] == "started"], 30, f"{job_id} started")
    cluster.worker(extra_env=FAST)  # the survivor
    cluster.beat(extra_env=FAST)
    os.killpg(doomed.proc.pid, signal.SIGKILL)  # the worker and its pool, mid-run

    [run] = finished(api, retried, timeout=60)
    assert (run["state"], run["number_of_retries"]) == ("success", 1)
    assert [line.split()[1] for line in executions(trace)] == ["1", "2"]
    assert api.job(retried)["metadata"]["error_count"] == 1  # the dead worker's attempt
    [run] = finished(api, lost, timeout=60)
    assert run["state"] == "lost" and "worker lost" in run["error"]
    meta = api.job(lost)["metadata"]
    assert (meta["error_count"], meta["number_of_finished_runs"]) == (1, 1)
    [handled] = finished(api, handler, timeout=30)  # lost counts as a failure
    assert handled["trigger"] == "on_failure"


def test_messages_lost_in_an_empty_broker_restart_are_sent_again(
    make_api, db_url, tmp_path
) -> None:
    port, broker, url, env = own_broker(db_url, tmp_path)
    env = {**env, **FAST}
    api = make_api(broker_url=url)
    trace = tmp_path / "attempts.log"
    parent = api.create(name="parent", command=record_attempt(trace),
                        schedule=f"R/{soon(3600)}/PT1H")
    child = api.create(name="child", command=record_attempt(trace), parent_jobs=[parent])
    one_off = api.create(name="one-off", command=record_attempt(trace))
    started = api.http.post(f"/job/start/{parent}/?wait=false")
    assert started.status_code == 202
    with api.state.sessions() as session:
        queued = session.execute(select(Run.id, Run.state)).all()
    assert sorted(state for _, state in queued) == ["sent"] * 3  # on the broker, not yet run
    broker.stop(signal.SIGKILL)
    broker = redis_on(port, tmp_path, "redis-b")  # back, empty: the three messages are gone
    processes = [
        celery_beat(env, tmp_path),
        celery_worker(env, tmp_path),
    ]
    try:
        for job_id in (parent, child, one_off):
            [run] = finished(api, job_id, timeout=60)
            assert (run["state"], run["number_of_retries"]) == ("success", 0)
        ran = sorted(line.split()[0] for line in executions(trace))
        assert ran == sorted(run_id for run_id, _ in queued)  # each once, the chain in order
        assert "sending them again" in processes[0].output()
    finally:
        for command in (*processes, broker):
            command.kill()


def test_with_the_broker_down_occurrences_are_kept_and_start_answers_202(
    make_api, db_url, tmp_path
) -> None:
    port, broker, url, env = own_broker(db_url, tmp_path)
    env = {**env, "KALA_REDELIVER_AFTER": FAST["KALA_REDELIVER_AFTER"]}  # see below
    api = make_api(broker_url=url, start_wait=30)
    beat = celery_beat(env, tmp_path)
    worker = None
    try:
        steady = api.create(name="steady", command="true", allow_overlap=True,
                            schedule=f"R/{soon(3)}/PT1S")
        manual = api.create(name="manual", command="true", schedule=f"R/{soon(3600)}/PT1H")
        wait_for(lambda: runs_of(api, steady), 30, "the first occurrence")
        broker.stop(signal.SIGKILL)
        began = time.monotonic()
        response = api.http.post(f"/job/start/{manual}/")
        assert response.status_code == 202 and time.monotonic() - began < 10
        assert response.headers["Location"].endswith(f"/executions/{response.json()['id']}/")
        assert state_of(api, response.json()["id"]) == "pending"
        outage = len(runs_of(api, steady))
        wait_for(lambda: len(runs_of(api, steady)) >= outage + 4, 30,
                 "occurrences recorded during the outage")
        broker = redis_on(port, tmp_path, "redis-b")
        worker = celery_worker(env, tmp_path)
        [run] = finished(api, manual, timeout=60)
        assert run["state"] == "success"

        def outage_runs_done() -> bool:
            recorded = runs_of(api, steady)[: outage + 4]
            return all(r["state"] == "success" for r in recorded)

        # the occurrences sent before the kill died with the broker: sent again once they
        # have been `sent` for KALA_REDELIVER_AFTER without a worker taking them
        wait_for(outage_runs_done, 60, "every occurrence of the outage run")
        log = beat.output()
        assert log.count("publishing runs failed") == 1  # logged once, not per try
        assert "the broker is back" in log
    finally:
        for command in (beat, worker, broker):
            if command is not None:
                command.kill()


@pytest.fixture
def own_postgres(server_base_dir: Path) -> Iterator[servers.PostgresServer]:
    """A PostgreSQL server of this test's own, to crash and start again."""
    server = _start(lambda base: servers.start_postgres(base, durable=True), server_base_dir)
    yield server
    server.stop()


@pytest.fixture
def api_on(tmp_path: Path) -> Iterator:
    """Start APIs on a given database (these tests are about PostgreSQL only)."""
    started = []

    def start(url: str, **overrides: object):
        settings = Settings(database_url=url, data_dir=tmp_path, start_wait=0.3)
        started.append(start_api(settings.with_overrides(**overrides)))
        return started[-1]

    yield start
    for api in started:
        api.close()


def test_the_api_answers_503_with_retry_after_while_postgresql_is_down(
    own_postgres, api_on
) -> None:
    api = api_on(own_postgres.url)
    job_id = api.create(name="kept", command="true", schedule=f"R/{soon(3600)}/PT1H")
    own_postgres.crash()
    for method, path, body in (("GET", "/job/", None), ("POST", "/job/", {"name": "x",
                               "command": "true"}), ("GET", f"/job/{job_id}/", None),
                               ("POST", f"/job/start/{job_id}/", None), ("GET", "/stats/", None)):
        response = api.http.request(method, path, json=body)
        assert response.status_code == 503, (method, path, response.text)
        assert response.headers["Retry-After"] == "5"
        assert response.headers["Content-Type"].startswith("application/json")
        assert "job store is unavailable" in response.json()["error"]
    late = api_on(own_postgres.url_for("fresh"))  # started while the database is down
    assert late.http.get("/job/").status_code == 503
    own_postgres.start_again()
    own_postgres.create_database("fresh")
    assert api.http.get("/job/").json()["jobs"].keys() == {job_id}  # reconnected, kept
    assert late.http.get("/job/").json() == {"jobs": {}}  # its schema made on first request


def test_an_outcome_finished_while_postgresql_restarts_is_recorded(
    own_postgres, api_on, redis_url, tmp_path
) -> None:
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    db = own_postgres.url
    env = {"KALA_DATABASE_URL": db, "KALA_BROKER_URL": redis_url, "KALA_DATA_DIR": str(tmp_path),
           **FAST}
    api = api_on(db, broker_url=redis_url)
    processes = [
        celery_worker(env, tmp_path),
        celery_beat(env, tmp_path),
    ]
    worker = processes[0]
    trace = tmp_path / "attempts.log"
    try:
        steady = api.create(name="steady", command="true", schedule=f"R/{soon(3)}/PT1S")
        finished(api, steady, count=2, timeout=60)
        slow = api.create(name="slow", command=record_attempt(trace, "sleep 2"))
        wait_for(lambda: executions(trace), 30, "the slow command started")
        own_postgres.crash()
        wait_for(lambda: "retrying the write" in worker.output(), 30,
                 "the worker trying to record the outcome")
        own_postgres.start_again()
        [run] = finished(api, slow, timeout=60)
        assert (run["state"], run["number_of_retries"]) == ("success", 0)
        assert len(executions(trace)) == 1  # recorded, not run again
        before = len(runs_of(api, steady))  # the beat and the worker reconnected by themselves
        finished(api, steady, count=before + 2, timeout=60)
        again = api.create(name="after", command="true")
        [run] = finished(api, again, timeout=60)
        assert run["state"] == "success"
    finally:
        for command in processes:
            command.kill()


def test_a_worker_rides_out_the_broker_dying_under_a_long_run(make_api, db_url, tmp_path) -> None:
    port, broker, url, env = own_broker(db_url, tmp_path)
    api = make_api(broker_url=url)
    worker = celery_worker(env, tmp_path)
    trace = tmp_path / "attempts.log"
    try:
        slow = api.create(name="slow", command=record_attempt(trace, "sleep 3"))
        wait_for(lambda: executions(trace), 30, "the slow command started")
        broker.stop(signal.SIGKILL)  # its message is unacknowledged on a broker that is gone
        broker = redis_on(port, tmp_path, "redis-b")
        [run] = finished(api, slow, timeout=60)
        assert run["state"] == "success"
        assert worker.proc.poll() is None, worker.output()  # no "Unrecoverable error"
        after = api.create(name="after", command="true")
        [run] = finished(api, after, timeout=60)  # it reconnected and takes new runs
        assert run["state"] == "success"
    finally:
        for command in (worker, broker):
            command.kill()


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_chain_whose_hand_off_meets_a_broker_outage_goes_on_when_it_is_back(
    make_api, db_url, tmp_path
) -> None:
    port, broker, url, env = own_broker(db_url, tmp_path)
    api = make_api(broker_url=url)
    worker = celery_worker(env, tmp_path)
    beat = celery_beat(env, tmp_path)
    try:
        # the parent's own command takes the broker down just before its run ends
        parent = api.create(name="parent", command=f"kill -9 {broker.proc.pid}",
                            schedule=f"R/{soon(3600)}/PT1H")
        child = api.create(name="child", command="true", parent_jobs=[parent])
        api.http.post(f"/job/start/{parent}/?wait=false")
        [run] = finished(api, parent, timeout=60)
        assert run["state"] == "success"
        wait_for(lambda: "the next run of its chain was not sent" in worker.output(), 60,
                 "the hand-off to fail")
        assert [r["state"] for r in runs_of(api, child)] == ["pending"]  # the beat's now
        broker = redis_on(port, tmp_path, "redis-b")
        [run] = finished(api, child, timeout=60)
        assert run["state"] == "success"
    finally:
        for command in (beat, worker, broker):
            command.kill()
