"""Schemathesis against a real API (issue 17), shared by tests/test_fuzz_*.py and bench/fuzz.py.

`serve_sqlite` starts a real `kala-celery serve` (API, beat, worker, SQLite job store and
broker); `serve_topology` starts the production layout: `kala-celery api`, a `kala-celery
beat` and a `kala-celery worker` on PostgreSQL and Redis. The generated jobs do run, so every
process gets an environment in which a fuzzed command or URL can do nothing: PATH names no
directory (no program is found; the processes themselves are started by absolute path) and
every HTTP call goes to a proxy on a closed port.

`run_schemathesis` runs the `schemathesis` CLI (stateless and stateful phases, every check
except the two that assume a schema-valid body must be accepted or refused, which the
permissive Kala job body does not promise) and reads its JSON report; the server's access log
counts the requests. `consistency_problems` then reads the job store: no run without its job,
no link to a missing job, and every stored job reads back through the API and conforms.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import httpx
from sqlalchemy import create_engine, text

from tests.openapi_check import check_response, checker_for
from tests.processes import Command, free_port, port_open, wait_for

HARMLESS_ENV = {
    "PATH": "/nonexistent-kala-fuzz",  # a fuzzed command finds no program
    "ALL_PROXY": "http://127.0.0.1:9",  # a fuzzed URL reaches nothing (port 9: discard)
    "HTTP_PROXY": "http://127.0.0.1:9",
    "HTTPS_PROXY": "http://127.0.0.1:9",
    "NO_PROXY": "",
    # POST /job/start/{id}/ answers 202 with the run's id at once, so the stateful phase
    # follows its link to the execution
    "KALA_START_WAIT": "0",
}
CHECKS_CONFIG = Path(__file__).with_name("schemathesis.toml")  # which checks, and why
AGENT = "schemathesis/"


@dataclass
class Server:
    base_url: str
    db_url: str
    commands: list[Command]
    access_log: Path

    def requests(self) -> list[str]:
        """The access-log lines of the requests schemathesis made."""
        return [line for line in self.access_log.read_text(errors="replace").splitlines()
                if AGENT in line]

    def stop(self) -> None:
        for command in reversed(self.commands):
            command.stop()


def _wait_up(command: Command, port: int) -> None:
    wait_for(lambda: port_open(port) or command.proc.poll() is not None, 60, "API listening")
    assert command.proc.poll() is None, command.output()
    wait_for(lambda: httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code
             == 200, 60, "API healthy")


def serve_sqlite(tmp: Path) -> Server:
    """`kala-celery serve` on its embedded SQLite defaults, under tmp."""
    port = free_port()
    data = tmp / "data"
    log = tmp / "serve.log"
    command = Command.kala("serve", "-p", str(port), "--data-dir", str(data), "--access-log",
                           log=log, env=HARMLESS_ENV)
    server = Server(f"http://127.0.0.1:{port}", f"sqlite:///{data / 'kala.db'}", [command], log)
    try:
        _wait_up(command, port)
    except BaseException:
        server.stop()
        raise
    return server


def serve_topology(tmp: Path, db_url: str, redis_url: str) -> Server:
    """`kala-celery api`, `beat` and `worker` as separate processes on PostgreSQL and Redis."""
    port = free_port()
    env = {**HARMLESS_ENV, "KALA_DATABASE_URL": db_url, "KALA_BROKER_URL": redis_url,
           "KALA_DATA_DIR": str(tmp)}
    log = tmp / "api.log"
    api = Command.kala("api", "-p", str(port), "--access-log", log=log, env=env)
    server = Server(f"http://127.0.0.1:{port}", db_url, [api], log)
    try:
        _wait_up(api, port)
        server.commands.append(Command.kala("beat", "--pidfile=", log=tmp / "beat.log", env=env))
        server.commands.append(Command.kala("worker", "-c", "2", log=tmp / "worker.log",
                                            env=env))
    except BaseException:
        server.stop()
        raise
    return server


@dataclass
class FuzzResult:
    report: dict
    output: str
    returncode: int

    @property
    def generated(self) -> int:
        return int(self.report["test_cases"]["generated"])

    def failures(self) -> list[dict]:
        return list(self.report.get("failures") or [])

    def errors(self) -> list:
        return list(self.report.get("errors") or [])


def run_schemathesis(server: Server, report_dir: Path, *, max_examples: int, seed: int,
                     phases: str = "examples,coverage,fuzzing,stateful",
                     max_time: int | None = None, timeout: float = 1800) -> FuzzResult:
    """The schemathesis CLI against the server's own /api/v1/openapi.json."""
    args = [
        sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; "
        "sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())",
        "--config-file", str(CHECKS_CONFIG),
        "run", f"{server.base_url}/api/v1/openapi.json", "--url", server.base_url,
        "--max-examples", str(max_examples), "--seed", str(seed), "--phases", phases,
        "--request-timeout", "30", "--no-color", "--workers", "1",
        "--report", "json", "--report-dir", str(report_dir),
        "--suppress-health-check", "all", "--generation-database", "none",
    ]
    if max_time:
        args += ["--max-time", str(max_time)]
    report_dir.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=report_dir)  # anything it writes stays there
    reports = sorted(glob.glob(str(report_dir / "json-*.json")))
    assert reports, done.stdout[-3000:] + done.stderr[-3000:]
    with open(reports[-1]) as report:
        return FuzzResult(json.load(report), done.stdout + done.stderr, done.returncode)


