"""`kala-celery serve` as a subprocess, driven like a Kala client over real HTTP."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests import openapi_check as ours
from tests.processes import Command, free_port, port_open, wait_for
from tests.test_api_jobs import future

ZERO = "0001-01-01T00:00:00Z"


def answers(port: int) -> bool:
    """The API answers (not just the port: the server binds before its workers are ready)."""
    if not port_open(port):
        return False
    try:
        return ours.get(f"http://127.0.0.1:{port}/api/v1/stats/", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


@pytest.fixture
def served(db_url: str, tmp_path: Path):
    port = free_port()
    command = Command.kala("serve", "-p", f":{port}", "--data-dir", str(tmp_path / "data"),
                           log=tmp_path / "serve.log", env={"KALA_DATABASE_URL": db_url})
    try:
        wait_for(lambda: answers(port) or command.proc.poll() is not None, 60, "serve")
        assert command.proc.poll() is None, command.output()
        yield f"http://127.0.0.1:{port}", command
    finally:
        command.kill()  # a clean stop is test_serve_stops_cleanly_on_ctrl_c's


def kala_job(job_id: str, name: str, schedule: str, next_run_at: str, disabled: bool) -> str:
    return (
        f'{{"name":"{name}","id":"{job_id}","command":"echo \\u003chi\\u003e \\u0026 bye",'
        f'"owner":"ops@example.com","disabled":{str(disabled).lower()},"dependent_jobs":null,'
        f'"parent_jobs":null,"on_failure_job":"","schedule":"{schedule}","retries":2,'
        f'"epsilon":"PT5S","next_run_at":"{next_run_at}","TemplateDelimiters":"",'
        f'"resume_at_next_scheduled_time":false,"metadata":{{"success_count":0,'
        f'"last_success":"{ZERO}","error_count":0,"last_error":"{ZERO}",'
        f'"last_attempted_run":"{ZERO}","number_of_finished_runs":0}},"type":0,'
        f'"remote_properties":{{"url":"","method":"","body":"","headers":null,"timeout":0,'
        f'"expected_response_codes":null}},"stats":null,"is_done":false}}'
    )


def test_kala_client_session_matches_kala_byte_for_byte(served) -> None:
    base, _command = served
    start = future()
    schedule = f"R5/{start}/PT1H"
    with ours.client(base_url=f"{base}/api/v1", headers={"Accept-Encoding": "gzip"}) as kala:
        body = {"name": "nightly", "command": "echo <hi> & bye", "owner": "ops@example.com",
                "schedule": schedule, "retries": 2, "epsilon": "PT5S"}
        created = kala.post("/job/", json=body)
        assert created.status_code == 201
        assert created.headers["content-type"] == "application/json;charset=UTF-8"
        job_id = created.json()["id"]
        assert created.content == f'{{"id":"{job_id}"}}\n'.encode()

        one = kala_job(job_id, "nightly", schedule, start, False)
        assert kala.get(f"/job/{job_id}/").content == f'{{"job":{one}}}\n'.encode()
        assert kala.get("/job/").content == f'{{"jobs":{{"{job_id}":{one}}}}}\n'.encode()

        assert kala.post(f"/job/disable/{job_id}/").status_code == 204
        off = kala_job(job_id, "nightly", schedule, ZERO, True)
        assert kala.get(f"/job/{job_id}/").content == f'{{"job":{off}}}\n'.encode()
        assert kala.post(f"/job/enable/{job_id}/").status_code == 204
        assert kala.get(f"/job/{job_id}/").content == f'{{"job":{one}}}\n'.encode()

        assert kala.get(f"/job/stats/{job_id}/").content == b'{"job_stats":null}\n'
        stats = kala.get("/stats/")
        created_at = stats.json()["Stats"]["created"]
        assert stats.content == (
            '{"Stats":{"active_jobs":1,"disabled_jobs":0,"jobs":1,"error_count":0,'
            f'"success_count":0,"next_run_at":"{start}","last_attempted_run":"{ZERO}",'
            f'"created":"{created_at}"}}}}\n'
        ).encode()

        deleted = kala.delete(f"/job/{job_id}/")
        assert (deleted.status_code, deleted.content) == (204, b"")
        assert kala.get(f"/job/{job_id}/").status_code == 404
        kala.post("/job/", json=body)
        assert kala.delete("/job/all/").status_code == 204
        assert kala.get("/job/").content == b'{"jobs":{}}\n'


def children_of(pid: int) -> list[int]:
    found = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(line) for line in found.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_job_created_with_curl_runs_on_the_embedded_default(served) -> None:
    base, _command = served
    created = ours.post(f"{base}/api/v1/job/", json={"name": "hi", "command": "echo hi"})
    job_id = created.json()["id"]

    def succeeded() -> dict | None:
        job = ours.get(f"{base}/api/v1/job/{job_id}/").json()["job"]
        return job if job["metadata"]["success_count"] == 1 else None

    job = wait_for(succeeded, 60, "the one-off job to run")
    assert job["is_done"] is True
    runs = ours.get(f"{base}/api/v1/job/{job_id}/executions/").json()["job_stats"]
    assert [(r["status"], r["output"]) for r in runs] == [("Success", "hi")]


def test_serve_stops_cleanly_on_ctrl_c(served) -> None:
    _base, command = served
    children = children_of(command.proc.pid)
    assert len(children) >= 3  # the API's worker, the beat and the celery worker
    assert command.stop(signal.SIGINT) == 0, command.output()
    wait_for(lambda: not any(alive(pid) for pid in children), 30, "no orphans")


def test_serve_refuses_a_public_address_without_token(tmp_path: Path) -> None:
    command = Command.kala("serve", "-i", "0.0.0.0", "-p", str(free_port()),
                           "--data-dir", str(tmp_path), log=tmp_path / "serve.log")
    assert command.proc.wait(30) == 2
    assert "refusing to serve on 0.0.0.0 without a token" in command.output()
    command.stop()


def test_a_named_token_is_a_token_for_the_public_address_check(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'kala.db'}"
    made = subprocess.run([sys.executable, "-m", "kala_celery", "token", "create", "ops",
                           "--scopes", "read", "--db", db], capture_output=True, text=True,
                          timeout=60)
    assert made.returncode == 0, made.stderr
    port = free_port()
    command = Command.kala("api", "-i", "0.0.0.0", "-p", str(port), "-w", "1", "--db", db,
                           "--data-dir", str(tmp_path), log=tmp_path / "api.log")
    try:
        wait_for(lambda: port_open(port) or command.proc.poll() is not None, 60, "api")
        assert command.proc.poll() is None, command.output()
        secret = {"Authorization": f"Bearer {made.stdout.strip()}"}
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/job/", timeout=10).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/api/v1/job/", headers=secret,
                         timeout=10).status_code == 200
    finally:
        command.stop()


@pytest.mark.parametrize("access_log", [False, True])
def test_api_runs_several_workers_and_logs_requests_only_when_asked(
    db_url: str, tmp_path: Path, access_log: bool
) -> None:
    port = free_port()
    flags = ["--access-log"] if access_log else []
    command = Command.kala("api", "-p", str(port), "-w", "3", *flags,
                           "--data-dir", str(tmp_path / "data"), log=tmp_path / "api.log",
                           env={"KALA_DATABASE_URL": db_url})
    try:
        wait_for(lambda: answers(port) or command.proc.poll() is not None, 60, "api")
        assert command.proc.poll() is None, command.output()
        wait_for(lambda: len(children_of(command.proc.pid)) == 3, 30, "three workers")
        base = f"http://127.0.0.1:{port}/api/v1"
        ids = set()
        for n in range(12):  # new connections: the workers share them
            created = ours.post(f"{base}/job/", json={"name": f"j{n}", "command": "true",
                                                      "schedule": f"R/{future()}/PT1H"})
            assert created.status_code == 201, created.text
            ids.add(created.json()["id"])
        assert set(ours.get(f"{base}/job/").json()["jobs"]) == ids
    finally:
        assert command.stop() == 0, command.output()
    logged = '"POST /api/v1/job/ HTTP/1.1" 201' in command.output()
    assert logged == access_log, command.output()[-2000:]
