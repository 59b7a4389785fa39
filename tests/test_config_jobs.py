"""Jobs from a Celery app's beat_schedule (Decision 30 in docs/design.md): how each kind of
entry converts or is left out, a sync that runs twice or races itself changes nothing the
second time, and over real HTTP the API refuses to edit or delete such a job (409 naming the
entry) and refuses a client's `source: "config"` (400)."""

from __future__ import annotations

import logging
import threading
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from celery.schedules import crontab, schedule, solar
from sqlalchemy import func, select

from kala_celery import wire
from kala_celery.beat.beat_schedule import job_id_for, sync_from_code, wanted
from kala_celery.store import jobs
from kala_celery.store.tables import Job, utcnow
from tests.live import Api
from tests.test_api_jobs import future


def app_with(entries: dict[str, dict[str, Any]], **conf: Any) -> Celery:
    app = Celery("their_app", broker="memory://", set_as_current=False)
    app.conf.update(beat_schedule=entries, **conf)
    return app


def test_each_kind_of_entry_converts_or_is_left_out_with_one_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    entries = {
        "weekday mornings": {"task": "t.a", "schedule": crontab(minute=0, hour="7,9",
                                                               day_of_week="mon-fri"),
                             "args": (1, (2, 3)), "options": {"queue": "reports",
                                                              "priority": 3}},
        "every 90 s": {"task": "t.b", "schedule": timedelta(seconds=90), "kwargs": {"k": 1},
                       "options": {"expires": 20}},
        "number": {"task": "t.c", "schedule": 7200},
        "plain schedule": {"task": "t.d", "schedule": schedule(timedelta(hours=25))},
        "sunset": {"task": "t.e", "schedule": solar.__new__(solar)},  # ephem is not needed
        "custom": {"task": "t.f", "schedule": object()},
        "half a second": {"task": "t.g", "schedule": 0.5},
        "both days": {"task": "t.h", "schedule": crontab(day_of_month=1, day_of_week=1)},
        "not json": {"task": "t.i", "schedule": 60, "args": (object(),)},
    }
    with caplog.at_level(logging.WARNING):
        want = wanted(app_with(entries, timezone="America/New_York",
                               beat_cron_starting_deadline=45))
    by_name = {body["name"]: body for body in want.bodies.values()}
    cron = by_name["weekday mornings"]
    assert (cron["cron"], cron["timezone"], cron["queue"], cron["epsilon"]) == (
        "0 7,9 * * mon-fri", "America/New_York", "reports", "PT45S")
    assert cron["celery_task"] == {"name": "t.a", "args": [1, [2, 3]], "kwargs": {}}
    assert cron["type"] == 2 and cron["source"] == "config"
    assert by_name["every 90 s"]["epsilon"] == "PT20S"
    assert "cron" not in by_name["every 90 s"] and "timezone" not in by_name["number"]
    assert want.intervals == {job_id_for("every 90 s"): "PT1M30S",
                              job_id_for("number"): "PT2H",
                              job_id_for("plain schedule"): "PT25H"}
    assert set(want.left_out) == {"sunset", "custom", "half a second", "both days", "not json"}
    lines = [r.getMessage() for r in caplog.records]
    for name in want.left_out:
        assert sum(f"entry {name!r} left out" in line for line in lines) == 1, lines
    assert sum("option priority is not carried" in line for line in lines) == 1


def test_job_ids_are_stable_valid_and_distinct() -> None:
    names = ["tick", "Tick", "tick!", "a" * 300, "über/ñ", "", "all", "stats"]
    ids = [job_id_for(name) for name in names]
    assert len(set(ids)) == len(ids)
    assert ids == [job_id_for(name) for name in names]
    for job_id in ids:
        jobs.check_id(job_id)  # raises when the store could not serve it
        assert len(job_id) <= 60


def _config_jobs(api: Api) -> dict[str, Job]:
    with api.state.sessions() as session:
        found = session.scalars(select(Job).where(Job.source == "config")).all()
        session.expunge_all()
    return {job.id: job for job in found}


def test_a_second_sync_and_racing_syncs_change_nothing(api: Api) -> None:
    entries = {"hourly": {"task": "t.a", "schedule": timedelta(hours=1)},
               "nightly": {"task": "t.b", "schedule": crontab(minute=30, hour=2)}}
    want = wanted(app_with(entries))
    outcomes: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            outcomes.append(sync_from_code(api.state.sessions, want, jobs.Rules(), utcnow()))
        except BaseException as exc:  # reported by the assert below
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors, errors
    assert sorted(len(o.created) for o in outcomes) == [0, 0, 0, 2]
    first = _config_jobs(api)
    assert set(first) == {job_id_for("hourly"), job_id_for("nightly")}
    later = sync_from_code(api.state.sessions, wanted(app_with(entries)), jobs.Rules(),
                           utcnow() + timedelta(minutes=5))
    assert (later.created, later.updated, later.disabled) == ([], [], [])
    again = _config_jobs(api)
    assert {i: (j.schedule, j.next_run_at) for i, j in again.items()} == {
        i: (j.schedule, j.next_run_at) for i, j in first.items()}


