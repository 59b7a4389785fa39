"""The dashboard's charts through Flask's test client, on SQLite and PostgreSQL: every figure
the Overview, Stats and a job's page draw is checked against the runs the API lists
(GET /api/v1/job/{id}/executions/), and the aggregates read the index made for them.

The same pages in a real browser: tests/test_web_browser.py and tests/test_web_layout.py."""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text

from kala_celery.api import create_app
from kala_celery.api.metrics import LATENESS_BUCKETS as METRIC_BUCKETS
from kala_celery.config import Settings
from kala_celery.store import activity
from kala_celery.store.activity import LATENESS_BUCKETS, bucket_of, histogram_quantile
from kala_celery.web.charts import seconds_words
from tests.test_api_jobs import future
from tests.webdata import insert_day_of_runs, insert_heartbeats, insert_jobs, insert_runs

STARTED = ("started", "success", "failed", "lost")  # states whose ran_at is the start


def _time(text_: str) -> datetime:
    return datetime.fromisoformat(text_.replace("Z", "+00:00"))


def _listed(client: FlaskClient, job_ids: list[str]) -> list[dict]:
    """Every run of these jobs, as the API lists them."""
    runs = []
    for job_id in job_ids:
        got = client.get(f"/api/v1/job/{job_id}/executions/?limit=1000")
        assert got.status_code == 200
        runs += got.get_json()["job_stats"]
    return runs


@pytest.fixture
def day(db_url: str, tmp_path: Path) -> dict:
    """12 jobs with 26 h of runs (every 7 minutes), a beat's and three workers' rows."""
    app = create_app(Settings(database_url=db_url, data_dir=tmp_path), publish=lambda runs: None)
    engine = app.extensions["kala"].engine
    now = datetime.now(UTC)
    ids = insert_jobs(engine, 12, now=now)
    written = insert_day_of_runs(engine, ids, now=now, every=timedelta(minutes=7), hours=26)
    insert_heartbeats(engine, now=now)
    yield {"app": app, "client": app.test_client(), "ids": ids, "runs": written}
    engine.dispose()


def _cells(page: str, chart: str) -> str:
    table = re.search(rf'<table class="numbers-table" data-chart="{chart}">(.*?)</table>', page,
                      re.DOTALL)
    assert table, f"no table of numbers for {chart}"
    return table[1]


def _by(runs: list[dict], key: str) -> tuple[dict[str, Counter], dict[str, list[int]]]:
    """Runs by due time (formatted with `key`): counts by state, and the lateness histogram of
    the scheduled ones that started."""
    counts: dict[str, Counter] = defaultdict(Counter)
    histograms: dict[str, list[int]] = defaultdict(lambda: [0] * (len(LATENESS_BUCKETS) + 1))
    for r in runs:
        due = _time(r["scheduled_for"])
        counts[due.strftime(key)][r["state"]] += 1
        if r["trigger"] == "schedule" and r["state"] in STARTED:
            late = max((_time(r["ran_at"]) - due).total_seconds(), 0)
            histograms[due.strftime(key)][bucket_of(late)] += 1
    return counts, histograms


def test_the_minutes_are_the_runs_the_api_lists(day: dict) -> None:
    """The store's aggregate, minute by minute (the pages' tables sum them by the hour)."""
    window = activity.Window.ending(datetime.now(UTC))
    with day["app"].extensions["kala"].sessions() as session:
        seen = activity.activity(session, window)
    due = [r for r in _listed(day["client"], day["ids"])
           if window.start <= _time(r["scheduled_for"]) < window.end]
    counts, histograms = _by(due, "%Y-%m-%dT%H:%M")
    key = [window.minute(k).strftime("%Y-%m-%dT%H:%M") for k in range(window.minutes)]
    assert {key[k]: Counter({s: n[k] for s, n in seen.by_state.items() if n[k]})
            for k in range(window.minutes) if seen.total(k)} == counts
    assert {key[k]: seen.lateness[k] for k in range(window.minutes) if seen.started(k)} == \
        dict(histograms)


