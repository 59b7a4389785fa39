"""Celery-task jobs (type 2, Decision 19): the API's checks, and runs of a team's own tasks on
its own `celery worker` (tests/own_celery_app.py, its own queue) next to ours on the default
queue, dispatched by a real beat, with unknown task names and queues nobody serves."""

from __future__ import annotations

import json
import re
import signal
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select

from kala_celery import wire
from kala_celery.api import create_app
from kala_celery.config import Settings
from kala_celery.runs import sweep
from kala_celery.store.tables import Job, Run
from tests.live import Api
from tests.processes import Command
from tests.test_api_jobs import future
from tests.test_beat import soon
from tests.test_worker_runs import finished, runs_of

pytestmark = pytest.mark.timeout(240)

ADD = {"name": "tests.own_celery_app.add", "args": [2, 3], "kwargs": {"scale": 10}}


def task_job(**extra: object) -> dict:
    return {"name": "report", "type": 2, "celery_task": ADD, "schedule": f"R/{future()}/PT1H",
            **extra}


@pytest.mark.parametrize(("body", "decoded"), [
    ('{"celery_task": {"name": "a.b"}}', {"name": "a.b"}),
    ('{"CELERY_TASK": {"Name": "a.b", "ARGS": [1]}}', {"name": "a.b", "args": [1]}),
    ('{"celery_task": {"args": [1, -2.5, "x", true, null, [], {"k": [{}]}]}}',
     {"args": [1, -2.5, "x", True, None, [], {"k": [{}]}]}),
    ('{"celery_task": {"kwargs": {"a": {"b": 1e3}, "c": "\\u00e9"}}}',
     {"kwargs": {"a": {"b": 1000.0}, "c": "\u00e9"}}),
    ('{"celery_task": {"args": [123456789012345678901234567890]}}',
     {"args": [123456789012345678901234567890]}),
    ('{"celery_task": {"args": [1], "args": null}}', {}),  # null: Go's nil slice
    ('{"celery_task": {"args": [1]}, "celery_task": {"name": "n"}}',
     {"args": [1], "name": "n"}),  # a repeated struct key merges, as in Go
    ('{"celery_task": null}', None),
    ('{"parents_mode": "all"}', None),
])
def test_celery_task_decodes_as_plain_json(body: str, decoded: dict | None) -> None:
    out = wire.decode_job(body.encode())
    assert out.get("celery_task") == decoded
    if "parents_mode" in body:
        assert out["parents_mode"] == "all"


@pytest.mark.parametrize(("body", "message"), [
    ('{"celery_task": []}', "array into Go struct field Job.celery_task of type job.CeleryTask"),
    ('{"celery_task": {"args": "1"}}', "string into Go struct field CeleryTask.celery_task.args"),
    ('{"celery_task": {"args": {}}}', "object into Go struct field CeleryTask.celery_task.args"),
    ('{"celery_task": {"kwargs": 1}}', "number into Go struct field CeleryTask.celery_task.kwargs"),
    ('{"celery_task": {"kwargs": [{}]}}',
     "array into Go struct field CeleryTask.celery_task.kwargs"),
    ('{"celery_task": {"args": [-1e400]}}', "number -1e400 does not fit in a float64"),
    ('{"celery_task": {"kwargs": {"a": [1e999]}}}', "number 1e999 does not fit"),
    ('{"celery_task": {"name": ["a"]}}', "array into Go struct field CeleryTask.celery_task.name"),
    ('{"parents_mode": true}', "bool into Go struct field Job.parents_mode of type string"),
])
def test_celery_task_that_is_not_json_of_its_kind_is_refused(body: str, message: str) -> None:
    with pytest.raises(wire.WireError, match=re.escape(message)):
        wire.decode_job(body.encode())


NOW = datetime(2026, 12, 1, 12, tzinfo=UTC)
BOUND = timedelta(seconds=30)


@pytest.mark.parametrize(("queue", "idle", "redeliveries", "waited", "verdict"), [
    ("q", {"q"}, 0, 31, "again"),  # its queue is empty: its message was lost or dropped
    (None, {None}, 0, 31, "again"),
    ("q", {"q"}, 1, 31, "no worker took this run from queue 'q', sent 2 times"),
    (None, {None}, 3, 31, "from the default queue, sent 4 times"),
    ("q", set(), 0, 31, None),  # its message still waits there: not yet
    ("q", {"other"}, 0, 60, None),
    ("q", set(), 0, 61, "no worker took this run from queue 'q' within 61 s"),
    ("q", set(), 1, 61, "within 61 s: is a worker consuming that queue?"),
    (None, set(), 0, 3600, "from the default queue within 3600 s"),
])
def test_what_the_sweep_does_with_a_task_run_nobody_took(
    queue: str | None, idle: set, redeliveries: int, waited: int, verdict: str | None
) -> None:
    run = sweep.Untaken("r", queue, redeliveries, NOW - timedelta(seconds=waited))
    again, failed = sweep.task_verdicts([run], idle, NOW, BOUND)
    if verdict == "again":
        assert (again, failed) == (["r"], [])
    elif verdict is None:
        assert (again, failed) == ([], [])
    else:
        [(run_id, error)] = failed
        assert again == [] and run_id == "r" and verdict in error


