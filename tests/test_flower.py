"""Flower (a real `celery flower` process on the test Redis) shows our runs from worker events."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import httpx
import pytest

from tests.processes import Command, free_port, wait_for
from tests.test_worker_runs import finished

pytestmark = pytest.mark.timeout(90)

FLOWER_USER = ("kala", "flower-test-secret")


class Flower:
    """A `celery -A kala_celery flower` process and an authenticated client for its API."""

    def __init__(self, env: dict[str, str], log: Path, auth: tuple[str, str] = FLOWER_USER):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.command = Command(
            [sys.executable, "-m", "celery", "-A", "kala_celery", "flower",
             f"--port={self.port}", "--address=127.0.0.1"],
            log,
            {**env, "FLOWER_BASIC_AUTH": ":".join(auth)},
        )
        self.http = httpx.Client(base_url=self.url, auth=auth, timeout=10)

    def get(self, path: str, **params: object) -> httpx.Response | None:
        """GET from Flower; None while it is not listening yet."""
        if self.command.proc.poll() is not None:
            raise AssertionError(f"flower exited:\n{self.command.output()}")
        try:
            return self.http.get(path, params=params)
        except httpx.TransportError:
            return None

    def wait_ready(self, timeout: float = 45) -> None:
        def answers() -> bool:
            response = self.get("/healthcheck")
            return response is not None and response.text == "OK"

        wait_for(answers, timeout, "flower /healthcheck")

    def wait_worker_seen(self, name_prefix: str, timeout: float = 30) -> str:
        """Wait until Flower has received events (heartbeats) from a worker named
        `name_prefix...`: from then on it sees that worker's task events too."""
        def seen() -> str | None:
            response = self.get("/api/workers", status="true")
            if response is None or response.status_code != 200:
                return None
            alive = [name for name, up in response.json().items() if up]
            return next((name for name in alive if name.startswith(name_prefix)), None)

        return wait_for(seen, timeout, f"flower sees worker {name_prefix}*")

    def wait_task_events(self, http: httpx.Client, workers: set[str] | None = None,
                         timeout: float = 45) -> set[str]:
        """Task events are off in workers until Flower turns them on (its enable_events,
        every few seconds): start a probe job (through the API client `http`) until Flower
        has seen its runs from every worker named in `workers` (any one if None); then wait
        until every probe run has ended, delete the probe, and return the probe's run ids.

        A probe run that a worker received before its events were on reaches Flower as a
        task without a name, so a test that counts Flower's tasks leaves out these ids,
        never a name."""
        response = http.post("/job/", json={"name": "flower probe", "command": "true",
                                            "schedule": "R/2099-01-01T00:00:00Z/PT1H"})
        assert response.status_code == 201, response.text
        probe = response.json()["id"]

        def seen() -> bool:
            assert http.post(f"/job/start/{probe}/").status_code == 204
            listed = self.get("/api/tasks", taskname="kala: flower probe")
            if listed is None or listed.status_code != 200 or not listed.json():
                return False
            return workers is None or workers <= {t["worker"] for t in listed.json().values()}

        wait_for(seen, timeout, f"flower to see task events from {workers or 'a worker'}")

        def all_ended() -> set[str] | None:
            runs = http.get(f"/job/{probe}/executions/").json()["job_stats"]
            ended = all(r["state"] in ("success", "failed", "skipped", "lost") for r in runs)
            return {r["id"] for r in runs} if ended else None

        probe_runs = wait_for(all_ended, timeout, "every probe run to end")
        assert http.delete(f"/job/{probe}/").status_code == 204
        return probe_runs

    def task(self, task_id: str, state: str = "SUCCESS", timeout: float = 30) -> dict:
        """Flower's record of a task once it reached `state`."""
        def reached() -> dict | None:
            response = self.get(f"/api/task/info/{task_id}")
            if response is None or response.status_code != 200:
                return None
            info = response.json()
            return info if info.get("state") == state else None

        return wait_for(reached, timeout, f"flower task {task_id} in {state}")

    def stop(self) -> None:
        self.http.close()
        self.command.stop()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # Flower never reads the DB
def test_flower_shows_a_finished_run_by_job_name(cluster, tmp_path) -> None:
    worker = cluster.worker()
    flower = Flower(cluster.env, tmp_path / "flower.log")
    try:
        flower.wait_ready()
        # API access needs credentials (Flower 2 refuses an unauthenticated API)
        assert httpx.get(f"{flower.url}/api/tasks", timeout=10).status_code == 401
        worker_name = flower.wait_worker_seen("w0-")
        api = cluster.api
        flower.wait_task_events(api.http)
        job_id = api.create(name="nightly report", command="echo seen by flower")
        [run] = finished(api, job_id)
        assert run["status"] == "Success"

        info = flower.task(run["id"])
        assert info["name"] == "kala: nightly report"
        assert info["uuid"] == run["id"]
        # events carry repr()s of the arguments: the run id, and the job id in kwargs
        assert ast.literal_eval(info["kwargs"]) == {"job_id": job_id}
        assert list(ast.literal_eval(info["args"])) == [run["id"]]
        assert info["worker"] == worker_name
        # the same task in the task list, filtered by its (shadow) name
        listed = flower.get("/api/tasks", taskname="kala: nightly report")
        assert listed is not None and listed.status_code == 200
        assert list(listed.json()) == [run["id"]]
        assert listed.json()[run["id"]]["state"] == "SUCCESS"
    finally:
        flower.stop()
    assert worker.proc.poll() is None, worker.output()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # Flower never reads the DB
def test_flower_shows_a_failed_run_as_failure_and_its_skipped_dependent_too(
    cluster, tmp_path
) -> None:
    worker = cluster.worker()
    flower = Flower(cluster.env, tmp_path / "flower.log")
    try:
        flower.wait_ready()
        flower.wait_worker_seen("w0-")
        api = cluster.api
        flower.wait_task_events(api.http)
        parent = api.create(name="broken", command="sh -c 'echo disk full >&2; exit 3'",
                            schedule="R/2099-01-01T00:00:00Z/PT1H")
        child = api.create(name="after broken", command="true", parent_jobs=[parent])
        grandchild = api.create(name="after that", command="true", parent_jobs=[child])
        good = api.create(name="fine", command="true")
        assert api.http.post(f"/job/start/{parent}/").status_code == 204
        [failed] = finished(api, parent)
        [skipped] = finished(api, child)
        [skipped_too] = finished(api, grandchild)
        [ok] = finished(api, good)
        assert (failed["state"], skipped["state"], skipped_too["state"]) == (
            "failed", "skipped", "skipped")

        info = flower.task(failed["id"], state="FAILURE")
        assert info["exception"].startswith("RunFailed(") and "exit status 3" in info[
            "exception"] and "disk full" in info["exception"]
        info = flower.task(skipped["id"], state="FAILURE")  # visibly not a success
        assert info["exception"].startswith("RunSkipped(") and "dependent not run" in info[
            "exception"]
        flower.task(skipped_too["id"], state="FAILURE")  # the chain went on after a failure
        flower.task(ok["id"], state="SUCCESS")
    finally:
        flower.stop()
    log = worker.output()
    assert f"job 'broken' ({parent}) run {failed['id']}: failed in " in log
    assert "exit status 3" in log
    assert f"job 'fine' ({good}) run {ok['id']}: success in " in log
    assert worker.proc.poll() is None, log