def server_errors(server: Server) -> list[str]:
    """Access-log lines of any request answered 5xx."""
    return [line for line in server.requests() if '" 5' in line.rsplit("HTTP/", 1)[-1][:8]]


def consistency_problems(server: Server) -> list[str]:
    """What is wrong in the job store after the run (empty when all is well)."""
    engine = create_engine(server.db_url)
    problems = []
    queries = {
        "runs without their job": "SELECT count(*) FROM runs r LEFT JOIN jobs j "
                                  "ON j.id = r.job_id WHERE j.id IS NULL",
        "links to a missing parent": "SELECT count(*) FROM job_links l LEFT JOIN jobs j "
                                     "ON j.id = l.parent_id WHERE j.id IS NULL",
        "links to a missing child": "SELECT count(*) FROM job_links l LEFT JOIN jobs j "
                                    "ON j.id = l.child_id WHERE j.id IS NULL",
    }
    with engine.connect() as conn:
        for what, query in queries.items():
            count = conn.execute(text(query)).scalar_one()
            if count:
                problems.append(f"{count} {what}")
        ids = list(conn.execute(text("SELECT id FROM jobs")).scalars())
    engine.dispose()
    checker = checker_for()
    with httpx.Client(base_url=server.base_url, timeout=30) as client:
        listing = client.get("/api/v1/job/")
        check_response(checker, listing, ("/api/v1",))
        if listing.status_code != 200 or set(listing.json()["jobs"]) != set(ids):
            problems.append(f"GET /job/ answered {listing.status_code} without every stored job")
        for job_id in ids:
            response = client.get(f"/api/v1/job/{quote(job_id, safe='~:@')}/")
            try:
                check_response(checker, response, ("/api/v1",))
            except AssertionError as exc:
                problems.append(str(exc))
            if response.status_code != 200 or response.json()["job"]["id"] != job_id:
                problems.append(f"stored job {job_id!r} reads back as {response.status_code}")
        health = client.get("/health")
        if health.status_code != 200:
            problems.append(f"/health answered {health.status_code}: {health.text}")
    return problems


MIN_REQUESTS = 2000  # per database, in the test suite's bounded run
EXAMPLES = 32  # per operation and phase: what gives MIN_REQUESTS with this document
SEED = int(os.environ.get("KALA_FUZZ_SEED", "17"))


def assert_clean_run(server: Server, report_dir: Path, *, max_examples: int = EXAMPLES,
                     min_requests: int = MIN_REQUESTS) -> FuzzResult:
    """One bounded schemathesis run and every check of issue 17 on its outcome."""
    result = run_schemathesis(server, report_dir, max_examples=max_examples, seed=SEED)
    requests = server.requests()
    assert not server_errors(server), server_errors(server)[:5]
    assert not result.failures(), result.output[-6000:]
    assert not result.errors(), result.output[-6000:]
    assert result.report["phases"]["stateful"]["status"] == "success", result.report["phases"]
    assert len(requests) >= min_requests, (len(requests), result.generated)
    problems = consistency_problems(server)
    assert not problems, problems
    return result