def refused(api: Api, body: dict | bytes) -> str:
    if isinstance(body, bytes):
        response = api.http.post("/job/", content=body)
    else:
        response = api.http.post("/job/", json=body)
    assert response.status_code == 400, response.text
    with api.state.sessions() as session:
        assert session.scalars(select(Run)).all() == []
    return response.json()["error"]


def test_a_celery_task_job_round_trips_and_bad_ones_are_refused(api: Api) -> None:
    job_id = api.create(**task_job(queue="theirs", parents_mode="any"))
    job = api.job(job_id)
    assert (job["type"], job["celery_task"], job["queue"]) == (2, ADD, "theirs")
    assert "parents_mode" not in job  # the default is not shown
    bare = api.job(api.create(**task_job(celery_task={"name": "x.y"})))
    assert bare["celery_task"] == {"name": "x.y", "args": [], "kwargs": {}}
    assert "celery_task" not in api.job(api.create(name="plain", command="true",
                                                   schedule=f"R/{future()}/PT1H"))

    assert "needs celery_task.name" in refused(api, task_job(celery_task={"args": []}))
    assert "needs celery_task.name" in refused(api, {"name": "n", "type": 2})
    assert "of type []interface {}" in refused(api, task_job(celery_task={**ADD, "args": {}}))
    assert "map[string]interface {}" in refused(api, task_job(celery_task={**ADD, "kwargs": [1]}))
    assert "celery_task.name" in refused(api, task_job(celery_task={**ADD, "name": 7}))
    body = json.dumps(task_job()).replace('"args": [2, 3]', '"args": [1e999]').encode()
    assert "1e999 does not fit" in refused(api, body)
    assert "is not a task name" in refused(api, task_job(celery_task={"name": "a b"}))
    assert "kala-celery's own tasks" in refused(api, task_job(celery_task={"name": "kala.run"}))
    assert "run_timeout does not apply" in refused(api, task_job(run_timeout="PT5S"))
    assert "for Celery-task jobs (type 2)" in refused(
        api, {"name": "n", "command": "true", "celery_task": ADD})
    assert "type must be 0" in refused(api, task_job(type=3))
    assert 'parents_mode must be "any"' in refused(api, task_job(parents_mode="both"))

    # a replace keeps the rules too: a refused one changes nothing
    response = api.http.put(f"/job/{job_id}/", json=task_job(celery_task={"args": [1]}))
    assert response.status_code == 400
    assert api.job(job_id)["celery_task"] == ADD


def start(api: Api, job_id: str) -> None:
    assert api.http.post(f"/job/start/{job_id}/?wait=false").status_code == 202


def redeliveries(api: Api, job_id: str) -> list[int]:
    with api.state.sessions() as session:
        return list(session.scalars(select(Run.redeliveries).where(Run.job_id == job_id)))


def stop_together(commands: list[Command]) -> None:
    """Ask every process to stop at once (the fixture then waits for each in turn)."""
    for command in commands:
        command.proc.send_signal(signal.SIGTERM)


