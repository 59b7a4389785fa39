"""Job routes over real HTTP, on SQLite and PostgreSQL (docs/kala.md §1, §2, §4; Decisions)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from kala_celery.store.tables import Job, JobLink, Run
from tests.live import Api

JSON_TYPE = "application/json;charset=UTF-8"


def future(seconds: int = 3600) -> str:
    t = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=seconds)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def count(api: Api, model: type) -> int:
    with api.state.sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_create_answers_201_with_id_and_go_style_body(api: Api) -> None:
    start = future()
    response = api.http.post(
        "/job/", content=json.dumps({"name": "a", "command": "echo hi", "owner": "o@x",
                                     "schedule": f"R2/{start}/PT10S"})
    )
    assert response.status_code == 201
    assert response.headers["content-type"] == JSON_TYPE
    assert response.content.endswith(b"\n") and b" " not in response.content
    job_id = response.json()["id"]
    assert len(job_id) == 36
    raw = api.http.get(f"/job/{job_id}/").content
    expected = (
        '{"job":{"name":"a","id":"JOB_ID","command":"echo hi","owner":"o@x","disabled":false,'
        '"dependent_jobs":null,"parent_jobs":null,"on_failure_job":"",'
        '"schedule":"R2/START/PT10S","retries":0,"epsilon":"","next_run_at":"START",'
        '"TemplateDelimiters":"","resume_at_next_scheduled_time":false,'
        '"metadata":{"success_count":0,"last_success":"0001-01-01T00:00:00Z","error_count":0,'
        '"last_error":"0001-01-01T00:00:00Z","last_attempted_run":"0001-01-01T00:00:00Z",'
        '"number_of_finished_runs":0},"type":0,"remote_properties":{"url":"","method":"",'
        '"body":"","headers":null,"timeout":0,"expected_response_codes":null},"stats":null,'
        '"is_done":false}}\n'
    ).replace("JOB_ID", job_id).replace("START", start)
    assert raw.decode() == expected


def test_list_is_a_map_sorted_by_id_and_empty_map_when_none(api: Api) -> None:
    assert api.http.get("/job/").content == b'{"jobs":{}}\n'
    ids = [api.create(id=f"job-{c}", name=c, command="true", schedule=f"R/{future()}/PT1H")
           for c in "cab"]
    body = api.http.get("/job/").json()["jobs"]
    assert list(body) == sorted(ids)
    assert body["job-a"]["name"] == "a"


def test_input_keys_are_case_insensitive_and_last_wins(api: Api) -> None:
    body = b'{"NAME":"x","Command":"true","name":"y","Schedule":"","TemplateDelimiters":"{{ }}"}'
    job_id = api.http.post("/job/", content=body).json()["id"]
    job = api.job(job_id)
    assert (job["name"], job["TemplateDelimiters"]) == ("y", "{{ }}")


def test_go_client_full_job_shape_is_accepted(api: Api) -> None:
    zero = "0001-01-01T00:00:00Z"
    body = {
        "name": "go", "id": "", "command": "true", "owner": "", "disabled": False,
        "dependent_jobs": None, "parent_jobs": None, "on_failure_job": "",
        "schedule": f"R0/{future()}/", "retries": 0, "epsilon": "", "next_run_at": zero,
        "TemplateDelimiters": "", "resume_at_next_scheduled_time": False,
        "metadata": {"success_count": 0, "last_success": zero, "error_count": 0,
                     "last_error": zero, "last_attempted_run": zero,
                     "number_of_finished_runs": 0},
        "type": 0,
        "remote_properties": {"url": "", "method": "", "body": "", "headers": None,
                              "timeout": 0, "expected_response_codes": None},
        "stats": None, "is_done": False,
    }
    response = api.http.post("/job/", content=json.dumps(body) + "\n")
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    assert api.job(job_id)["metadata"]["last_success"] == zero
    with api.state.sessions() as session:  # stored as "never", not as year 1
        assert session.get(Job, job_id).last_success is None


def test_unknown_id_is_404_with_empty_body(api: Api) -> None:
    for method, path in [("GET", "/job/nope/"), ("DELETE", "/job/nope/"),
                         ("GET", "/job/stats/nope/"), ("POST", "/job/start/nope/"),
                         ("POST", "/job/enable/nope/"), ("POST", "/job/disable/nope/"),
                         ("GET", "/job/nope/executions/"), ("PUT", "/job/nope/")]:
        response = api.http.request(method, path, content=b'{"name":"x","command":"true"}')
        assert (response.status_code, response.content) == (404, b""), (method, path)


def test_get_job_all_reaches_the_id_route(api: Api) -> None:
    assert api.http.get("/job/all/").status_code == 404
    assert api.http.get("/job/all/").content == b""


def test_client_id_is_kept_and_a_taken_id_is_409(api: Api) -> None:
    assert api.create(id="nightly-report", name="n", command="true",
                      schedule=f"R/{future()}/P1D") == "nightly-report"
    again = api.http.post("/job/", json={"id": "nightly-report", "name": "n", "command": "true"})
    assert again.status_code == 409
    assert "already exists" in again.json()["error"]


def test_bad_or_reserved_client_ids_are_ignored_as_kala_ignores_ids(api: Api) -> None:
    """Decision 14: an id we cannot keep is ignored (Kala ignores every client id)."""
    for bad in ["all", "stats", "a/b", "has space", "x" * 129, "-lead"]:
        response = api.http.post("/job/", json={"id": bad, "name": "n", "command": "true"})
        assert response.status_code == 201, bad
        assert uuid.UUID(response.json()["id"]).version == 4, bad
    assert count(api, Job) == 6


def test_validation_errors_name_the_reason(api: Api) -> None:
    cases = [
        ({}, "name is required"),
        ({"name": "x"}, "command is required"),
        ({"name": "x", "type": 1}, "remote_properties.url"),
        ({"name": "x", "type": 3, "command": "true"}, "type must be 0"),
        ({"name": "x", "type": 2, "command": "true"}, "needs celery_task.name"),
        ({"name": "x", "command": "true", "schedule": f"R/{future()}/PT1H", "epsilon": "soon"},
         "epsilon"),
        ({"name": "x", "command": "true", "schedule": f"R/{future()}/PT0S"}, "greater than zero"),
        ({"name": "x", "command": "true", "timezone": "Mars/Olympus"}, ""),
        ({"name": "x", "command": "true", "retry_delay": "P1M"}, ""),
        ({"name": "x", "command": "true", "run_timeout": "forever"}, ""),
        ({"name": "x", "command": "true", "queue": "bad queue"}, "queue"),
        ({"name": "x", "command": "true", "parent_jobs": ["ghost"]}, "'ghost' does not exist"),
    ]
    for body, reason in cases:
        response = api.http.post("/job/", json=body)
        assert response.status_code == 400, (body, response.text)
        assert response.headers["content-type"] == JSON_TYPE
        error = response.json()["error"]
        assert error.startswith("Error occurred when initializing the job: "), error
        assert reason in error, (body, error)
    assert count(api, Job) == 0


def test_bodies_kala_accepts_are_accepted(api: Api) -> None:
    """Decision 23: what Kala answers 201 to (its runs then fail, as Kala's do)."""
    start = future()
    remote = {"name": "x", "type": 1, "schedule": f"R0/{start}/"}
    parent = api.create(name="p", command="true", schedule=f"R/{start}/PT1H")
    cases = [
        {"name": "x", "command": "   ", "schedule": f"R0/{start}/"},
        {"name": "x", "command": "true", "schedule": f"R0/{start}/", "TemplateDelimiters": "{{"},
        {"name": "x", "command": "true", "schedule": f"R3/{start}/PT0S"},
        {"name": "x", "command": "true", "epsilon": "soon", "parent_jobs": [parent]},
        {"name": "x", "command": "true", "schedule": f"R0/{start}/", "epsilon": ""},
        {**remote, "remote_properties": {"url": "ftp://h/", "method": "FETCH IT"}},
        {**remote, "remote_properties": {"url": "http://h/", "timeout": -1,
                                         "headers": {"Bad Name": ["a\nb"]},
                                         "expected_response_codes": [42]}},
        {"name": "x", "command": "true", "schedule": f"R0/{start}/", "id": "all"},
    ]
    for body in cases:
        response = api.http.post("/job/", json=body)
        assert response.status_code == 201, (body, response.text)
        job = api.job(response.json()["id"])
        assert job["remote_properties"] == {
            "url": "", "method": "", "body": "", "headers": None, "timeout": 0,
            "expected_response_codes": None, **body.get("remote_properties", {})}, body
        assert (job["command"], job["schedule"]) == (body.get("command", ""),
                                                     body.get("schedule", "")), body
    assert count(api, Job) == len(cases) + 1


def test_decode_errors_use_gos_messages(api: Api) -> None:
    cases = [
        (b"", "unexpected end of JSON input"),
        (b"asd", "invalid character 'a' looking for beginning of value"),
        (b"[1]", "json: cannot unmarshal array into Go value of type job.Job"),
        (b'{"type":"0"}', "json: cannot unmarshal string into Go struct field Job.type of type "
                          "job.jobType"),
        (b'{"retries":-1}', "json: cannot unmarshal number -1 into Go struct field Job.retries "
                            "of type uint"),
    ]
    for body, message in cases:
        response = api.http.post("/job/", content=body)
        assert (response.status_code, response.json()) == (400, {"error": message})


def test_extensions_round_trip_and_are_absent_by_default(api: Api) -> None:
    plain = api.job(api.create(name="p", command="true", schedule=f"R/{future()}/PT1H"))
    assert "timezone" not in plain and "queue" not in plain and list(plain)[-1] == "is_done"
    ext = {"timezone": "Europe/Berlin", "retry_delay": "PT5S", "retry_backoff": True,
           "run_timeout": "PT1M", "allow_overlap": True, "queue": "gpu-box"}
    job = api.job(api.create(name="e", command="true", schedule=f"R/{future()}/P1D", **ext))
    assert {k: job[k] for k in ext} == ext


def test_metadata_seed_is_kept(api: Api) -> None:
    job_id = api.create(name="m", command="true", schedule=f"R/{future()}/PT1H",
                        metadata={"success_count": 42})
    assert api.job(job_id)["metadata"]["success_count"] == 42


def test_replace_with_put(api: Api) -> None:
    job_id = api.create(name="old", command="true", schedule=f"R/{future()}/PT1H",
                        metadata={"success_count": 3})
    new_start = future(7200)
    response = api.http.put(f"/job/{job_id}/", json={"name": "new", "command": "echo new",
                                                     "schedule": f"R1/{new_start}/PT1H"})
    assert response.status_code == 200
    job = response.json()["job"]
    assert (job["id"], job["name"], job["command"]) == (job_id, "new", "echo new")
    assert job["next_run_at"] == new_start
    assert job["metadata"]["success_count"] == 3  # counters kept when the body omits them
    assert api.job(job_id) == job


def test_refused_put_changes_nothing(api: Api) -> None:
    job_id = api.create(name="keep", command="true", schedule=f"R/{future()}/PT1H")
    before = api.job(job_id)
    for body in [{"name": "x", "command": "true", "schedule": "R/2001-01-01T00:00:00Z/PT1H"},
                 {"name": "x", "command": "true", "schedule": "5/garbage"},
                 {"name": "", "command": "true"}]:
        assert api.http.put(f"/job/{job_id}/", json=body).status_code == 400
    assert api.job(job_id) == before


def test_disable_and_enable(api: Api) -> None:
    start = future()
    job_id = api.create(name="d", command="true", schedule=f"R/{start}/PT1H")
    assert api.http.post(f"/job/disable/{job_id}/").status_code == 204
    job = api.job(job_id)
    assert job["disabled"] is True and job["next_run_at"] == "0001-01-01T00:00:00Z"
    assert api.http.post(f"/job/disable/{job_id}/").status_code == 204  # idempotent
    assert api.http.post(f"/job/enable/{job_id}/").status_code == 204
    job = api.job(job_id)
    assert job["disabled"] is False and job["next_run_at"] == start


def test_enable_after_missed_occurrences_picks_the_next_future_one(api: Api) -> None:
    job_id = api.create(name="d", command="true", schedule=f"R/{future(2)}/PT1S")
    api.http.post(f"/job/disable/{job_id}/")
    with api.state.sessions.begin() as session:  # pretend the start was long ago
        session.get(Job, job_id).schedule = "R/2020-01-01T00:00:00Z/PT1S"
    before = datetime.now(UTC)
    api.http.post(f"/job/enable/{job_id}/")
    next_run = datetime.fromisoformat(api.job(job_id)["next_run_at"])
    assert before <= next_run <= before + timedelta(seconds=2)
    assert next_run.microsecond == 0  # anchored to the schedule's whole seconds


def test_job_created_disabled_is_not_armed(api: Api) -> None:
    job_id = api.create(name="d", command="true", schedule=f"R/{future()}/PT1H", disabled=True)
    assert api.job(job_id)["next_run_at"] == "0001-01-01T00:00:00Z"


def test_one_off_job_records_a_run_and_is_not_armed(api: Api) -> None:
    job_id = api.create(name="once", command="true")
    assert api.job(job_id)["next_run_at"] == "0001-01-01T00:00:00Z"
    runs = api.http.get(f"/job/{job_id}/executions/").json()["job_stats"]
    assert [(r["status"], r["trigger"]) for r in runs] == [("Pending", "schedule")]


def test_shell_jobs_can_be_switched_off(make_api) -> None:
    api = make_api(allow_shell=False)
    response = api.http.post("/job/", json={"name": "x", "command": "true"})
    assert (response.status_code, response.json()) == (403, {"error": "local jobs are disabled"})
    remote = {"name": "r", "type": 1, "remote_properties": {"url": "http://127.0.0.1:9/"},
              "schedule": f"R/{future()}/PT1H"}
    assert api.http.post("/job/", json=remote).status_code == 201


def test_default_owner(make_api) -> None:
    api = make_api(default_owner="ops@example.com")
    job_id = api.create(name="x", command="true", schedule=f"R/{future()}/PT1H")
    assert api.job(job_id)["owner"] == "ops@example.com"


def test_delete_job(api: Api) -> None:
    job_id = api.create(name="x", command="true", schedule=f"R/{future()}/PT1H")
    response = api.http.delete(f"/job/{job_id}/")
    assert (response.status_code, response.content) == (204, b"")
    assert api.http.get(f"/job/{job_id}/").status_code == 404


def _tree(api: Api) -> dict[str, str]:
    """P1 -> A (only parent), P1 -> S <- P2 (shared), A -> AA."""
    ids = {"P1": api.create(id="p1", name="p1", command="true", schedule=f"R/{future()}/PT1H"),
           "P2": api.create(id="p2", name="p2", command="true", schedule=f"R/{future()}/PT1H")}
    ids["A"] = api.create(id="a", name="a", command="true", parent_jobs=["p1"])
    ids["S"] = api.create(id="s", name="s", command="true", parent_jobs=["p1", "p2"])
    ids["AA"] = api.create(id="aa", name="aa", command="true", parent_jobs=["a"])
    return ids


def test_children_are_linked_fifo_and_both_ways(api: Api) -> None:
    _tree(api)
    assert api.job("p1")["dependent_jobs"] == ["a", "s"]
    assert api.job("s")["parent_jobs"] == ["p1", "p2"]
    assert api.job("a")["next_run_at"] == "0001-01-01T00:00:00Z"  # a child is never armed


def test_delete_parent_cascades_to_only_children_atomically(api: Api) -> None:
    _tree(api)
    assert api.http.delete("/job/p1/").status_code == 204
    remaining = sorted(api.http.get("/job/").json()["jobs"])
    assert remaining == ["p2", "s"]
    assert api.job("s")["parent_jobs"] == ["p2"]
    assert api.job("p2")["dependent_jobs"] == ["s"]


def test_delete_child_unlinks_it_from_parents(api: Api) -> None:
    _tree(api)
    api.http.delete("/job/s/")
    assert api.job("p1")["dependent_jobs"] == ["a"]
    assert api.job("p2")["dependent_jobs"] is None


def test_delete_all_leaves_nothing(api: Api) -> None:
    _tree(api)
    assert api.http.delete("/job/all/").status_code == 204
    assert api.http.get("/job/").json() == {"jobs": {}}
    assert (count(api, Job), count(api, JobLink), count(api, Run)) == (0, 0, 0)


def test_cycles_and_self_parents_are_refused(api: Api) -> None:
    _tree(api)
    before = count(api, JobLink)
    # p1 -> a -> aa; making p1 a child of aa closes a loop.
    put = api.http.put("/job/p1/", json={"name": "p1", "command": "true", "parent_jobs": ["aa"]})
    assert put.status_code == 400 and "cycle" in put.json()["error"]
    own = api.http.put("/job/a/", json={"name": "a", "command": "true", "parent_jobs": ["a"]})
    assert own.status_code == 400
    dep = api.http.post("/job/", json={"name": "n", "command": "true", "parent_jobs": ["aa"],
                                       "dependent_jobs": ["p1"]})
    assert dep.status_code == 400 and "cycle" in dep.json()["error"]
    assert count(api, JobLink) == before
    assert api.job("p1")["parent_jobs"] is None


def test_child_schedule_is_stored_and_not_parsed(api: Api) -> None:
    api.create(id="p", name="p", command="true", schedule=f"R/{future()}/PT1H")
    job_id = api.create(name="c", command="true", parent_jobs=["p"], schedule="garbage")
    job = api.job(job_id)
    assert (job["schedule"], job["next_run_at"]) == ("garbage", "0001-01-01T00:00:00Z")


def test_enable_r0_job_whose_start_passed_owes_its_run(api: Api) -> None:
    job_id = api.create(name="r0", command="true", schedule=f"R0/{future(2)}/")
    api.http.post(f"/job/disable/{job_id}/")
    with api.state.sessions.begin() as session:
        session.get(Job, job_id).schedule = "R0/2020-01-01T00:00:00Z/"
    assert api.http.post(f"/job/enable/{job_id}/").status_code == 204
    assert api.job(job_id)["next_run_at"] == "2020-01-01T00:00:00Z"  # due: fires at once


def test_enable_when_no_occurrence_is_left_before_year_9999(api: Api) -> None:
    job_id = api.create(name="y", command="true", schedule=f"R/{future(2)}/P1000Y")
    api.http.post(f"/job/disable/{job_id}/")
    with api.state.sessions.begin() as session:
        session.get(Job, job_id).schedule = "R/1000-01-01T00:00:00Z/P9000Y"  # next: year 10000
    assert api.http.post(f"/job/enable/{job_id}/").status_code == 204
    assert api.job(job_id)["next_run_at"] == "0001-01-01T00:00:00Z"