def test_the_api_keeps_config_jobs_read_only_and_names_the_entry(api: Api) -> None:
    entries = {"nightly report": {"task": "reports.nightly", "schedule": timedelta(hours=1)}}
    sync_from_code(api.state.sessions, wanted(app_with(entries)), jobs.Rules(), utcnow())
    job_id = job_id_for("nightly report")
    doc = api.job(job_id)
    assert doc["source"] == "config" and doc["type"] == 2
    assert "'nightly report'" not in doc["name"] and doc["name"] == "nightly report"

    body = {"name": "renamed", "type": 2, "celery_task": {"name": "x.y"},
            "schedule": f"R/{future()}/PT1H"}
    for response in (api.http.put(f"/job/{job_id}/", json=body),
                     api.http.delete(f"/job/{job_id}/"),
                     api.http.post("/job/", json={**body, "id": job_id})):
        assert response.status_code == 409, response.text
        assert "beat_schedule entry 'nightly report'" in response.json()["error"]
    assert api.job(job_id)["name"] == "nightly report"

    assert api.http.post(f"/job/disable/{job_id}/").status_code == 204
    assert api.job(job_id)["disabled"] is True
    assert api.http.post(f"/job/enable/{job_id}/").status_code == 204
    assert api.http.post(f"/job/start/{job_id}/?wait=false").status_code == 202

    page = api.raw.get(f"/webui/job/{job_id}/").text
    assert "from beat_schedule entry 'nightly report'" in page
    assert f"/webui/job/{job_id}/edit" not in page
    edit = api.raw.get(f"/webui/job/{job_id}/edit")
    assert edit.status_code == 302  # back to the job's page, which says why

    # nor can another job take it as its dependent job (it would leave its schedule)
    response = api.http.post("/job/", json={"name": "parent", "command": "true",
                                            "dependent_jobs": [job_id]})
    assert response.status_code == 409, response.text
    assert "beat_schedule entry 'nightly report'" in response.json()["error"]

    # DELETE /job/all/ takes every job but this one, whose code still asks for it
    plain = api.create(name="plain", command="true", schedule=f"R/{future()}/PT1H")
    assert "source" not in api.job(plain)  # Kala's shape for the API's jobs
    assert api.http.delete("/job/all/").status_code == 204
    assert set(api.http.get("/job/").json()["jobs"]) == {job_id}


@pytest.mark.parametrize("source", ["config", "elsewhere"])
def test_a_client_cannot_claim_a_job_came_from_code(api: Api, source: str) -> None:
    body = {"name": "mine", "command": "true", "schedule": f"R/{future()}/PT1H",
            "source": source}
    response = api.http.post("/job/", json=body)
    assert response.status_code == 400, response.text
    assert "source" in response.json()["error"]
    plain = api.create(name="plain", command="true", schedule=f"R/{future()}/PT1H")
    response = api.http.put(f"/job/{plain}/", json={**body, "name": "plain"})
    assert response.status_code == 400
    with api.state.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_source_decodes_as_a_go_string() -> None:
    assert wire.decode_job(b'{"SOURCE": "apply"}')["source"] == "apply"
    with pytest.raises(wire.WireError, match=r"Job\.source of type string"):
        wire.decode_job(b'{"source": 1}')


def test_an_app_without_a_beat_schedule_leaves_jobs_from_code_alone() -> None:
    from kala_celery.celery_app import make_celery
    from kala_celery.config import Settings

    assert wanted(make_celery(Settings(broker_url="memory://"))).empty  # `kala-celery beat`
    assert wanted(app_with({})).empty
    only_solar = wanted(app_with({"sunset": {"task": "t", "schedule": solar.__new__(solar)}}))
    assert not only_solar.empty  # its app has a schedule: its stale jobs are disabled


def test_an_entry_the_store_refuses_is_logged_and_the_others_land(
    api: Api, caplog: pytest.LogCaptureFixture
) -> None:
    taken = job_id_for("taken")
    api.create(id=taken, name="the api's", command="true", schedule=f"R/{future()}/PT1H")
    entries = {"taken": {"task": "t.a", "schedule": 60},
               "fine": {"task": "t.b", "schedule": 60}}
    with caplog.at_level(logging.ERROR):
        done = sync_from_code(api.state.sessions, wanted(app_with(entries)), jobs.Rules(),
                              utcnow())
    assert done.created == [job_id_for("fine")] and set(done.refused) == {taken}
    assert "entry 'taken' left out" in caplog.text and "not from beat_schedule" in caplog.text
    assert api.job(taken)["name"] == "the api's" and "source" not in api.job(taken)
