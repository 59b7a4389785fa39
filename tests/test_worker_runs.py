"""Jobs run on real `celery worker` processes over a real Redis broker (SQLite and PostgreSQL)."""

from __future__ import annotations

import os
import signal
from datetime import UTC, datetime

import pytest
from flask import Flask, request
from sqlalchemy import select

from kala_celery.runs import dispatch
from kala_celery.store.tables import Job, Run
from tests.live import Api, LiveServer
from tests.processes import wait_for
from tests.test_api_jobs import future

pytestmark = pytest.mark.timeout(180)


def runs_of(api: Api, job_id: str) -> list[dict]:
    return api.http.get(f"/job/{job_id}/executions/").json()["job_stats"]


def finished(api: Api, job_id: str, count: int = 1, timeout: float = 60) -> list[dict]:
    """Wait until the job has `count` runs in a terminal state; return all its runs."""
    def check() -> list[dict] | None:
        runs = runs_of(api, job_id)
        done = [r for r in runs if r["state"] in ("success", "failed", "skipped", "lost")]
        return runs if len(done) >= count else None

    return wait_for(check, timeout, f"{count} finished run(s) of {job_id}")


def test_one_off_job_runs_once_and_is_done(cluster) -> None:
    cluster.worker()
    api = cluster.api
    job_id = api.create(name="hello", command="echo hello from kala")
    [run] = finished(api, job_id)
    assert (run["status"], run["output"], run["trigger"]) == ("Success", "hello from kala",
                                                              "schedule")
    job = api.job(job_id)
    assert job["metadata"]["success_count"] == 1
    assert job["metadata"]["number_of_finished_runs"] == 1
    assert job["metadata"]["last_attempted_run"] != "0001-01-01T00:00:00Z"
    assert job["is_done"] is True
    assert [s["success"] for s in job["stats"]] == [True]


def test_failure_with_retries_counts_every_attempt(cluster) -> None:
    cluster.worker()
    api = cluster.api
    job_id = api.create(name="fails", command="sh -c 'echo broken >&2; exit 3'", retries=2)
    [run] = finished(api, job_id)
    assert run["status"] == "Failed" and run["number_of_retries"] == 2
    assert run["error"].startswith("exit status 3") and "broken" in run["output"]
    meta = api.job(job_id)["metadata"]
    counts = (meta["error_count"], meta["success_count"], meta["number_of_finished_runs"])
    assert counts == (3, 0, 1)
    [stat] = api.http.get(f"/job/stats/{job_id}/").json()["job_stats"]
    assert stat["success"] is False and stat["number_of_retries"] == 2


def test_retry_delay_with_backoff_spaces_attempts(cluster) -> None:
    cluster.worker()
    api = cluster.api
    job_id = api.create(name="slowly", command="false", retries=2, retry_delay="PT0.4S",
                        retry_backoff=True)
    [run] = finished(api, job_id)
    assert run["status"] == "Failed" and run["number_of_retries"] == 2
    # waits of 0.4 s then 0.8 s between the three attempts
    assert run["execution_duration"] >= 1.2e9, run
    assert api.job(job_id)["metadata"]["error_count"] == 3


def test_a_retry_that_then_succeeds(cluster, tmp_path) -> None:
    cluster.worker()
    api = cluster.api
    marker = tmp_path / "second-time"
    command = f"sh -c 'test -e {marker} || {{ touch {marker}; exit 1; }}'"
    job_id = api.create(name="flaky", command=command, retries=3)
    [run] = finished(api, job_id)
    assert (run["status"], run["number_of_retries"]) == ("Success", 1)
    meta = api.job(job_id)["metadata"]
    assert (meta["error_count"], meta["success_count"]) == (1, 1)


def test_epsilon_bounds_the_retry_window(cluster) -> None:
    """docs/kala.md §8 TestJobEpsilon: epsilon PT2S, 200 retries, 1 s failing command -> 2 tries."""
    cluster.worker()
    api = cluster.api
    job_id = api.create(name="eps", command="sh -c 'sleep 1; exit 1'", retries=200,
                        epsilon="PT2S", schedule=f"R0/{future()}/")
    now = datetime.now(UTC)
    with api.state.sessions.begin() as session:  # what the beat does when the occurrence is due
        run = dispatch.record_tree(session, session.get(Job, job_id), trigger="schedule",
                                  scheduled_for=now, now=now)
    api.state.publish([run])
    [done] = finished(api, job_id)
    assert done["status"] == "Failed" and "epsilon window" in done["error"]
    assert api.job(job_id)["metadata"]["error_count"] == 2


def test_run_timeout_kills_the_command(cluster) -> None:
    cluster.worker()
    api = cluster.api
    job_id = api.create(name="hang", command="sleep 60", run_timeout="PT1S")
    [run] = finished(api, job_id, timeout=30)
    assert run["status"] == "Failed" and "timed out" in run["error"]
    assert run["execution_duration"] < 10e9


def test_missing_command_and_bad_quotes_fail_with_reasons(cluster) -> None:
    cluster.worker()
    api = cluster.api
    missing = api.create(name="nope", command="no-such-binary-kala --x")
    quotes = api.create(name="quotes", command="echo 'unbalanced")
    [m] = finished(api, missing)
    [q] = finished(api, quotes)
    assert "executable file not found" in m["error"]
    assert "invalid command line string" in q["error"]


