"""The docker-compose topology without Docker: real PostgreSQL and Redis, the API under granian,
two beats, two workers and Flower as separate processes sharing one KALA_* environment."""

from __future__ import annotations

import signal
import sys
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from flask import Flask, request

from tests import openapi_check as ours
from tests.live import LOOPBACK_ALLOW, LiveServer
from tests.processes import Command, free_port, wait_for
from tests.test_flower import Flower
from tests.test_worker_runs import finished

pytestmark = pytest.mark.timeout(120)

TOKEN = "topology-test-token"
GRANIAN = ["--interface", "wsgi", "--workers", "1", "--blocking-threads", "8", "--no-ws",
           "--access-log"]


def soon(seconds: float) -> str:
    moment = datetime.now(UTC) + timedelta(seconds=seconds)
    return moment.replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


class Topology:
    """Starts the processes of docker-compose.yml on this machine; `close` stops them all."""

    def __init__(self, env: dict[str, str], logs: Path, stack: ExitStack) -> None:
        self.env = env
        self.logs = logs
        self.stack = stack
        self.api_port = free_port()
        self.http = ours.client(
            base_url=f"http://127.0.0.1:{self.api_port}/api/v1",
            headers={"Authorization": f"Bearer {env['KALA_API_TOKEN']}"},
            timeout=30,
        )
        stack.callback(self.http.close)

    def spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> Command:
        command = Command(args, self.logs / f"{name}.log", {**self.env, **(extra_env or {})})
        self.stack.callback(command.stop, signal.SIGTERM)
        return command

    def api(self) -> Command:
        """granian on the WSGI entry, as the compose `api` service runs it."""
        command = self.spawn("api", [sys.executable, "-m", "granian", *GRANIAN, "--host",
                                     "127.0.0.1", "--port", str(self.api_port),
                                     "kala_celery.wsgi:app"])

        def serving() -> bool:
            alive(command)
            try:
                return self.http.get("/stats/").status_code == 200
            except httpx.TransportError:
                return False

        wait_for(serving, 45, "granian serving the API")
        return command

    def beat(self, n: int) -> Command:
        return self.spawn(f"beat{n}", [sys.executable, "-m", "celery", "-A", "kala_celery", "beat",
                                       "-S", "kala", "-l", "info", "--pidfile="])

    def worker(self, name: str) -> Command:
        return self.spawn(name, [sys.executable, "-m", "celery", "-A", "kala_celery", "worker",
                                 "-l", "info", "-n", f"{name}@%h", "-c", "2"])

    def flower(self, auth: tuple[str, str]) -> Flower:
        flower = Flower(self.env, self.logs / "flower.log", auth)
        self.stack.callback(flower.stop)
        return flower


def alive(command: Command) -> None:
    assert command.proc.poll() is None, f"{command.proc.args} exited:\n{command.output()}"


def wait_logged(command: Command, text: str, what: str, timeout: float = 60) -> None:
    def logged() -> bool:
        alive(command)
        return text in command.output()

    wait_for(logged, timeout, what)


@pytest.fixture
def hook() -> Iterator[LiveServer]:
    """The remote endpoint an HTTP job calls; records every request it gets."""
    app = Flask("hook")
    calls: list[tuple[str, str]] = []

    @app.post("/hook")
    def receive() -> str:
        calls.append((request.method, request.get_data(as_text=True)))
        return "pong"

    server = LiveServer(app)
    server.calls = calls  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def topology_env(postgres_server, redis_server, tmp_path: Path) -> Iterator[dict[str, str]]:
    """What every machine of the deployment shares: a fresh database, a clean broker."""
    import redis

    name = f"kala_topology_{uuid.uuid4().hex[:10]}"
    database_url = postgres_server.create_database(name)
    broker_url = f"redis://{redis_server.host}:{redis_server.port}/3"
    redis.Redis.from_url(broker_url).flushdb()
    yield {
        "KALA_DATABASE_URL": database_url,
        "KALA_BROKER_URL": broker_url,
        "KALA_DATA_DIR": str(tmp_path / "kala-data"),
        "KALA_API_TOKEN": TOKEN,
        "KALA_TIMEZONE": "UTC",
        "KALA_REMOTE_ALLOW": LOOPBACK_ALLOW,  # the hook the remote job calls is on 127.0.0.1
    }
    postgres_server.drop_database(name)


