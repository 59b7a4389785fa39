"""The dashboard's layout in a real browser with 10,000 jobs, very long names and output, a day
of runs for the charts, and a phone-sized window: the page itself never scrolls sideways, and
every page is screenshotted (tests/browser.SHOTS) to be looked at. The app runs in-process on
SQLite (no worker needed: nothing here runs a job). The `docs-*.png` shots are the ones in
docs/img/ (copied from SHOTS by hand after a change of the pages)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from kala_celery.api import create_app
from kala_celery.config import Settings
from tests import openapi_check as ours
from tests.browser import SHOTS, Browser, start_browser
from tests.live import LiveServer
from tests.test_api_jobs import future
from tests.webdata import insert_day_of_runs, insert_heartbeats, insert_jobs, insert_runs

LONG_NAME = "nightly-" + "very-long-unbroken-job-name-" * 8 + "end"
LONG_OWNER = "someone.with.a.really.long.address." * 3 + "@example.com"
NARROW = 390


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    tmp: Path = tmp_path_factory.mktemp("layout")
    published: list = []
    app = create_app(Settings(data_dir=tmp), publish=published.extend)
    state = app.extensions["kala"]
    ids = insert_jobs(state.engine, 10_000)
    insert_day_of_runs(state.engine, ids[:360:3], every=timedelta(minutes=10))  # 12 a minute
    insert_heartbeats(state.engine)
    server = LiveServer(app)
    api = f"{server.url}/api/v1"
    parent = ours.post(f"{api}/job/", json={
        "name": LONG_NAME, "owner": LONG_OWNER, "command": "bash -c 'for i in $(seq 1 200); "
        "do echo line $i of a long output; done'", "schedule": f"R/{future()}/PT15M",
        "timezone": "America/New_York", "epsilon": "PT1M", "retries": 2,
        "retry_delay": "PT30S", "retry_backoff": True, "run_timeout": "PT10M",
        "queue": "long-running"}).json()["id"]
    child = ours.post(f"{api}/job/", json={
        "name": "a dependent job with a long name " * 3, "command": "true",
        "parent_jobs": [parent]}).json()["id"]
    remote = ours.post(f"{api}/job/", json={
        "name": "remote hook", "type": 1, "schedule": f"R5/{future()}/P1D",
        "remote_properties": {"url": "https://example.com/" + "a-long-path/" * 12,
                              "method": "POST", "body": '{"x": 1}',
                              "headers": {"X-Token": ["abc"]},
                              "expected_response_codes": [200, 202]}}).json()["id"]
    output = "\n".join(f"line {i} of a long output " + "x" * 150 for i in range(200))
    insert_runs(state.engine, parent, 45, output=output)
    charted = ours.post(f"{api}/job/", json={
        "name": "reports export", "owner": "reports@example.com", "command": "make export",
        "schedule": f"R/{future()}/PT15M"}).json()["id"]
    insert_day_of_runs(state.engine, [charted], hours=25)  # 100 runs, 15 minutes apart
    yield {"url": server.url, "parent": parent, "child": child, "remote": remote,
           "charted": charted}
    server.stop()
    state.engine.dispose()


@pytest.fixture(scope="module")
def browser(site: dict) -> Iterator[Browser]:
    browser = start_browser(site["url"])
    yield browser
    browser.close()


def _narrow(b: Browser, name: str) -> None:
    b.driver.set_window_size(NARROW, 844)
    assert b.overflows() <= 0, f"{name}: the page scrolls sideways at {NARROW} px"
    b.driver.save_screenshot(str(SHOTS / f"{name}-narrow-top.png"))  # what a phone shows first
    b.shot(f"{name}-narrow", width=NARROW)


def test_the_list_of_10k_jobs_pages_searches_and_filters(browser: Browser) -> None:
    b = browser
    b.open("/webui/")
    body = b.text()
    assert "1\u201350 of 10,004 jobs" in body and "Page 1 of 201" in body
    b.shot("layout-jobs-10k")
    _narrow(b, "layout-jobs-10k")
    b.driver.set_window_size(1366, 900)
    b.follow("Next")
    assert "51\u2013100 of 10,004 jobs" in b.text()
    b.fill("Search", "very-long-unbroken")
    b.click("Filter")
    assert "1\u20131 of 1 job" in b.text()
    b.shot("layout-jobs-long-name")
    _narrow(b, "layout-jobs-long-name")
    b.driver.set_window_size(1366, 900)
    b.open("/webui/?state=failing")
    assert "of 909 jobs" in b.text()  # i % 11 == 5 of the 10,000
    b.open("/webui/?state=disabled&q=billing")
    assert "billing" in b.text() and "disabled" in b.text()


def test_a_job_with_long_everything(browser: Browser, site: dict) -> None:
    b = browser
    b.open(f"/webui/job/{site['parent']}/")
    body = b.text()
    assert "every 15 minutes from" in body and "America/New_York" in body
    assert "45 in all, newest first" in body and "Page 1 of 3" in body
    assert "a dependent job with a long name" in body  # the dependent, as a link
    b.shot("layout-job-long")
    _narrow(b, "layout-job-long")
    b.driver.set_window_size(1366, 900)
    b.open(f"/webui/job/{site['child']}/")
    assert "after its parent job" in b.text()
    b.follow(LONG_NAME)  # the parent, as a link
    assert b.path == f"/webui/job/{site['parent']}/"
    b.open(f"/webui/job/{site['remote']}/")
    assert "every day from" in b.text() and "6 runs left" in b.text()
    b.shot("layout-job-remote")


def test_the_forms_and_stats_on_a_narrow_window(browser: Browser, site: dict) -> None:
    b = browser
    b.open(f"/webui/job/{site['remote']}/edit")
    assert b.field("URL").get_attribute("value").startswith("https://example.com/a-long-path/")
    assert b.field("Expected response codes").get_attribute("value") == "200, 202"
    b.shot("layout-form-edit-remote")
    _narrow(b, "layout-form-edit-remote")
    b.driver.set_window_size(1366, 900)
    b.open("/webui/stats")
    assert "10,004" in b.text()
    _narrow(b, "layout-stats")


def test_the_charts_fit_a_phone_and_are_shot_for_the_docs(browser: Browser, site: dict) -> None:
    b = browser
    b.open("/webui/overview")
    body = b.text()
    assert "Runs per minute, by state" in body and "Due → start, per minute" in body
    assert "celery@worker-2/302" in body and "silent" in body  # a worker gone quiet
    charts = b.driver.find_elements("css selector", "svg.chart")
    assert len(charts) == 2 and all(c.size["width"] > 600 and c.size["height"] > 100
                                    for c in charts)
    b.shot("docs-overview")
    _narrow(b, "layout-overview")
    b.driver.set_window_size(NARROW, 844)
    b.driver.execute_script("document.getElementById('runs-chart').scrollIntoView()")
    b.driver.save_screenshot(str(SHOTS / "docs-overview-narrow.png"))
    b.driver.set_window_size(1366, 900)

    b.open(f"/webui/job/{site['charted']}/")
    assert "The last 100 runs and the next 5" in b.text()
    bars = b.driver.find_elements("css selector", "svg.strip g.bar")
    assert len(bars) == 100
    b.shot_of("#history", "docs-job-strip")
    _narrow(b, "layout-job-strip")
    b.driver.set_window_size(1366, 900)

    b.open("/webui/stats")
    assert len(b.driver.find_elements("css selector", "svg.chart")) == 2
    b.driver.set_window_size(1366, 1200)  # Kala's figures and the first chart under them
    b.driver.save_screenshot(str(SHOTS / "docs-stats.png"))
    _narrow(b, "layout-stats-charts")
