"""The dashboard in a real browser (headless Chromium, Selenium) against a real
`kala-celery serve` (SQLite, its own beat and worker): what a user does, by accessible names.

Screenshots of every page land in tests/browser.SHOTS."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
from selenium.common.exceptions import StaleElementReferenceException

from tests import openapi_check as ours
from tests.browser import Browser, start_browser
from tests.processes import Command, free_port, port_open, wait_for
from tests.test_api_jobs import future

TOKEN = "s3cret-dashboard-token"


def _answers(port: int, headers: dict[str, str] | None = None) -> bool:
    if not port_open(port):
        return False
    try:
        url = f"http://127.0.0.1:{port}/api/v1/stats/"
        return ours.get(url, headers=headers, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


def _serve(tmp: Path, env: dict[str, str]) -> tuple[Command, int]:
    port = free_port()
    command = Command.kala("serve", "-p", str(port), "-w", "2", "--data-dir", str(tmp / "data"),
                           log=tmp / "serve.log",
                           env={"KALA_DATABASE_URL": f"sqlite:///{tmp / 'kala.db'}", **env})
    return command, port


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Two `kala-celery serve` on their embedded SQLite default (two API worker processes
    each), started and stopped side by side: one open, one with KALA_API_TOKEN set."""
    started = {
        "open": _serve(tmp_path_factory.mktemp("serve"), {}),
        "guarded": _serve(tmp_path_factory.mktemp("guarded"), {"KALA_API_TOKEN": TOKEN}),
    }
    auth = {"guarded": {"Authorization": f"Bearer {TOKEN}"}}
    try:
        for name, (command, port) in started.items():
            headers = auth.get(name)
            wait_for(lambda c=command, p=port, h=headers:
                     _answers(p, h) or c.proc.poll() is not None, 60, f"serve ({name})")
            assert command.proc.poll() is None, command.output()
        yield {name: f"http://127.0.0.1:{port}" for name, (_c, port) in started.items()}
    finally:
        for command, _port in started.values():
            command.kill()  # nothing here is about a clean stop (test_serve has that)


@pytest.fixture(scope="module")
def served(servers: dict[str, str]) -> str:
    return servers["open"]


@pytest.fixture(scope="module")
def guarded(servers: dict[str, str]) -> str:
    return servers["guarded"]


@pytest.fixture(scope="module")
def browser(served: str) -> Iterator[Browser]:
    browser = start_browser(served)
    yield browser
    browser.close()


@pytest.fixture
def on_served(browser: Browser, served: str) -> Browser:
    browser.switch(served)
    browser.open("/webui/")
    return browser


def _job_id(browser: Browser) -> str:
    path = browser.path
    assert path.startswith("/webui/job/"), path
    return path.split("/")[3]


def test_a_job_created_over_the_api_appears_in_the_list(on_served: Browser, served: str) -> None:
    job_id = ours.post(f"{served}/api/v1/job/", json={
        "name": "nightly report from the API", "command": "true", "owner": "ops@example.com",
        "schedule": f"R2/{future(7200)}/PT1H"}).json()["id"]
    b = on_served
    b.open("/")  # the standalone server sends / to the dashboard
    assert b.path == "/webui/"
    body = b.wait_text("nightly report from the API", refresh=True)
    assert "ops@example.com" in body and "every hour from" in body and "3 runs left" in body
    b.shot("jobs-list")
    b.follow("nightly report from the API")
    assert _job_id(b) == job_id
    b.wait_text("Next 3 runs")
    b.shot("job-page-scheduled")


def test_a_job_made_with_the_form_runs_and_start_now_runs_it_again(on_served: Browser) -> None:
    b = on_served
    b.follow("New job")
    b.wait_text("Local command")
    b.fill("Name", "say hello from the form")
    b.fill("Owner", "me@example.com")
    b.fill("Command", "echo hello-from-the-form")
    b.fill("Retries", "1")
    b.shot("form-new")
    b.click("Create job")
    job_id = _job_id(b)
    body = b.wait_text("hello-from-the-form", refresh=True)  # the one-off ran on the worker
    assert "Job created." in body or "success" in body
    b.wait_text("success", refresh=True)
    b.shot("job-page-ran")

    b.click("Start now")
    assert _job_id(b) == job_id

    def two_successes() -> bool:
        b.driver.refresh()
        try:
            texts = [run.text for run in b.driver.find_elements("css selector", "tbody.run")]
        except StaleElementReferenceException:  # the page reloaded itself meanwhile
            return False
        runs = texts
        return len(runs) == 2 and all("success" in t for t in texts) and "manual" in texts[0]

    wait_for(two_successes, 60, "the manual run to succeed")
    assert b.text().count("hello-from-the-form") >= 2
    b.shot("job-page-two-runs")

    b.click("Disable")
    b.wait_text("Disabled.")
    assert b.button("Start now").get_attribute("disabled") is not None
    b.click("Enable")
    b.wait_text("Enabled.")
    b.follow("Edit")
    assert b.field("Name").get_attribute("value") == "say hello from the form"
    b.fill("Name", "say hello, renamed")
    b.click("Save")
    b.wait_text("Job saved.")
    assert "say hello, renamed" in b.text()