def test_templates_render_with_the_jobs_delimiters(cluster) -> None:
    cluster.worker()
    api = cluster.api
    job_id = api.create(name="tmpl", owner="ops@x", command="echo [[.Name]] [[$.Owner]] [[.Id]]",
                        TemplateDelimiters="[[ ]]")
    [run] = finished(api, job_id)
    assert run["output"] == f"tmpl ops@x {job_id}"


@pytest.fixture
def web() -> LiveServer:
    app = Flask("remote")
    seen: list[dict] = []

    @app.route("/hook", methods=["GET", "POST", "PUT"])
    def hook() -> tuple[str, int]:
        seen.append({"method": request.method, "body": request.get_data(as_text=True),
                     "type": request.headers.get("Content-Type")})
        return "created" if request.args.get("code") == "201" else "ok", int(
            request.args.get("code", "200"))

    server = LiveServer(app)
    server.seen = seen  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_http_jobs_and_expected_codes(cluster, web) -> None:
    cluster.worker()
    api = cluster.api
    ok = api.create(name="post", type=1, remote_properties={
        "url": f"{web.url}/hook", "method": "post", "body": '{"k":1}'})
    created_default = api.create(name="201 default", type=1, remote_properties={
        "url": f"{web.url}/hook?code=201"})
    created_expected = api.create(name="201 expected", type=1, remote_properties={
        "url": f"{web.url}/hook?code=201", "expected_response_codes": [201]})
    [r_ok] = finished(api, ok)
    [r_default] = finished(api, created_default)
    [r_expected] = finished(api, created_expected)
    assert (r_ok["status"], r_ok["output"]) == ("Success", "ok")
    assert {"method": "POST", "body": '{"k":1}', "type": "application/json"} in web.seen
    assert r_default["status"] == "Failed" and r_default["error"].lower().startswith("201 created")
    assert r_expected["status"] == "Success"
    # defaults apply at request time and are not written back (docs/design.md Decision 12)
    assert api.job(ok)["remote_properties"]["headers"] is None


def test_start_waits_for_the_run_then_answers_204(cluster) -> None:
    cluster.worker()
    api = cluster.api
    job_id = api.create(name="s", command="sh -c 'sleep 0.5; echo done'",
                        schedule=f"R/{future()}/PT1H")
    response = api.http.post(f"/job/start/{job_id}/")
    assert (response.status_code, response.content) == (204, b"")
    assert api.job(job_id)["metadata"]["success_count"] == 1
    accepted = api.http.post(f"/job/start/{job_id}/?wait=false")
    assert accepted.status_code == 202
    location = accepted.headers["location"]
    wait_for(lambda: api.raw.get(location).json()["job_run"]["status"] == "Success", 30,
             "async start")


def test_queue_extension_routes_runs_to_that_queues_workers(cluster) -> None:
    cluster.worker("-Q", "gpu-box")
    api = cluster.api
    job_id = api.create(name="q", command="echo on gpu", queue="gpu-box")
    [run] = finished(api, job_id)
    assert run["status"] == "Success"
    other = api.create(name="default queue", command="echo hi")  # nobody consumes 'celery'
    with pytest.raises(TimeoutError):
        finished(api, other, timeout=2)


def test_twenty_concurrent_runs_lose_no_counter_update(cluster) -> None:
    cluster.worker(concurrency=4)
    api = cluster.api
    job_id = api.create(name="many", command="sh -c 'sleep 0.2; exit 0'", allow_overlap=True,
                        schedule=f"R/{future()}/PT1H")
    for _ in range(20):
        assert api.http.post(f"/job/start/{job_id}/?wait=false").status_code == 202
    runs = finished(api, job_id, count=20, timeout=90)
    assert [r["status"] for r in runs] == ["Success"] * 20
    meta = api.job(job_id)["metadata"]
    assert (meta["success_count"], meta["number_of_finished_runs"]) == (20, 20)


def test_worker_killed_mid_run_ends_lost_not_stuck(cluster) -> None:
    cluster.worker()
    api = cluster.api
    job_id = api.create(name="victim", command="sleep 60", schedule=f"R/{future()}/PT1H")
    run_id = api.http.post(f"/job/start/{job_id}/?wait=false").json()["id"]

    def worker_pid() -> int | None:
        with api.state.sessions() as session:
            run = session.get(Run, run_id)
            if run.state == "started" and run.worker:
                return int(run.worker.rpartition("/")[2])
        return None

    os.kill(wait_for(worker_pid, 30, "run started"), signal.SIGKILL)
    [run] = finished(api, job_id, timeout=60)
    assert run["status"] == "Failed" and run["state"] == "lost"
    assert "died during attempt 1" in run["error"]
    meta = api.job(job_id)["metadata"]
    assert (meta["error_count"], meta["number_of_finished_runs"]) == (1, 1)
    with api.state.sessions() as session:
        assert session.scalar(select(Run.state).where(Run.id == run_id)) == "lost"


def test_a_teams_own_celery_app_runs_kala_jobs(cluster) -> None:
    cluster.worker(app="tests.own_celery_app")
    api = cluster.api
    job_id = api.create(name="theirs", command="echo from their app")
    [run] = finished(api, job_id)
    assert (run["status"], run["output"]) == ("Success", "from their app")
