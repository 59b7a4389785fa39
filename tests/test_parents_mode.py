"""`parents_mode: "all"` (Decision 20): a child with several parents runs once each of them
has succeeded since its own last run; a parent's failure neither counts nor clears; two
parents ending at the same moment on two workers start the child once. Real workers, both
databases."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from kala_celery.config import Settings
from kala_celery.runs import attempts
from kala_celery.runs.outcome import Outcome
from kala_celery.store.tables import Run, utcnow
from tests.live import Api
from tests.processes import wait_for
from tests.test_api_jobs import future
from tests.test_celery_task_jobs import stop_together
from tests.test_worker_runs import finished, runs_of

pytestmark = pytest.mark.timeout(240)

# Sleeps until the moment written in the file it is given: parents started together end
# together.
UNTIL = (f"{sys.executable} -c \"import sys, time; "
         "time.sleep(max(0, float(open(sys.argv[1]).read()) - time.time()))\"")


def job(api: Api, name: str, command: str = "true", **extra: object) -> str:
    if "parent_jobs" not in extra:
        extra["schedule"] = f"R/{future()}/PT1H"
    return api.create(id=name, name=name, command=command, **extra)


def start(api: Api, job_id: str) -> None:
    assert api.http.post(f"/job/start/{job_id}/?wait=false").status_code == 202


def ended(api: Api, job_id: str, count: int) -> list[dict]:
    return finished(api, job_id, count)[:count]


def test_all_parents_and_a_failing_parent(cluster, tmp_path: Path) -> None:
    worker = cluster.worker(concurrency=2)
    api = cluster.api
    flag = tmp_path / "p1-ok"
    job(api, "p1", f"test -e {flag}")
    job(api, "p2")
    job(api, "both", "echo both", parent_jobs=["p1", "p2"], parents_mode="all")
    job(api, "either", parent_jobs=["p1", "p2"])  # Kala's default
    assert api.job("both")["parents_mode"] == "all"
    assert "parents_mode" not in api.job("either")

    start(api, "p2")
    ended(api, "p2", 1)
    finished(api, "either", 1)  # in p2's chain: after p2's run ended
    assert runs_of(api, "both") == []  # p1 has not succeeded yet

    start(api, "p1")  # fails: counts for nothing, clears nothing
    assert ended(api, "p1", 1)[0]["state"] == "failed"
    assert [r["state"] for r in finished(api, "either", 2)] == ["success", "skipped"]
    assert runs_of(api, "both") == []

    flag.touch()
    start(api, "p1")  # p2's success still counts: now both have succeeded
    assert ended(api, "p1", 2)[1]["state"] == "success"
    [run] = finished(api, "both", 1)
    assert (run["state"], run["trigger"], run["output"]) == ("success", "parent", "both")
    assert len(finished(api, "either", 3)) == 3  # OR: once per parent success

    start(api, "p1")  # only p1 since both's last run: not again
    ended(api, "p1", 3)
    finished(api, "either", 4)
    assert len(runs_of(api, "both")) == 1
    start(api, "p2")
    ended(api, "p2", 2)
    assert len(finished(api, "both", 2)) == 2

    # a replace that changes the mode counts the parents afresh
    body = {"name": "both", "command": "echo both", "parent_jobs": ["p1", "p2"]}
    assert api.http.put("/job/both/", json=body).status_code == 200
    assert "parents_mode" not in api.job("both")
    start(api, "p2")
    assert len(finished(api, "both", 3)) == 3  # OR now
    stop_together([worker])


def test_two_parents_ending_at_once_on_two_workers_start_the_child_once(
    cluster, tmp_path: Path
) -> None:
    processes = [cluster.worker(concurrency=1), cluster.worker(concurrency=1)]
    api = cluster.api
    moment = tmp_path / "moment"
    job(api, "r1", f"{UNTIL} {moment}")
    job(api, "r2", f"{UNTIL} {moment}")
    job(api, "rc", parent_jobs=["r1", "r2"], parents_mode="all")
    for round_ in range(1, 3):
        moment.write_text(str(time.time() + 1.0))
        start(api, "r1")
        start(api, "r2")
        first, second = ended(api, "r1", round_)[-1], ended(api, "r2", round_)[-1]
        assert first["state"] == second["state"] == "success"
        finished(api, "rc", round_)
        assert len(runs_of(api, "rc")) == round_  # once per round, never twice
    with api.state.sessions() as session:
        workers = session.execute(
            select(Run.job_id, Run.worker).where(Run.job_id.in_(["r1", "r2"]))
        ).all()
    # each round's two parents ran side by side on the two workers
    assert len({worker.rsplit("/", 1)[0] for _, worker in workers}) == 2
    wait_for(lambda: all(r["state"] == "success" for r in runs_of(api, "rc")), 30, "rc runs")
    stop_together(processes)


def test_two_parents_succeeding_in_overlapping_transactions_record_the_child_once(
    api: Api,
) -> None:
    """The race made certain: parent 1's success is recorded but not committed when parent
    2's is; the second waits for the first (the child's row lock; SQLite's one writer) and,
    seeing the first's mark, records the child's one run. Without the lock each would miss
    the other's uncommitted mark, and the child would never run."""
    job(api, "q1")
    job(api, "q2")
    job(api, "qc", parent_jobs=["q1", "q2"], parents_mode="all")
    for parent in ("q1", "q2"):
        start(api, parent)
    engine, now = api.state.engine, utcnow()
    with api.state.sessions() as session:
        ids = dict(session.execute(select(Run.job_id, Run.id)).all())
    claimed = {job_id: attempts.claim(engine, ids[job_id], "t/1", "t", now) for job_id in ids}

    def succeed(conn, job_id: str) -> list[str] | None:
        run, job_record, _ = claimed[job_id]
        return attempts.finish(conn, run, job_record, "t/1", "success", Outcome(True), Settings(),
                           now)

    second: list[list[str] | None] = []
    with engine.connect() as first:
        with first.begin():
            assert succeed(first, "q1") == []  # q2 has not succeeded (as far as it can see)

            def other() -> None:
                with engine.begin() as conn:
                    second.append(succeed(conn, "q2"))

            thread = threading.Thread(target=other)
            thread.start()
            thread.join(1.0)  # it waits for the first transaction
        thread.join(30)
    assert len(second) == 1 and len(second[0]) == 1
    with api.state.sessions() as session:
        child_runs = session.scalars(select(Run).where(Run.job_id == "qc")).all()
        assert [(r.id, r.trigger, r.parent_run_id) for r in child_runs] == [
            (second[0][0], "parent", ids["q2"])]
        assert session.scalar(select(func.count()).select_from(Run)) == 3
