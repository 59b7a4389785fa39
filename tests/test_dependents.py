"""Dependent jobs as Celery chains and on-failure jobs (docs/kala.md §10), on real workers."""

from __future__ import annotations

from datetime import datetime

import pytest

from tests.live import Api
from tests.processes import wait_for
from tests.test_api_jobs import future
from tests.test_worker_runs import finished, runs_of

pytestmark = pytest.mark.timeout(180)


def parent(api: Api, name: str, command: str = "true", **extra: object) -> str:
    return api.create(id=name, name=name, command=command, schedule=f"R/{future()}/PT1H", **extra)


def child(api: Api, name: str, *parents: str, command: str = "true", **extra: object) -> str:
    return api.create(id=name, name=name, command=command, parent_jobs=list(parents), **extra)


def start(api: Api, job_id: str) -> None:
    assert api.http.post(f"/job/start/{job_id}/").status_code == 204


def ran_at(api: Api, job_id: str, index: int = 0) -> datetime:
    return datetime.fromisoformat(runs_of(api, job_id)[index]["ran_at"])


def states(api: Api, job_id: str) -> list[str]:
    return [r["state"] for r in runs_of(api, job_id)]


def test_two_children_run_fifo_after_the_parent(cluster) -> None:
    cluster.worker(concurrency=4)
    api = cluster.api
    parent(api, "p")
    child(api, "a", "p", command="sleep 0.3")
    child(api, "b", "p")
    start(api, "p")
    finished(api, "b")
    assert states(api, "a") == states(api, "b") == ["success"]
    assert ran_at(api, "p") < ran_at(api, "a") < ran_at(api, "b")
    run_a = runs_of(api, "a")[0]
    assert run_a["trigger"] == "parent"


def test_a_chain_of_five_runs_in_order(cluster) -> None:
    cluster.worker(concurrency=4)
    api = cluster.api
    parent(api, "j1")
    for number in range(2, 6):
        child(api, f"j{number}", f"j{number - 1}")
    start(api, "j1")
    finished(api, "j5")
    times = [ran_at(api, f"j{n}") for n in range(1, 6)]
    assert times == sorted(times)
    assert [api.job(f"j{n}")["metadata"]["success_count"] for n in range(1, 6)] == [1] * 5


def test_depth_first_and_a_failing_middle_child(cluster) -> None:
    """p -> a (fails) -> aa ; p -> b ; a's child is skipped, b still runs, after a."""
    cluster.worker(concurrency=4)
    api = cluster.api
    parent(api, "p")
    child(api, "a", "p", command="false")
    child(api, "aa", "a")
    child(api, "b", "p")
    start(api, "p")
    finished(api, "b")
    finished(api, "aa")
    assert (states(api, "a"), states(api, "aa"), states(api, "b")) == (
        ["failed"], ["skipped"], ["success"])
    assert "parent run" in runs_of(api, "aa")[0]["error"]
    assert ran_at(api, "a") < ran_at(api, "aa") < ran_at(api, "b")  # depth first


def test_a_failing_parent_runs_no_children(cluster) -> None:
    cluster.worker()
    api = cluster.api
    parent(api, "p", command="false", retries=1)
    child(api, "a", "p")
    start(api, "p")
    finished(api, "a")
    assert states(api, "p") == ["failed"] and states(api, "a") == ["skipped"]
    assert api.job("a")["metadata"]["number_of_finished_runs"] == 0
    assert api.http.get("/job/stats/a/").json()["job_stats"] is None
    # as Kala leaves a child that did not run: never attempted, not done
    assert api.job("a")["metadata"]["last_attempted_run"] == "0001-01-01T00:00:00Z"
    assert api.job("a")["is_done"] is False


def test_a_disabled_child_is_skipped_and_its_sibling_runs(cluster) -> None:
    cluster.worker()
    api = cluster.api
    parent(api, "p")
    child(api, "off", "p", disabled=True)
    child(api, "on", "p")
    start(api, "p")
    finished(api, "on")
    finished(api, "off")
    assert states(api, "off") == ["skipped"] and states(api, "on") == ["success"]
    assert api.job("p")["metadata"]["success_count"] == 1


def test_a_child_with_two_parents_runs_after_each(cluster) -> None:
    cluster.worker()
    api = cluster.api
    parent(api, "p1")
    parent(api, "p2")
    child(api, "shared", "p1", "p2")
    start(api, "p1")
    finished(api, "shared")
    start(api, "p2")
    runs = finished(api, "shared", count=2)
    assert [r["status"] for r in runs] == ["Success", "Success"]


def test_starting_the_parent_twice_runs_the_children_twice(cluster) -> None:
    cluster.worker()
    api = cluster.api
    parent(api, "p")
    child(api, "a", "p")
    start(api, "p")
    start(api, "p")
    assert len(finished(api, "a", count=2)) == 2


def test_deleting_children_and_parents_while_linked(cluster) -> None:
    cluster.worker()
    api = cluster.api
    parent(api, "p1")
    parent(api, "p2")
    child(api, "only", "p1")
    child(api, "shared", "p1", "p2")
    child(api, "gone", "p2")
    api.http.delete("/job/gone/")
    api.http.delete("/job/p1/")  # takes "only" with it; "shared" keeps p2
    assert api.http.get("/job/only/").status_code == 404
    start(api, "p2")
    finished(api, "shared")
    assert states(api, "shared") == ["success"]


def test_on_failure_job_runs_once_after_the_last_attempt(cluster) -> None:
    cluster.worker()
    api = cluster.api
    parent(api, "handler")
    parent(api, "off-handler", disabled=True)
    parent(api, "flaky", command="false", retries=2, on_failure_job="handler")
    parent(api, "fine", on_failure_job="handler")
    parent(api, "to-disabled", command="false", on_failure_job="off-handler")
    start(api, "flaky")
    [run] = finished(api, "handler")
    assert run["trigger"] == "on_failure"
    start(api, "fine")
    start(api, "to-disabled")
    wait_for(lambda: states(api, "to-disabled") == ["failed"], 30, "to-disabled failed")
    assert len(runs_of(api, "handler")) == 1  # not on success, once per failed run
    assert runs_of(api, "off-handler") == []  # a disabled job never fires
    assert api.job("flaky")["metadata"]["error_count"] == 3


def test_unbounded_trees_are_refused(api: Api) -> None:
    parent(api, "root")
    previous = "root"
    for number in range(32):
        previous = child(api, f"c{number}", previous)
    deeper = api.http.post("/job/", json={"name": "x", "command": "true",
                                          "parent_jobs": [previous]})
    assert deeper.status_code == 400 and "32 levels" in deeper.json()["error"]