def test_compose_topology_runs_every_occurrence_exactly_once(topology_env, hook, tmp_path):
    ticks = tmp_path / "ticks"
    flower_auth = ("ops", "flower-secret")
    with ExitStack() as stack:
        top = Topology(topology_env, tmp_path, stack)
        # The API first: it creates the schema (concurrent create_all races on PostgreSQL;
        # compose starts beat and worker after the API is healthy for the same reason).
        api = top.api()
        assert ours.get(f"{top.http.base_url}stats/", timeout=10).status_code == 401
        beats = [top.beat(1), top.beat(2)]
        workers = [top.worker("topo-w1"), top.worker("topo-w2")]
        flower = top.flower(flower_auth)
        for beat in beats:
            wait_logged(beat, "beat: Starting", "celery beat started")
        for worker in workers:
            wait_logged(worker, " ready.", "celery worker ready")
        flower.wait_ready()
        worker_names = {flower.wait_worker_seen("topo-w1@"), flower.wait_worker_seen("topo-w2@")}
        probe_runs = flower.wait_task_events(top.http, worker_names)  # Flower turns them on

        def create(**job: object) -> str:
            response = top.http.post("/job/", json=job)
            assert response.status_code == 201, response.text
            return response.json()["id"]

        start = soon(3)  # 2 to 3 s ahead: the three POSTs land before it
        repeating = create(name="every second", schedule=f"R5/{start}/PT1S",
                           command=f"sh -c 'date +%s.%N >> {ticks}'")
        one_off = create(name="just once", schedule=f"R0/{start}/", command="echo once")
        remote = create(name="call the hook", type=1, remote_properties={
            "url": f"{hook.url}/hook", "method": "POST", "body": '{"from":"kala"}'})

        runs = finished(top, repeating, count=6, timeout=40)
        [once] = finished(top, one_off, timeout=20)
        [called] = finished(top, remote, timeout=20)

        # every occurrence of R5 (6 in all) has exactly one run, on its anchored time
        first = datetime.fromisoformat(start)
        assert sorted(datetime.fromisoformat(r["scheduled_for"]) for r in runs) == [
            first + timedelta(seconds=k) for k in range(6)]
        assert [(r["status"], r["trigger"]) for r in runs] == [("Success", "schedule")] * 6
        assert len({r["id"] for r in runs}) == 6
        with pytest.raises(TimeoutError):  # and no seventh, though two beats are running
            finished(top, repeating, count=7, timeout=2)
        # ...and each run executed its command once: no duplicate delivery
        assert len(ticks.read_text().split()) == 6

        assert (once["status"], once["output"]) == ("Success", "once")
        assert (called["status"], called["output"]) == ("Success", "pong")
        assert hook.calls == [("POST", '{"from":"kala"}')]

        meta = {job_id: top.http.get(f"/job/{job_id}/").json()["job"]
                for job_id in (repeating, one_off, remote)}
        counts = {job_id: (job["metadata"]["success_count"], job["metadata"]["error_count"],
                           job["metadata"]["number_of_finished_runs"], job["is_done"])
                  for job_id, job in meta.items()}
        assert counts == {repeating: (6, 0, 6, True), one_off: (1, 0, 1, True),
                          remote: (1, 0, 1, True)}
        stats = top.http.get("/stats/").json()["Stats"]
        assert (stats["jobs"], stats["success_count"], stats["error_count"]) == (3, 8, 0)

        # Flower saw every run, under its job's name, done by one of the two workers
        names = {repeating: "every second", one_off: "just once", remote: "call the hook"}
        for job_id, job_runs in ((repeating, runs), (one_off, [once]), (remote, [called])):
            for run in job_runs:
                info = flower.task(run["id"])
                assert info["name"] == f"kala: {names[job_id]}"
                assert info["worker"] in worker_names
        listed = flower.get("/api/tasks", state="SUCCESS")
        assert listed is not None and listed.status_code == 200
        ours_ran = {run["id"] for run in (*runs, once, called)}
        assert set(listed.json()) - probe_runs == ours_ran  # nothing else succeeded

        for command in (api, *beats, *workers, flower.command):
            alive(command)
        for command in (*beats, *workers):
            assert "Traceback" not in command.output(), command.output()
