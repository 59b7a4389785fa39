"""The dashboard through Flask's test client, on SQLite and PostgreSQL: mounting, the job list's
paging/search/filters, the form (same document and same refusals as the API), occurrences
(the beat's maths), token sign-in and CSRF."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select

from kala_celery import schedule
from kala_celery.api import create_app, init_kala
from kala_celery.beat.claim import advance
from kala_celery.config import Settings
from kala_celery.store.tables import Job, Run
from kala_celery.web import describe, webui_prefix
from tests.test_api_jobs import future
from tests.webdata import insert_jobs

Make = Callable[..., tuple[Flask, FlaskClient, list]]


@pytest.fixture
def make(db_url: str, tmp_path: Path) -> Make:
    def start(**overrides: Any) -> tuple[Flask, FlaskClient, list]:
        published: list = []
        settings = Settings(database_url=db_url, data_dir=tmp_path).with_overrides(**overrides)
        app = create_app(settings, publish=published.extend)
        return app, app.test_client(), published

    return start


def csrf(client: FlaskClient, path: str = "/webui/new") -> str:
    page = client.get(path).get_data(as_text=True)
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def count(app: Flask, model: type = Job) -> int:
    with app.extensions["kala"].sessions() as session:
        return session.scalar(select(func.count()).select_from(model))


def test_the_dashboard_is_mounted_next_to_the_api(tmp_path: Path) -> None:
    assert webui_prefix("/api/v1") == "/webui"
    assert webui_prefix("/kala/api/v1/") == "/kala/webui"
    assert webui_prefix("/scheduler") == "/scheduler/webui"

    standalone = create_app(Settings(data_dir=tmp_path / "a"), publish=lambda runs: None)
    client = standalone.test_client()
    assert client.get("/").headers["Location"] == "/webui/"
    assert client.get("/webui/").status_code == 200

    host = Flask("host")
    host.secret_key = "the host's own key"
    init_kala(host, Settings(data_dir=tmp_path / "b"), url_prefix="/kala/api/v1",
              publish=lambda runs: None)
    assert host.secret_key == "the host's own key"  # a host app keeps its session key
    client = host.test_client()
    page = client.get("/kala/webui/").get_data(as_text=True)
    assert 'href="/kala/webui/new"' in page and "/kala/webui/static/style.css" in page
    assert client.get("/").status_code == 404  # only the standalone server owns `/`
    assert client.get("/kala/api/v1/stats/").status_code == 200

    bare = Flask("bare")
    init_kala(bare, Settings(data_dir=tmp_path / "c"), webui=False, publish=lambda runs: None)
    assert bare.test_client().get("/webui/").status_code == 404


def test_the_job_list_pages_searches_and_filters(make: Make) -> None:
    app, client, _ = make()
    insert_jobs(app.extensions["kala"].engine, 120)
    page = client.get("/webui/").get_data(as_text=True)
    assert "1\u201350 of 120 jobs" in page and "Page 1 of 3" in page
    assert page.count('<tr class=') == 50
    last = client.get("/webui/?page=3").get_data(as_text=True)
    assert "101\u2013120 of 120 jobs" in last and last.count('<tr class=') == 20
    assert re.search(r"every \d+ hours from \d+ \w+ \d\d:\d\d(:\d\d)? UTC<", page)
    found = client.get("/webui/?q=BILLING@").get_data(as_text=True)  # owner, any case
    assert "1\u201315 of 15 jobs" in found
    assert "mail sync" not in found
    like = client.get("/webui/?q=%25").get_data(as_text=True)  # % is a character, not a wildcard
    assert "no jobs" in like or "No job matches" in like
    expected = {"failing": 11, "disabled": 17, "done": 9}  # i % 11 == 5, i % 7 == 3, i % 13 == 6
    for state, n in expected.items():
        shown = client.get(f"/webui/?state={state}").get_data(as_text=True)
        assert f"of {n} jobs" in shown, state
    assert client.get("/webui/?page=99").status_code == 200  # past the end: an empty page
    assert client.get("/webui/?page=x&state=nonsense").status_code == 200


def test_the_form_stores_what_the_api_would_and_refuses_with_its_message(make: Make) -> None:
    app, client, published = make()
    token = csrf(client)
    start = future()
    form = {
        "csrf": token, "name": "hook", "type": "1", "owner": "me@example.com",
        "schedule": f"R3/{start}/PT1H", "timezone": "Europe/Berlin",
        "url": "https://example.com/hook", "method": "post", "body": '{"a": 1}',
        "headers": "X-A: 1\nX-A: 2\nContent-Type: application/json", "timeout": "9",
        "expected_codes": "200, 202", "retries": "2", "epsilon": "PT5M",
        "retry_delay": "PT10S", "retry_backoff": "on", "run_timeout": "PT1M",
        "allow_overlap": "on", "queue": "hooks", "template_delimiters": "",
    }
    created = client.post("/webui/new", data=form)
    assert created.status_code == 302, created.get_data(as_text=True)
    job_id = created.headers["Location"].split("/")[3]
    via_form = client.get(f"/api/v1/job/{job_id}/").get_json()["job"]
    body = {
        "name": "hook", "type": 1, "owner": "me@example.com", "schedule": f"R3/{start}/PT1H",
        "timezone": "Europe/Berlin", "retries": 2, "epsilon": "PT5M", "retry_delay": "PT10S",
        "retry_backoff": True, "run_timeout": "PT1M", "allow_overlap": True, "queue": "hooks",
        "remote_properties": {"url": "https://example.com/hook", "method": "POST",
                              "body": '{"a": 1}', "timeout": 9,
                              "headers": {"X-A": ["1", "2"], "Content-Type": ["application/json"]},
                              "expected_response_codes": [200, 202]},
    }
    api_id = client.post("/api/v1/job/", json=body).get_json()["id"]
    via_api = client.get(f"/api/v1/job/{api_id}/").get_json()["job"]
    assert {**via_form, "id": ""} == {**via_api, "id": ""}
    assert published == []  # a future schedule: nothing to run yet

    before = count(app)
    refusals = {
        "schedule": ("R/2020-01-01T00:00:00Z/PT1H", "the start time is in the past"),
        "retries": ("two", "json: cannot unmarshal string into Go struct field Job.retries"),
        "epsilon": ("soon", "epsilon 'soon': invalid epsilon"),
        "timezone": ("Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
        "parents": ("no-such-job", "parent job 'no-such-job' does not exist"),
        "headers": ("no colon here", "is not a 'Name: value' line"),
    }
    for field, (value, reason) in refusals.items():
        refused = client.post("/webui/new", data={**form, field: value})
        text = refused.get_data(as_text=True)
        assert refused.status_code == 400, field
        assert reason.replace("'", "&#39;") in text, (field, text[:3000])
        assert re.search(rf'id="f-{field}"[^>]*aria-invalid="true"', text), field
        assert count(app) == before, field  # nothing stored

    edit = client.get(f"/webui/job/{job_id}/edit").get_data(as_text=True)
    assert 'value="Europe/Berlin"' in edit and "X-A: 2" in edit and 'value="200, 202"' in edit
    saved = client.post(f"/webui/job/{job_id}/edit", data={**form, "name": "renamed",
                                                            "allow_overlap": ""})
    assert saved.status_code == 302
    job = client.get(f"/api/v1/job/{job_id}/").get_json()["job"]
    assert job["name"] == "renamed" and "allow_overlap" not in job
    assert job["next_run_at"] == via_form["next_run_at"]  # same schedule: progress kept
    bad = client.post(f"/webui/job/{job_id}/edit", data={**form, "name": "", "epsilon": "x"})
    assert bad.status_code == 400 and "name is required" in bad.get_data(as_text=True)
    assert client.get(f"/api/v1/job/{job_id}/").get_json()["job"] == job  # unchanged
    assert client.get("/webui/job/nope/edit").status_code == 404


def test_a_form_job_with_no_schedule_runs_at_once_through_the_publisher(make: Make) -> None:
    app, client, published = make()
    token = csrf(client)
    created = client.post("/webui/new", data={"csrf": token, "name": "now", "type": "0",
                                              "command": "echo now"})
    job_id = created.headers["Location"].split("/")[3]
    assert [run.job_id for run in published] == [job_id]
    assert client.post(f"/webui/job/{job_id}/start", data={"csrf": token}).status_code == 302
    assert [run.trigger for run in published] == ["schedule", "manual"]
    page = client.get(f"/webui/job/{job_id}/").get_data(as_text=True)
    assert "Started a run." in page and page.count('class="run"') == 2
    assert 'data-refresh="2"' in page  # runs in flight: the page refreshes itself

    client.post(f"/webui/job/{job_id}/disable", data={"csrf": token})
    refused = client.post(f"/webui/job/{job_id}/start", data={"csrf": token},
                          follow_redirects=True).get_data(as_text=True)
    assert "the job is disabled; enable it to start it" in refused
    assert len(published) == 2
    client.post(f"/webui/job/{job_id}/enable", data={"csrf": token})
    assert client.post(f"/webui/job/{job_id}/delete", data={}).status_code == 400  # no CSRF
    assert client.post(f"/webui/job/{job_id}/delete", data={"csrf": token}).status_code == 302
    assert count(app) == 0 and count(app, Run) == 0


def test_the_next_occurrences_are_the_ones_the_beat_will_use(make: Make) -> None:
    app, client, _ = make()
    start = (datetime.now(UTC) + timedelta(days=1)).replace(day=28, hour=9, minute=0, second=0,
                                                            microsecond=0)
    text = f"R6/{start:%Y-%m-%dT%H:%M:%SZ}/P1M"
    job_id = client.post("/api/v1/job/", json={"name": "monthly", "command": "true",
                                               "schedule": text, "timezone": "Europe/Berlin"}
                         ).get_json()["id"]
    with app.extensions["kala"].sessions() as session:
        job = session.get(Job, job_id)
        shown, note = describe.job_occurrences(job, "UTC", is_child=False, now=job.created_at)
    parsed = schedule.parse_schedule(text, schedule.resolve_zone("Europe/Berlin"))
    due, used, beat = parsed.start, 0, []
    while due is not None and len(beat) < 5:
        beat.append(due)
        step = advance(parsed, due, used, due, False)  # the beat claiming it right on time
        due, used = step.next_run_at, used + 1
    assert shown == beat and note == ""
    page = client.get(f"/webui/job/{job_id}/").get_data(as_text=True)
    for t in beat:
        assert describe.when(t, schedule.resolve_zone("Europe/Berlin")) in page
    assert "every month from" in page and "7 runs left" in page


def test_schedule_words() -> None:
    now = datetime(2026, 11, 30, tzinfo=UTC)
    words = describe.schedule_words
    assert words("R2/2026-12-01T09:00:00Z/PT1H", None, "UTC", runs_used=0, now=now).words == \
        "every hour from 1 Dec 09:00 UTC, 3 runs left"
    assert words("R/2026-12-01T09:00:00Z/P2W", "America/New_York", "UTC", now=now).words == \
        "every 2 weeks from 1 Dec 04:00 America/New_York"
    assert words("R0/2027-01-01T00:00:30Z/", None, "UTC", now=now).words == \
        "once at 1 Jan 2027 00:00:30 UTC"
    assert words("R1/2026-12-01T09:00:00Z/P1DT12H", None, "UTC", runs_used=2, now=now).words \
        == "every 1 day 12 hours from 1 Dec 09:00 UTC, no runs left"
    assert words("", None, "UTC").words == "once, when created"
    assert words("R/x/PT1H", None, "UTC").error.startswith("invalid start 'x'")
    assert words("R/2026-12-01T09:00:00Z/PT1H", None, "UTC", is_child=True).words == \
        "after its parent job"
    assert describe.ago(now + timedelta(minutes=59, seconds=50), now) == "in 1 h"
    assert describe.ago(now - timedelta(days=3), now) == "3 days ago"
    assert describe.duration(1_500_000) == "2 ms" and describe.duration(65_000_000_000) == \
        "1 min 5 s"


def test_with_a_token_nothing_shows_until_it_is_given(make: Make) -> None:
    app, client, published = make(api_token="tok-123")
    auth = {"Authorization": "Bearer tok-123"}
    job_id = client.post("/api/v1/job/", headers=auth, json={
        "name": "secret job", "command": "true", "schedule": f"R/{future()}/PT1H"}
    ).get_json()["id"]
    for path in ("/webui/", f"/webui/job/{job_id}/", f"/webui/job/{job_id}/edit",
                 f"/webui/job/{job_id}/delete", "/webui/new", "/webui/stats"):
        response = client.get(path)
        assert response.status_code == 302, path
        assert response.headers["Location"].startswith("/webui/login?next="), path
    for action in ("start", "disable", "delete"):
        assert client.post(f"/webui/job/{job_id}/{action}").status_code == 302
    assert published == [] and count(app) == 1
    assert client.get("/webui/preview?schedule=R").status_code == 401
    login = client.get("/webui/login").get_data(as_text=True)
    assert "secret job" not in login
    token = re.search(r'name="csrf" value="([^"]+)"', login).group(1)
    wrong = client.post("/webui/login", data={"csrf": token, "token": "nope"})
    assert wrong.status_code == 401
    assert "That is not a token of this server." in wrong.get_data(True)
    right = client.post(f"/webui/login?next=/webui/job/{job_id}/",
                        data={"csrf": token, "token": "tok-123"})
    assert right.headers["Location"] == f"/webui/job/{job_id}/"
    assert "secret job" in client.get("/webui/").get_data(as_text=True)
    assert client.get("/api/v1/job/").status_code == 401  # the session is not an API token
    evil = client.post("/webui/login?next=https://evil.example/", data={
        "csrf": csrf(client), "token": "tok-123"})
    assert evil.headers["Location"] == "/webui/"

    other = create_app(Settings(data_dir=Path(app.extensions["kala"].settings.data_dir),
                                database_url=app.extensions["kala"].settings.database_url,
                                api_token="another"), publish=lambda runs: None)
    cookie = client.get_cookie("session")
    stranger = other.test_client()
    stranger.set_cookie("session", cookie.value)
    assert stranger.get("/webui/").status_code == 302  # a new token signs everybody out


def test_ten_thousand_jobs_render_fast(tmp_path: Path) -> None:
    """bench/dashboard.py measures it properly; this only catches a page that grows with N."""
    app = create_app(Settings(data_dir=tmp_path), publish=lambda runs: None)
    client = app.test_client()
    insert_jobs(app.extensions["kala"].engine, 10_000)
    client.get("/webui/")  # warm up templates and statements
    for path in ("/webui/", "/webui/?page=200", "/webui/?q=billing", "/webui/?state=failing",
                 "/webui/stats"):
        began = time.perf_counter()
        response = client.get(path)
        took = time.perf_counter() - began
        assert response.status_code == 200
        assert took < 1.5, f"{path}: {took * 1000:.0f} ms"


def test_a_missing_browser_fails_the_browser_tests_in_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    from tests import browser

    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    monkeypatch.setattr(browser, "Path", lambda p: Path("/nonexistent/chromedriver"))
    monkeypatch.setenv("KALA_TEST_SKIP_MISSING", "1")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(browser.BrowserMissing, match="apt-get install chromium chromium-driver"):
        browser.start_browser("http://127.0.0.1:1")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        browser.start_browser("http://127.0.0.1:1")
    monkeypatch.delenv("KALA_TEST_SKIP_MISSING")
    with pytest.raises(browser.BrowserMissing):  # outside CI too, unless skipping is asked for
        browser.start_browser("http://127.0.0.1:1")


def test_the_delete_page_lists_what_the_cascade_would_delete(make: Make) -> None:
    app, client, _ = make()

    def create(name: str, **extra: Any) -> str:
        body = {"name": name, "command": "true", "schedule": f"R/{future()}/PT1H", **extra}
        return client.post("/api/v1/job/", json=body).get_json()["id"]

    parent, other = create("parent"), create("other parent")
    only_child = create("only child", parent_jobs=[parent])
    shared = create("shared child", parent_jobs=[parent, other])
    grandchild = create("grandchild", parent_jobs=[only_child])
    page = client.get(f"/webui/job/{parent}/delete").get_data(as_text=True)
    assert "only child" in page and "grandchild" in page and "shared child" not in page
    assert count(app) == 5  # asking deleted nothing
    client.post(f"/webui/job/{parent}/delete", data={"csrf": csrf(client)})
    left = set(client.get("/api/v1/job/").get_json()["jobs"])
    assert left == {other, shared} and grandchild not in left


def test_while_the_job_store_is_away_the_pages_answer_503(tmp_path: Path) -> None:
    from tests.processes import free_port

    away = f"postgresql+psycopg://kala@127.0.0.1:{free_port()}/kala?connect_timeout=2"
    app = create_app(Settings(database_url=away, data_dir=tmp_path), publish=lambda runs: None)
    client = app.test_client()
    for path in ("/webui/", "/webui/stats", "/webui/new"):
        response = client.get(path)
        assert response.status_code == 503, path
        assert response.headers["Retry-After"] == "5"
        assert "The job store is unavailable (OperationalError)" in response.get_data(True)
    assert client.get("/webui/static/style.css").status_code == 200


def test_every_control_is_named_by_its_label_and_text_is_escaped(make: Make) -> None:
    _app, client, _ = make()
    page = client.get("/webui/new").get_data(as_text=True)
    labels = dict((text, for_) for for_, text in re.findall(r'<label for="([^"]+)">([^<]+)</label>',
                                                           page))
    for name in ("Name", "Command", "Schedule", "Owner", "Type", "URL", "Method", "Body",
                 "Headers", "Timeout", "Expected response codes", "Retries", "Epsilon",
                 "Time zone", "Retry delay", "Retry backoff", "Run timeout", "Allow overlap",
                 "Resume at next scheduled time", "Queue", "Parent jobs", "Dependent jobs",
                 "On failure job", "Template delimiters", "Disabled", "ID"):
        assert name in labels, name
        assert re.search(rf'<(input|select|textarea) id="{labels[name]}"', page), name
    controls = re.findall(r'<(?:input|select|textarea) id="([^"]+)"', page)
    assert sorted(controls) == sorted(labels.values())  # no control without a label
    assert ">Create job</button>" in page and ">New job</a>" in page

    evil = "<script>alert(1)</script>"
    job_id = client.post("/api/v1/job/", json={"name": evil, "owner": evil,
                                               "command": f"echo {evil}"}).get_json()["id"]
    for path in ("/webui/", f"/webui/job/{job_id}/", f"/webui/job/{job_id}/edit"):
        shown = client.get(path).get_data(as_text=True)
        assert evil not in shown and "&lt;script&gt;alert(1)&lt;/script&gt;" in shown, path


def test_a_jobs_runs_are_newest_first_paged_and_readable(make: Make) -> None:
    from tests.webdata import insert_runs

    app, client, _ = make()
    job_id = client.post("/api/v1/job/", json={"name": "runs", "command": "true",
                                               "schedule": f"R/{future()}/PT1H"}).get_json()["id"]
    insert_runs(app.extensions["kala"].engine, job_id, 45,
                output="\x1b[32mgreen\x1b[0m done\nloading 10%\rloading 100%\n")

    def run_ids(page: str) -> list[str]:
        return re.findall(r'data-run-id="([^"]+)"', page)

    first = client.get(f"/webui/job/{job_id}/").get_data(as_text=True)
    last = client.get(f"/webui/job/{job_id}/?runs=3").get_data(as_text=True)
    newest = [f"{job_id[:20]}-run-{k:06d}" for k in range(44, -1, -1)]
    assert run_ids(first) == newest[:20] and run_ids(last) == newest[40:]
    assert "45 in all, newest first" in first and "Page 3 of 3" in last
    assert "green done\nloading 100%" in first and "\x1b" not in first
    assert "exit 1" in first and "exit status 1" in first and "2.0 s" in first


def test_the_form_takes_a_cron_and_skip_and_previews_through_the_api(make: Make) -> None:
    """Decisions 18, 21, 24: a cron job with overlap skip from the form is the API's job; the
    form's preview lists what POST /schedule/preview/ lists, and refuses with its message."""
    _app, client, _ = make()
    form = {"csrf": csrf(client), "name": "weekday", "type": "0", "command": "true",
            "schedule": "", "cron": "0 9 * * MON-FRI", "timezone": "Europe/Berlin",
            "skip_overlap": "on"}
    created = client.post("/webui/new", data=form)
    assert created.status_code == 302, created.get_data(as_text=True)
    job_id = created.headers["Location"].split("/")[3]
    job = client.get(f"/api/v1/job/{job_id}/").get_json()["job"]
    assert (job["cron"], job["overlap"], job["timezone"]) == ("0 9 * * MON-FRI", "skip",
                                                              "Europe/Berlin")
    page = client.get(f"/webui/job/{job_id}/").get_data(as_text=True)
    assert "At 09:00 on Monday through Friday (Europe/Berlin)" in page
    edit = client.get(f"/webui/job/{job_id}/edit").get_data(as_text=True)
    assert 'value="0 9 * * MON-FRI"' in edit, edit[:2000]
    assert re.search(r'id="f-skip_overlap"[^>]*checked', edit)

    shown = client.get("/webui/preview", query_string={"cron": "30 2 * * *",
                                                       "timezone": "America/New_York"})
    listed = client.post("/api/v1/schedule/preview/",
                         json={"cron": "30 2 * * *", "timezone": "America/New_York",
                               "count": 5}).get_json()["next"]
    ny = schedule.resolve_zone("America/New_York")
    expected = [describe.when(datetime.fromisoformat(t.replace("Z", "+00:00")), ny,
                              now=datetime.now(UTC)) for t in listed]
    assert shown.get_json()["ok"] is True and shown.get_json()["occurrences"] == expected
    bad = client.get("/webui/preview", query_string={"cron": "61 * * * *"}).get_json()
    api_error = client.post("/api/v1/schedule/preview/", json={"cron": "61 * * * *"})
    assert bad["ok"] is False
    assert f"Error occurred when initializing the job: {bad['error']}" == \
        api_error.get_json()["error"]
    both = client.post("/webui/new", data={**form, "schedule": f"R/{future()}/PT1H"})
    assert both.status_code == 400 and "not both" in both.get_data(as_text=True)
    assert re.search(r'id="f-cron"[^>]*aria-invalid="true"', both.get_data(as_text=True))