def test_the_overview_draws_the_runs_the_api_lists(day: dict) -> None:
    client = day["client"]
    page = client.get("/webui/overview").get_data(as_text=True)
    listed = _listed(client, day["ids"])
    assert len(listed) == day["runs"]
    start = _time(re.search(r'data-since="([^"]+)"', page)[1])  # the page's own window
    due = [r for r in listed if _time(r["scheduled_for"]) >= start]
    assert 0 < len(due) < len(listed)  # the 2 h before the window are left out

    # runs by state: the table under the chart, an hour a row
    counts, histograms = _by(due, "%Y-%m-%dT%H")
    shown: dict[str, Counter] = {}
    for hour, row in re.findall(r'<tr data-hour="([^"]+)">(.*?)</tr>',
                                _cells(page, "runs-per-minute")):
        shown[hour] = Counter({state: int(n) for state, n in
                               re.findall(r'data-state="(\w+)">(\d+)<', row) if int(n)})
    assert shown == counts
    assert f'data-figure="due">{len(due):,}<' in page
    failed = sum(1 for r in due if r["state"] in ("failed", "lost"))
    assert f'data-figure="failed">{failed:,}<' in page
    # one area per state present, in the chart itself
    drawn = set(re.findall(r'<path class="c-(\w+)" data-state', page))
    assert drawn == {r["state"] for r in due}

    # lateness p50/p99: histogram_quantile over the runs' own start - due, an hour a row
    rows = re.findall(r'<tr data-hour="([^"]+)"><th scope="row">[^<]*</th><td class="num">'
                      r'(\d+)</td><td class="num">([^<]*)</td><td class="num">([^<]*)</td>',
                      _cells(page, "lateness-per-minute"))
    assert {h: (int(n), p50, p99) for h, n, p50, p99 in rows} == {
        h: (sum(hist), seconds_words(histogram_quantile(0.5, hist)),
            seconds_words(histogram_quantile(0.99, hist)))
        for h, hist in histograms.items()}
    assert "alert threshold" in page  # KalaRunLatenessHigh's 60 s, drawn as a line
    # each hour's numbers are also a tooltip over its part of each chart
    tips = re.findall(r'<rect class="hover"[^>]*><title>[^<]* to \d\d:59: ([\d,]+) (runs|started)',
                      page)
    assert sorted(int(n.replace(",", "")) for n, kind in tips if kind == "runs") == sorted(
        sum(c.values()) for c in counts.values())
    assert sorted(int(n.replace(",", "")) for n, kind in tips if kind == "started") == sorted(
        sum(h) for h in histograms.values())

    # runs in flight: every run not ended, whenever it was due
    for state in ("pending", "sent", "started"):
        n = sum(1 for r in listed if r["state"] == state)
        assert re.search(rf'<tr data-state="{state}">.*?<td class="num">{n:,}</td>', page), state

    # the jobs failing most: failed or lost runs due in the window, most first
    failures = Counter(r["job_id"] for r in due if r["state"] in ("failed", "lost"))
    totals = Counter(r["job_id"] for r in due)
    table = re.findall(r'<tr data-job-id="([^"]+)">.*?<td class="num err">(\d+)</td>'
                       r'<td class="num">(\d+)</td>', page)
    assert table == [(job, str(n), str(totals[job])) for job, n in
                     sorted(failures.items(), key=lambda kv: (-kv[1], kv[0]))[:10]]

    # beats and workers with their heartbeat: the silent one says so
    assert re.search(r"kala-beat-1/41</span></td><td><span class=\"badge state-success\">alive",
                     page)
    assert re.search(r"celery@worker-2/302</span></td><td><span class=\"badge state-failed\">"
                     r"silent</span> 10 min ago", page)


def test_stats_shows_the_same_charts(day: dict) -> None:
    stats = day["client"].get("/webui/stats").get_data(as_text=True)
    overview = day["client"].get("/webui/overview").get_data(as_text=True)

    def numbers(page: str) -> str:
        return _cells(page, "runs-per-minute")

    assert numbers(stats) == numbers(overview)
    assert "Active jobs" in stats and "Failures in the last 24 h" in stats  # Kala's figures stay


def test_a_jobs_strip_is_its_last_100_runs_and_next_occurrences(db_url: str,
                                                                  tmp_path: Path) -> None:
    app = create_app(Settings(database_url=db_url, data_dir=tmp_path), publish=lambda runs: None)
    client = app.test_client()
    job_id = client.post("/api/v1/job/", json={"name": "strip", "command": "true",
                                               "schedule": f"R/{future()}/PT1H"}).get_json()["id"]
    insert_runs(app.extensions["kala"].engine, job_id, 130)
    page = client.get(f"/webui/job/{job_id}/").get_data(as_text=True)
    newest = client.get(f"/api/v1/job/{job_id}/executions/?limit=100").get_json()["job_stats"]
    bars = re.findall(
        r'<g class="bar" data-run="([^"]+)" data-state="(\w+)"><title>([^<]+)</title>', page)
    # oldest first, as the API lists them (the bars are drawn left to right)
    assert [(run_id, state) for run_id, state, _tip in bars] == [
        (r["id"], r["state"]) for r in newest]
    assert all(tip.startswith(("success · due", "failed · due")) and "took 2 s" in tip
               for _id, _state, tip in bars)
    assert page.count('<g class="next">') == 5  # the schedule's next 5 occurrences
    assert "The last 100 runs and the next 5" in page
    rows = re.findall(r'<tr data-run="([^"]+)">', _cells(page, "run-strip"))
    assert sorted(rows) == sorted(r["id"] for r in newest)
    app.extensions["kala"].engine.dispose()


