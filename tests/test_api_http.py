"""HTTP conventions, runs, stats, auth and bad input over real HTTP (SQLite and PostgreSQL)."""

from __future__ import annotations

import gzip
from datetime import UTC, datetime

from flask import Flask
from sqlalchemy import func, select

from kala_celery.api import init_kala
from kala_celery.config import Settings
from kala_celery.store.tables import Job, Run
from tests import openapi_check as ours
from tests.live import Api, LiveServer
from tests.test_api_jobs import JSON_TYPE, count, future


def test_slashless_get_redirects_301_with_kala_body(api: Api) -> None:
    response = api.raw.get("/api/v1/job?x=1")
    assert response.status_code == 301
    assert response.headers["location"] == "/api/v1/job/?x=1"
    assert response.content == b'<a href="/api/v1/job/?x=1">Moved Permanently</a>.\n\n'


def test_slashless_post_redirects_308_and_a_following_client_creates_the_job(api: Api) -> None:
    response = api.raw.post("/api/v1/job", json={"name": "x", "command": "true"})
    assert (response.status_code, response.headers["location"]) == (308, "/api/v1/job/")
    followed = api.raw.post("/api/v1/job", json={"name": "x", "command": "true"},
                            follow_redirects=True)
    assert followed.status_code == 201 and count(api, Job) == 1


def test_unclean_paths_redirect(api: Api) -> None:
    response = api.raw.get("/api/v1//job/")
    assert response.status_code == 301 and response.headers["location"] == "/api/v1/job/"


def test_wrong_method_is_405_and_misses_are_kala_404_as_json(api: Api) -> None:
    """Decision 26: Kala's route-miss text and NextKala's 405, as JSON errors."""
    for method, path, allow in [("PATCH", "/job/x/", "DELETE, GET, HEAD, PUT"),
                                ("GET", "/job/start/x/", "POST"), ("PUT", "/stats/", "GET, HEAD"),
                                ("OPTIONS", "/job/", "GET, HEAD, POST")]:
        response = api.http.request(method, path)
        assert response.status_code == 405, (method, path)
        assert response.headers["allow"] == allow
        assert response.json() == {
            "error": f"method {method} is not allowed on /api/v1{path}; use {allow}"
        }
    for path in ["/", "/nothing/", "/job/a/b/c/d/"]:
        response = api.http.get(path)
        assert response.status_code == 404
        assert response.content == b'{"error":"404 page not found"}\n'
        assert response.headers["content-type"] == "application/json;charset=UTF-8"
    assert api.raw.get("/api/v1/").status_code == 404
    for path in ["/nothing", "/webuix"]:  # outside the API too: JSON, not Flask's HTML page
        response = api.raw.get(path)
        assert response.status_code == 404 and response.json() == {"error": "404 page not found"}
    response = api.raw.post("/health")
    assert response.status_code == 405 and "not allowed" in response.json()["error"]