def test_celery_task_jobs_on_their_own_workers(cluster) -> None:
    processes = [
        cluster.worker(),  # ours, on the default queue: it knows kala.run, none of their tasks
        cluster.worker("-Q", "theirs", app="tests.own_celery_app",
                       extra_env={"THEIR_WORKER": "theirs"}),
        cluster.worker("-Q", "plain", app="tests.plain_celery_app"),  # knows no kala.run
        cluster.beat(extra_env={"KALA_REDELIVER_AFTER": "PT2S"}),
    ]
    api = cluster.api
    fine = api.create(id="fine", name="fine", type=2, celery_task=ADD, queue="theirs",
                      schedule=f"R0/{soon(2)}/")
    api.create(id="after", name="after", command="echo after", parent_jobs=["fine"])
    api.create(id="cleanup", name="cleanup", command="true", schedule=f"R/{future()}/PT1H")
    boom = api.create(name="boom", type=2, queue="theirs", retries=1, on_failure_job="cleanup",
                      celery_task={"name": "tests.own_celery_app.explode", "args": ["boom!"]},
                      schedule=f"R/{future()}/PT1H")
    unknown = api.create(name="unknown", type=2, queue="theirs",
                         celery_task={"name": "tests.own_celery_app.nope"},
                         schedule=f"R/{future()}/PT1H")
    default = api.create(name="default", type=2, celery_task=ADD, schedule=f"R/{future()}/PT1H")
    nobody = api.create(name="nobody", type=2, celery_task=ADD, queue="nobody",
                        schedule=f"R/{future()}/PT1H")
    plain = api.create(name="plain", type=2, celery_task=ADD, queue="plain",
                       schedule=f"R/{future()}/PT1H")
    for job_id in (boom, unknown, default, nobody, plain):
        start(api, job_id)

    [run] = finished(api, fine)  # fired by the beat, run by their worker
    assert (run["state"], run["trigger"]) == ("success", "schedule")
    assert json.loads(run["output"]) == {"sum": 50, "worker": "theirs"}
    assert api.job(fine)["metadata"]["success_count"] == 1
    [child] = finished(api, "after")  # a dependent runs after it, on our worker
    assert (child["state"], child["output"]) == ("success", "after")

    [run] = finished(api, boom)
    assert (run["state"], run["error"], run["number_of_retries"]) == (
        "failed", "ValueError: boom!", 1)
    assert "Traceback" in run["output"] and "boom!" in run["output"]
    assert api.job(boom)["metadata"]["error_count"] == 2
    [cleanup] = finished(api, "cleanup")
    assert cleanup["trigger"] == "on_failure"

    [run] = finished(api, unknown)
    assert run["state"] == "failed"
    assert "task 'tests.own_celery_app.nope' is not registered on worker w1-" in run["error"]
    [run] = finished(api, default)  # no queue: the default queue, where our worker is
    assert run["state"] == "failed"
    assert "'tests.own_celery_app.add' is not registered on worker w0-" in run["error"]

    # Nobody consumes "nobody": the message waits there, is not sent again, and the run fails.
    [run] = finished(api, nobody, timeout=90)
    assert run["state"] == "failed"
    assert "no worker took this run from queue 'nobody' within" in run["error"]
    assert redeliveries(api, nobody) == [0]
    # Their plain worker drops kala.run (unregistered): sent once more, then failed.
    [run] = finished(api, plain, timeout=90)
    assert run["state"] == "failed"
    assert "from queue 'plain', sent 2 times" in run["error"]
    assert "import kala_celery.tasks" in run["error"]
    assert redeliveries(api, plain) == [1]
    assert api.job(plain)["metadata"]["error_count"] == 1
    assert [r["state"] for r in runs_of(api, plain)] == ["failed"]  # and stays failed
    stop_together(processes)


def test_the_dashboard_shows_and_makes_celery_task_jobs(db_url: str, tmp_path: Path) -> None:
    app = create_app(Settings(database_url=db_url, data_dir=tmp_path), publish=lambda runs: None)
    client = app.test_client()
    page = client.get("/webui/new").get_data(as_text=True)
    token = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
    assert '<option value="2"' in page and 'data-section="task"' in page
    start = future()
    form = {"csrf": token, "name": "report", "type": "2", "schedule": f"R/{start}/PT1H",
            "task_name": ADD["name"], "task_args": "[2, 3]", "task_kwargs": '{"scale": 10}',
            "queue": "theirs", "parents_all": "on", "command": "ignored"}
    created = client.post("/webui/new", data=form)
    assert created.status_code == 302, created.get_data(as_text=True)
    job_id = created.headers["Location"].split("/")[3]
    job = client.get(f"/api/v1/job/{job_id}/").get_json()["job"]
    assert (job["celery_task"], job["queue"], job["parents_mode"], job["command"]) == (
        ADD, "theirs", "all", "")

    shown = client.get(f"/webui/job/{job_id}/").get_data(as_text=True)
    assert "Celery task" in shown and ADD["name"] in shown and "[2, 3]" in shown
    assert "<dt>Command</dt>" not in shown  # it has none
    assert "all parents have succeeded" in shown
    listed = client.get("/webui/").get_data(as_text=True)
    assert re.search(r'data-label="Type">Celery task<', listed)
    edit = client.get(f"/webui/job/{job_id}/edit").get_data(as_text=True)
    assert f'value="{ADD["name"]}"' in edit and "[2, 3]" in edit

    with app.extensions["kala"].sessions() as session:
        before = session.scalar(select(func.count()).select_from(Job))
    for field, value, reason in (("task_args", "[2,", "Arguments: not JSON"),
                                 ("task_kwargs", "[1]", "celery_task.kwargs"),
                                 ("task_name", "", "needs celery_task.name")):
        refused = client.post("/webui/new", data={**form, field: value})
        text = refused.get_data(as_text=True)
        assert refused.status_code == 400 and reason in text, (field, text[:2000])
        assert re.search(rf'id="f-{field}"[^>]*aria-invalid="true"', text), field
    with app.extensions["kala"].sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == before