class _Hook(BaseHTTPRequestHandler):
    seen: list[tuple[str, str, bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        _Hook.seen.append((self.command, self.path, body))
        reply = b'{"pong": true}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture
def hook() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Hook.seen = []
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    thread.join(10)


def test_a_remote_job_made_with_the_form_runs(on_served: Browser, hook: str) -> None:
    b = on_served
    b.open("/webui/new")
    b.choose("Type", "Remote HTTP call")
    assert not b.field("Command").is_displayed()  # the other type's fields are hidden
    b.fill("Name", "ping the hook")
    b.fill("URL", f"{hook}/hook")
    b.fill("Method", "POST")
    b.fill("Body", '{"hello": "hook"}')
    b.fill("Headers", "Content-Type: application/json")
    b.fill("Expected response codes", "200")
    b.shot("form-remote")
    b.click("Create job")
    wait_for(lambda: _Hook.seen, 60, "the remote job's request")
    assert _Hook.seen[0] == ("POST", "/hook", b'{"hello": "hook"}')
    body = b.wait_text("HTTP 200", refresh=True)
    assert '{"pong": true}' in body
    b.shot("job-page-remote")


def test_a_bad_schedule_shows_the_servers_reason_and_stores_nothing(
    on_served: Browser, served: str
) -> None:
    before = set(ours.get(f"{served}/api/v1/job/").json()["jobs"])
    b = on_served
    b.open("/webui/new")
    b.fill("Name", "never stored")
    b.fill("Command", "true")
    b.fill("Schedule", f"R2/{future()}/P1D")
    b.wait_text("every day from")  # the live preview, while typing
    assert "3 runs left" in b.text()  # R2: the first run and two repetitions
    b.fill("Schedule", "R/2026-13-01T09:00:00Z/PT1H")
    b.wait_text("month must be in 1..12")
    b.fill("Schedule", "R/2020-01-01T09:00:00Z/PT1H")
    b.wait_text("the start time is in the past")
    b.click("Create job")
    alert = b.driver.find_element("css selector", "[role=alert]").text
    assert "Error occurred when initializing the job: schedule 'R/2020-01-01T09:00:00Z/PT1H': " \
        "the start time is in the past" in alert
    assert b.field("Name").get_attribute("value") == "never stored"  # the form keeps the input
    b.shot("form-refused")
    assert set(ours.get(f"{served}/api/v1/job/").json()["jobs"]) == before


def test_the_form_previews_a_cron_while_it_is_typed(on_served: Browser) -> None:
    """Decision 24: the live preview of a cron, and of a refused one, from the API's preview."""
    b = on_served
    b.open("/webui/new")
    b.fill("Cron", "0 9 * * MON-FRI")
    b.fill("Time zone", "Europe/Berlin")
    b.wait_text("At 09:00 on Monday through Friday (Europe/Berlin)")
    b.fill("Cron", "0 25 * * *")
    b.wait_text("invalid cron '0 25 * * *': Bad hour")


def test_delete_asks_first(on_served: Browser, served: str) -> None:
    job_id = ours.post(f"{served}/api/v1/job/", json={
        "name": "to be deleted", "command": "true", "schedule": f"R/{future()}/PT1H"}).json()["id"]
    b = on_served
    b.open(f"/webui/job/{job_id}/")
    b.click("Delete")
    assert "Delete this job?" in b.text()
    b.shot("delete-confirm")
    assert ours.get(f"{served}/api/v1/job/{job_id}/").status_code == 200
    b.click("Delete")
    b.wait_text("Deleted 1 job.")
    assert ours.get(f"{served}/api/v1/job/{job_id}/").status_code == 404


def test_stats_page(on_served: Browser) -> None:
    b = on_served
    b.follow("Stats")
    body = b.wait_text("Runs in flight")
    assert "Failures in the last 24 h" in body and "Active jobs" in body
    b.shot("stats")


def test_with_a_token_the_pages_need_it(browser: Browser, guarded: str) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    job_id = ours.post(f"{guarded}/api/v1/job/", headers=auth, json={
        "name": "guarded job", "command": "true", "schedule": f"R/{future()}/PT1H"}).json()["id"]
    b = browser
    b.switch(guarded)
    for path in ("/webui/", "/webui/stats", "/webui/new", f"/webui/job/{job_id}/"):
        b.open(path)
        assert b.path.startswith("/webui/login"), path
        assert "guarded job" not in b.text()
    assert httpx.get(f"{guarded}/webui/preview?schedule=R").status_code == 401
    b.shot("login")
    b.fill("Token", "wrong")
    b.click("Sign in")
    assert "That is not a token of this server." in b.text()
    b.fill("Token", TOKEN)
    b.click("Sign in")
    assert b.path == f"/webui/job/{job_id}/"  # back where we were going
    assert "guarded job" in b.text()
    b.open("/webui/")  # asked once: the session keeps it
    assert "guarded job" in b.text()
    b.click("Sign out")
    assert b.path.startswith("/webui/login")
    b.open("/webui/")
    assert b.path.startswith("/webui/login")


_TABLE = """return Array.from(document.querySelectorAll(
    'table[data-chart="' + arguments[0] + '"] tbody tr')).map(tr => [tr.dataset.hour,
    Array.from(tr.querySelectorAll('td')).map(td => [td.dataset.state || '', td.textContent])])"""
ENDED = ("success", "failed", "lost", "skipped")


def _executions(served: str, job_id: str) -> list[dict]:
    return ours.get(f"{served}/api/v1/job/{job_id}/executions/").json()["job_stats"]


def _hour(stamp: str) -> str:
    return stamp[:13]  # "2026-12-07T06" of the API's RFC 3339 UTC time


def test_the_charts_draw_the_runs_the_workers_ran(on_served: Browser, served: str) -> None:
    """Issue 28: real runs (the serve's beat and worker), drawn by the job's strip and the
    Overview, bar for bar and count for count as the API lists them; no sideways scroll."""
    ok = ours.post(f"{served}/api/v1/job/", json={
        "name": "charted every 2 s", "command": "true",
        "schedule": f"R2/{future(2)}/PT2S"}).json()["id"]
    bad = ours.post(f"{served}/api/v1/job/", json={
        "name": "charted and failing", "command": "exit 3",
        "schedule": f"R1/{future(2)}/PT2S"}).json()["id"]

    def ended() -> dict[str, list[dict]] | None:
        runs = {job: _executions(served, job) for job in (ok, bad)}
        done = all(r["state"] in ENDED for listed in runs.values() for r in listed)
        return runs if done and len(runs[ok]) == 3 and len(runs[bad]) == 2 else None

    runs = wait_for(ended, 90, "the charted jobs' runs to end")
    assert [r["state"] for r in runs[ok]] == ["success"] * 3  # type: ignore[index]
    assert [r["state"] for r in runs[bad]] == ["failed"] * 2  # type: ignore[index]

    b = on_served
    b.open(f"/webui/job/{ok}/")
    bars = b.driver.find_elements("css selector", "svg.strip g.bar")
    assert [(e.get_attribute("data-run"), e.get_attribute("data-state")) for e in bars] == [
        (r["id"], r["state"]) for r in runs[ok]]  # type: ignore[index]
    drawn = b.driver.find_elements("css selector", "svg.strip g.bar rect.c-success")
    assert len(drawn) == 3 and all(r.size["width"] > 0 and r.size["height"] > 0 for r in drawn)
    heading = b.driver.find_element("css selector", "#history-title").text
    assert heading == "The last 3 runs"  # R2 is used up: no next runs
    b.shot("chart-job-real-runs")
    b.driver.set_window_size(390, 844)
    assert b.overflows() <= 0, "the job page scrolls sideways at 390 px"
    b.driver.set_window_size(1366, 900)

    b.follow("Overview")
    since = b.driver.find_element("css selector", "#runs-chart").get_attribute("data-since")

    def as_listed() -> tuple[dict, int]:
        """Runs due in the window by hour and state, and the scheduled ones that started,
        from every job's executions."""
        counts: dict[str, dict[str, int]] = {}
        started = 0
        for job_id in ours.get(f"{served}/api/v1/job/").json()["jobs"]:
            for r in _executions(served, job_id):
                if r["scheduled_for"] < since.replace("+00:00", "Z"):
                    continue
                by_state = counts.setdefault(_hour(r["scheduled_for"]), {})
                by_state[r["state"]] = by_state.get(r["state"], 0) + 1
                started += r["trigger"] == "schedule" and r["state"] in ("success", "failed")
        return counts, started

    def as_drawn() -> tuple[dict, int]:
        rows = b.driver.execute_script(_TABLE, "runs-per-minute")
        counts = {hour: {state: int(n.replace(",", "")) for state, n in cells
                         if state and n != "0"}
                  for hour, cells in rows}
        late = b.driver.execute_script(_TABLE, "lateness-per-minute")
        return counts, sum(int(cells[0][1].replace(",", "")) for _hour_, cells in late)

    def same() -> bool:
        b.driver.refresh()
        return as_drawn() == as_listed()

    wait_for(same, 30, "the Overview to count the runs the API lists")
    drawn, started = as_drawn()
    assert drawn == as_listed()[0] and started >= 5
    assert set(b.driver.execute_script(
        "return Array.from(document.querySelectorAll('svg.area path')).map(p => p.dataset.state)"
    )) == {state for by_state in drawn.values() for state in by_state}
    failing = b.driver.find_element("css selector", f'tr[data-job-id="{bad}"]').text
    assert "charted and failing" in failing and " 2 " in f" {failing} "
    b.shot("chart-overview-real-runs")
    b.driver.set_window_size(390, 844)
    assert b.overflows() <= 0, "the Overview scrolls sideways at 390 px"
    b.open("/webui/stats")
    assert b.overflows() <= 0, "Stats scrolls sideways at 390 px"
    b.driver.set_window_size(1366, 900)