def test_gzip_only_when_asked(api: Api) -> None:
    api.create(name="g", command="true", schedule=f"R/{future()}/PT1H")
    plain = api.http.get("/job/", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    with api.http.stream("GET", "/job/", headers={"Accept-Encoding": "gzip"}) as zipped:
        raw = b"".join(zipped.iter_raw())
        assert zipped.headers["content-encoding"] == "gzip"
        assert zipped.headers["vary"] == "Accept-Encoding"
    assert gzip.decompress(raw) == plain.content
    missing = api.http.get("/nothing/", headers={"Accept-Encoding": "gzip"})
    assert missing.headers["content-encoding"] == "gzip"  # Kala gzips its 404s too
    assert missing.content == b'{"error":"404 page not found"}\n'


def test_body_over_one_mib_is_413_and_stores_nothing(api: Api) -> None:
    body = b'{"name":"x","command":"' + b"a" * (1 << 20) + b'"}'
    response = api.http.post("/job/", content=body)
    assert response.status_code == 413 and "1 MiB" in response.json()["error"]
    assert count(api, Job) == 0


def test_a_long_body_whose_document_ends_within_a_mib_is_accepted_as_by_kala(api: Api) -> None:
    """Decision 2: Kala reads the first MiB; a document that ends there counts, the rest is
    dropped. The connection stays usable afterwards."""
    body = b'{"name":"x","command":"true","schedule":"R/2099-01-01T00:00:00Z/PT1H"}'
    response = api.http.post("/job/", content=body + b" " * (1 << 20) + b"anything")
    assert response.status_code == 201, response.text
    assert api.job(response.json()["id"])["command"] == "true"
    assert api.http.get("/job/").status_code == 200
    assert count(api, Job) == 1


def test_token_auth(make_api) -> None:
    api = make_api(api_token="s3cret")
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret"}]:
        response = api.http.get("/job/", headers=headers)
        assert response.status_code == 401 and response.json()["error"]
        assert response.headers["www-authenticate"].startswith("Bearer")
    assert api.raw.get("/api/v1/job").status_code == 401  # before redirects and 404s
    assert api.http.get("/job/", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_app_stats(api: Api) -> None:
    empty = api.http.get("/stats/")
    assert empty.headers["content-type"] == JSON_TYPE
    stats = empty.json()["Stats"]
    assert list(stats) == ["active_jobs", "disabled_jobs", "jobs", "error_count",
                           "success_count", "next_run_at", "last_attempted_run", "created"]
    assert (stats["jobs"], stats["next_run_at"]) == (0, "0001-01-01T00:00:00Z")
    first, later = future(60), future(600)
    api.create(name="a", command="true", schedule=f"R/{later}/PT1H", metadata={"error_count": 2})
    api.create(name="b", command="true", schedule=f"R/{first}/PT1H",
               metadata={"success_count": 5})
    disabled = api.create(name="c", command="true", schedule=f"R/{future(5)}/PT1H")
    api.http.post(f"/job/disable/{disabled}/")
    stats = api.http.get("/stats/").json()["Stats"]
    assert (stats["jobs"], stats["active_jobs"], stats["disabled_jobs"]) == (3, 2, 1)
    assert (stats["success_count"], stats["error_count"]) == (5, 2)
    assert stats["next_run_at"] == first
    created = datetime.fromisoformat(stats["created"])
    assert abs((datetime.now(UTC) - created).total_seconds()) < 5


def test_start_records_a_manual_run_and_answers_202_when_it_does_not_finish(api: Api) -> None:
    job_id = api.create(name="s", command="true", schedule=f"R/{future()}/PT1H")
    response = api.http.post(f"/job/start/{job_id}/?wait=false")
    assert response.status_code == 202
    run_id = response.json()["id"]
    location = response.headers["location"]
    assert location == f"/api/v1/job/{job_id}/executions/{run_id}/"
    run = api.raw.get(location).json()["job_run"]
    assert (run["id"], run["job_id"], run["trigger"], run["status"]) == (
        run_id, job_id, "manual", "Pending")
    # With waiting (KALA_START_WAIT is 0.3 s in these tests) and no worker: 202 after the wait.
    assert api.http.post(f"/job/start/{job_id}/").status_code == 202


def test_start_of_disabled_job_is_refused_and_records_nothing(api: Api) -> None:
    job_id = api.create(name="s", command="true", schedule=f"R/{future()}/PT1H", disabled=True)
    response = api.http.post(f"/job/start/{job_id}/")
    assert response.status_code == 409 and "disabled" in response.json()["error"]
    assert count(api, Run) == 0


def test_manual_start_uses_up_a_repetition(api: Api) -> None:
    job_id = api.create(name="r0", command="true", schedule=f"R0/{future()}/")
    api.http.post(f"/job/start/{job_id}/?wait=false")
    assert api.job(job_id)["next_run_at"] == "0001-01-01T00:00:00Z"  # its one run is used


def test_stats_and_executions(api: Api) -> None:
    job_id = api.create(name="s", command="true", schedule=f"R/{future()}/PT1H")
    assert api.http.get(f"/job/stats/{job_id}/").content == b'{"job_stats":null}\n'
    assert api.http.get(f"/job/{job_id}/executions/").content == b'{"job_stats":[]}\n'
    run_id = api.http.post(f"/job/start/{job_id}/?wait=false").json()["id"]
    # NextKala's callback finishes the run; it then counts as a Kala stat.
    put = api.http.put(f"/job/{job_id}/executions/{run_id}/", content=b'"Success"')
    assert (put.status_code, put.content) == (204, b"")
    stats = api.http.get(f"/job/stats/{job_id}/").json()["job_stats"]
    assert len(stats) == 1 and stats[0]["success"] is True and stats[0]["job_id"] == job_id
    assert list(stats[0]) == ["job_id", "ran_at", "number_of_retries", "success",
                              "execution_duration"]
    assert isinstance(stats[0]["execution_duration"], int)
    assert api.job(job_id)["stats"] == stats
    runs = api.http.get(f"/job/{job_id}/executions/").json()["job_stats"]
    assert [r["status"] for r in runs] == ["Success"]


def test_execution_routes_reject_bad_input(api: Api) -> None:
    job_id = api.create(name="s", command="true", schedule=f"R/{future()}/PT1H")
    other = api.create(name="o", command="true", schedule=f"R/{future()}/PT1H")
    run_id = api.http.post(f"/job/start/{job_id}/?wait=false").json()["id"]
    assert api.http.get(f"/job/{other}/executions/{run_id}/").status_code == 404
    assert api.http.get(f"/job/{job_id}/executions/nope/").status_code == 404
    bad = api.http.put(f"/job/{job_id}/executions/{run_id}/", content=b'"Exploded"')
    assert bad.status_code == 400 and "unknown status" in bad.json()["error"]
    assert api.http.put(f"/job/{job_id}/executions/{run_id}/", content=b"{").status_code == 400
    assert api.http.get(f"/job/{job_id}/executions/?limit=x").status_code == 400


def test_runs_page(api: Api) -> None:
    job_id = api.create(name="s", command="true", schedule=f"R/{future()}/PT1H")
    ids = [api.http.post(f"/job/start/{job_id}/?wait=false").json()["id"] for _ in range(5)]
    page = api.http.get(f"/job/{job_id}/executions/?offset=1&limit=2")
    assert [r["id"] for r in page.json()["job_stats"]] == ids[1:3]
    assert page.headers["x-total-count"] == "5"
    recent = api.http.get(f"/job/{job_id}/executions/?limit=2").json()["job_stats"]
    assert [r["id"] for r in recent] == ids[3:]


def test_params_of_remote_jobs(api: Api) -> None:
    remote = api.create(name="r", type=1, schedule=f"R/{future()}/PT1H",
                        remote_properties={"url": "http://127.0.0.1:9/x", "body": '{"a":1}'})
    got = api.http.get(f"/job/{remote}/params/")
    assert (got.status_code, got.content) == (200, b'{"a":1}')
    assert api.http.put(f"/job/{remote}/params/", content=b'{"b":2}').status_code == 204
    assert api.job(remote)["remote_properties"]["body"] == '{"b":2}'
    assert api.http.get(f"/job/{remote}/params/").headers["content-type"] == (
        "application/json;charset=UTF-8")  # NextKala's
    assert api.http.put(f"/job/{remote}/params/", content=b"a=1&b").status_code == 204
    text = api.http.get(f"/job/{remote}/params/")  # not JSON: said to be text (Decision 26)
    assert (text.content, text.headers["content-type"]) == (b"a=1&b", "text/plain; charset=utf-8")
    local = api.create(name="l", command="true", schedule=f"R/{future()}/PT1H")
    refused = api.http.get(f"/job/{local}/params/")
    assert (refused.status_code, refused.json()) == (403, {"error": "Job is not a remote job"})


BROKEN_SCHEDULES = [
    "5/2030-01-01T00:00:00Z/PT1H",  # no R: Kala crashes and poisons its DB
    "/2030-01-01T00:00:00Z/PT1H",
    "r5/2030-01-01T00:00:00Z/PT1H",
    "RRR/2030-01-01T00:00:00Z/PT1H",
    "R1.5/2030-01-01T00:00:00Z/PT1H",
    "Rx/2030-01-01T00:00:00Z/PT1H",
    "R/2030-01-01T00:00:00Z",  # two parts
    "R/2030-01-01T00:00:00Z/PT1H/x",  # four parts
    "R/2030-01-01/PT1H",  # date only
    "R/2030-01-01T00:00:00+0200/PT1H",
    "R/2030-01-01T00:00:00z/PT1H",
    "R/2030-01-01 00:00:00Z/PT1H",
    "R/2001-01-01T00:00:00Z/PT1H",  # in the past
    "R/2030-01-01T00:00:00Z/PT1.5S",
    "R/2030-01-01T00:00:00Z/p1d",
    "R/2030-01-01T00:00:00Z/P",
    "R/2030-01-01T00:00:00Z/PT",
    "R/2030-01-01T00:00:00Z/PT0S",  # zero interval: refused instead of a busy loop
    "R/2030-01-01T00:00:00Z/",
    "R5//PT1H",
    "///",
    "R/2030-13-01T00:00:00Z/PT1H",
]


def test_broken_schedule_corpus_is_refused_and_changes_nothing(api: Api) -> None:
    keep = api.create(name="keep", command="true", schedule=f"R/{future()}/PT1H")
    before = api.http.get("/job/").content
    for text in BROKEN_SCHEDULES:
        response = api.http.post("/job/", json={"name": "b", "command": "true", "schedule": text})
        assert response.status_code == 400, text
        error = response.json()["error"]
        assert error.startswith("Error occurred when initializing the job: schedule "), error
        assert api.http.put(f"/job/{keep}/", json={"name": "b", "command": "true",
                                                   "schedule": text}).status_code == 400
    assert api.http.get("/job/").content == before
    with api.state.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 1
    assert api.http.get("/stats/").status_code == 200


def test_accepted_kala_oddities(api: Api) -> None:
    start = future()
    for text in [f"R0/{start}/", f"R0/{start}/garbage", f"XR5R/{start}/PT1H",
                 f"R-1/{start}/P1W2D", f"R+3/{start}/xxP1Dyy", f"R-5/{start}/PT1M",
                 f"R/{start[:-1]}/PT1H", f"R/{start[:-1]}.123456789+00:00/PT1H"]:
        response = api.http.post("/job/", json={"name": "o", "command": "true", "schedule": text})
        assert response.status_code == 201, (text, response.text)


def test_blueprint_mounts_in_another_app_under_another_prefix(db_url: str, tmp_path) -> None:
    app = Flask("host")

    @app.get("/health")
    def health() -> str:
        return "ok"

    state = init_kala(app, Settings(database_url=db_url, data_dir=tmp_path), url_prefix="/kala")
    server = LiveServer(app)
    try:
        with ours.client("/kala", health=None, metrics=None, base_url=server.url) as client:
            created = client.post("/kala/job/", json={"name": "x", "command": "true",
                                                      "schedule": f"R/{future()}/PT1H"})
            assert created.status_code == 201
            assert client.get("/kala/job/").json()["jobs"].keys() == {created.json()["id"]}
            assert client.get("/health").text == "ok"
            host_miss = client.get("/nothing")  # the host app's own 404, untouched
            assert host_miss.status_code == 404 and b"page not found\n" not in host_miss.content
            assert client.get("/kala/job").status_code == 301
    finally:
        server.stop()
        state.engine.dispose()
