"""The short chaos run (bench/chaos.py) on PostgreSQL + Redis: the production topology as real
processes (Redis without persistence, the API under granian, 2 beats, 2 workers), a mix of
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
    JobSpec("m1", manual=True),  # POST /job/start/ every 2 s, also while Redis is down
)


@pytest.mark.alone  # 5 s worker/redelivery bounds under faults: nothing beside it
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
                  "every successful run executed its command", "no run taken from a live worker"):
        assert outcome.check(check).ok, report


def test_the_checker_tells_a_rerun_after_a_worker_death_from_a_duplicate(tmp_path) -> None:
    """The checker itself, on made-up records: it must not pass a run that executed twice."""
    from collections import Counter
    from datetime import UTC, datetime, timedelta
    from types import SimpleNamespace

    from bench.chaos import Fault, Records, check

    t0 = datetime(2026, 1, 1, tzinfo=UTC)
    at = t0.timestamp()
    dead_pool, live_pool = 101, 202
    record = tmp_path / "executions.log"
    lines = [
        # r1: killed on a dead worker, then run again (attempt 2): a re-run, allowed
        f"start|r1|j1|1|{dead_pool}|{at + 1}|", f"start|r1|j1|2|{live_pool}|{at + 80}|",
        f"end|r1|j1|2|{live_pool}|{at + 81}|",
        # r2: run twice on live workers: a duplicate
        f"start|r2|j1|1|{live_pool}|{at + 2}|", f"end|r2|j1|1|{live_pool}|{at + 3}|",
        f"start|r2|j1|1|{live_pool}|{at + 4}|", f"end|r2|j1|1|{live_pool}|{at + 5}|",
        # r3: the job's first start after the fault, 64 s after the worker was back
        f"start|r3|j1|1|{live_pool}|{at + 75}|", f"end|r3|j1|1|{live_pool}|{at + 76}|",
    ]
    record.write_text("\n".join(lines) + "\n")
    records = Records(record)
    records.refresh()

    def run(run_id: str, seconds: int, attempts: int) -> dict:
        when = t0 + timedelta(seconds=seconds)
        return {"id": run_id, "job_id": "j1", "trigger": "schedule", "scheduled_for": when,
                "state": "success", "attempts": attempts, "created_at": when}

    runs = [run("r1", 0, 2), run("r2", 2, 1), run("r3", 75, 1),
            {**run("r4", 76, 0), "state": "sent"}]  # left open
    fault = Fault("worker", 1, at + 10, back=at + 11)
    outcome = check(
        runs, records, [fault], SimpleNamespace(dead_pools={dead_pool}), {"s1": "j1"},
        SimpleNamespace(jobs=[JobSpec("s1", every=1)]), {"created": at},
        SimpleNamespace(answers=Counter({"GET 200": 3}), errors=[], bad_answers=lambda: 0), [],
        [], tmp_path)
    once = outcome.check("every (job, scheduled_for) ran at most once")
    assert not once.ok and "1 duplicate executions" in once.detail, once.detail
    assert "1 re-run after a worker death" in once.detail, once.detail
    assert outcome.check("every job fired again after the last fault").ok
    assert not outcome.check("every job fired within 60 s").ok  # 64 s
    assert outcome.failures == ["every (job, scheduled_for) ran at most once",
                                "no run open after settling",
                                "every job fired within 60 s of each recovery"]
