"""The short chaos run (bench/chaos.py) on PostgreSQL + Redis: the production topology as real
processes (Redis without persistence, the API under gunicorn, 2 beats, 2 workers), a mix of
short and long jobs with and without overlap and dependents, then a worker SIGKILLed mid-run
and Redis killed and restarted empty. Every command records its execution; afterwards no run
executed twice (except a re-run after its worker died), no run is left open, and every job
fired again after the last fault."""

from __future__ import annotations

import time
import uuid

import pytest

from bench.chaos import JobSpec, Plan, findings, run_chaos

# The engine's bounds, shortened so that the run takes about a minute.
ENV = {"KALA_REDELIVER_AFTER": "PT5S", "KALA_WORKER_TIMEOUT": "PT5S"}
JOBS = (
    JobSpec("s1", every=1),
    JobSpec("s2", every=2, overlap=True),
    JobSpec("l1", sleep=3, every=2, retries=1),
    JobSpec("l2", sleep=2, every=3, overlap=True),
    JobSpec("l3", sleep=4, every=3),
    JobSpec("c1", parent="s1"),
    JobSpec("c2", sleep=2, parent="l1", retries=1),
)


@pytest.mark.timeout(300)
def test_runs_survive_a_worker_kill_and_an_empty_redis(postgres_server, tmp_path) -> None:
    name = f"kala_chaos_{uuid.uuid4().hex[:10]}"
    db_url = postgres_server.create_database(name)
    plan = Plan(["worker", "redis"], every=12, warmup=45, recover=45, settle=3, drain=60,
                redis_down=1, jobs=JOBS, beats=2, workers=2, concurrency=2, env=ENV)
    began = time.monotonic()
    try:
        outcome = run_chaos(postgres_server, db_url, plan, tmp_path / "chaos")
    finally:
        postgres_server.drop_database(name)
    took = time.monotonic() - began
    report = "\n\n".join(t.text() for t in outcome.tables) + "\n" + findings(outcome)
    print(report, f"\n(took {took:.0f} s)")
    assert [f.kind for f in outcome.faults] == ["worker", "redis"]
    assert outcome.faults[0].killed_runs, "the worker was killed while it ran nothing\n" + report
    for check in ("every (job, scheduled_for) ran at most once", "no run open after settling",
                  "every job fired again after the last fault",
                  "every successful run executed its command"):
        assert outcome.check(check).ok, report