def test_the_pages_draw_an_empty_store(db_url: str, tmp_path: Path) -> None:
    app = create_app(Settings(database_url=db_url, data_dir=tmp_path), publish=lambda runs: None)
    client = app.test_client()
    page = client.get("/webui/overview").get_data(as_text=True)
    assert "No runs due in the last 24 h" in page
    assert "No scheduled run started in the last 24 h" in page
    assert "No beat or worker has written its heartbeat yet." in page
    job_id = client.post("/api/v1/job/", json={"name": "none yet", "command": "true",
                                               "schedule": f"R2/{future()}/PT1H"}).get_json()["id"]
    job = client.get(f"/webui/job/{job_id}/").get_data(as_text=True)
    assert "The next 3 runs</h2>" in job and job.count('<g class="next">') == 3
    app.extensions["kala"].engine.dispose()


def test_the_window_is_read_through_its_index(day: dict) -> None:
    """The grouped scan reads ix_runs_due: on SQLite as a covering index; on PostgreSQL (whose
    planner prefers a scan of a small table) it can, when scans are off."""
    engine = day["app"].extensions["kala"].engine
    statement = activity.grouped_statement(engine.dialect.name,
                                           activity.Window.ending(datetime.now(UTC)))
    sql = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
    sql = sql.replace("LIMIT ? OFFSET", "LIMIT -1 OFFSET")  # SQLite's no-limit stays a bind
    with engine.connect() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text("SET enable_seqscan = off"))
            plan = " ".join(row[0] for row in conn.execute(text("EXPLAIN " + sql)))
        else:
            plan = " ".join(str(row) for row in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))
    assert "ix_runs_due" in plan, plan
    if engine.dialect.name == "sqlite":
        assert "COVERING INDEX ix_runs_due" in plan, plan


def test_lateness_percentiles_are_prometheus_histogram_quantile() -> None:
    assert LATENESS_BUCKETS == METRIC_BUCKETS  # the same buckets /metrics exports
    assert [bucket_of(s) for s in (0, 0.05, 0.051, 1, 1.5, 3600, 3601)] == [0, 0, 1, 4, 5, 12, 13]
    counts = [0] * (len(LATENESS_BUCKETS) + 1)
    assert histogram_quantile(0.5, counts) is None
    counts[4] = 10  # ten starts in (0.5, 1]
    assert histogram_quantile(0.5, counts) == pytest.approx(0.75)  # linear within the bucket
    counts[0] = 10  # and ten in [0, 0.05]
    assert histogram_quantile(0.25, counts) == pytest.approx(0.025)
    assert histogram_quantile(0.99, counts) == pytest.approx(0.5 + 0.5 * 9.8 / 10)
    counts[-1] = 5  # later than the last bound: the last bound, as Prometheus answers
    assert histogram_quantile(0.99, counts) == 3600.0


def test_the_drawing_is_small_and_says_what_it_draws() -> None:
    from zoneinfo import ZoneInfo

    from kala_celery.web import charts

    now = datetime(2026, 12, 7, 12, 0, 30, tzinfo=UTC)
    window = activity.Window.ending(now)
    flat = activity.Activity(window, {"success": [3] * window.minutes},
                             [[0, 0, 0, 3] + [0] * 10 for _ in range(window.minutes)])
    utc = ZoneInfo("UTC")
    runs = charts.runs_per_minute(flat, utc, now)
    assert len(runs.svg) < 1000  # a flat day is one rectangle, not 1,440 corners
    assert runs.summary == ("4,320 runs due in the last 24 h; at most 3 in a minute "
                            "(6 Dec 12:01 UTC)")
    assert runs.ticks == ["6 Dec 12:01", "18:01", "7 Dec 00:01", "06:01", "12:01"]
    late = charts.lateness_per_minute(flat, utc, now)
    assert "the worst p99 497 ms" in late.summary and len(late.svg) < 2000
    assert [charts.seconds_words(s) for s in (None, 0.04, 2.5, 38, 222, 3600, 90_000)] == [
        "—", "40 ms", "2.5 s", "38 s", "3.7 min", "1 h", "25 h"]

    # a run still going past the longest ended one reaches the top, and says so
    ended = charts.StripRun("a", "success", "schedule", now - timedelta(minutes=20),
                            now - timedelta(minutes=20) + timedelta(seconds=2), 4_000_000_000)
    going = charts.StripRun("b", "started", "manual", now - timedelta(minutes=10),
                            now - timedelta(minutes=10), None)
    strip = charts.run_strip([going, ended], [now + timedelta(minutes=10)], now, utc)
    assert strip is not None
    assert re.search(r'<title>success · due 7 Dec 11:40:30 UTC · took 4 s · started 2 s '
                     r'late</title><rect class="c-success" x="[\d.]+" y="0" ', str(strip.svg))
    assert "running for 10 min · started 0 ms late · manual" in str(strip.svg)
    assert strip.summary == ("The last 2 runs (0 failed or lost; the longest took 4 s, the "
                             "latest start was 2 s after due) and the next 1 occurrence")
    assert charts.run_strip([], [], now, utc) is None
