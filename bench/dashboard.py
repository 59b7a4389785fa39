"""dashboard: server time of the dashboard's pages (kala_celery/web) with N stored jobs (10k)
and M stored runs (1M), on SQLite and on PostgreSQL side by side — the job list's first and
last page, a search, a state filter, a job page (its runs and the strip of its last 100), the
Overview (the last 24 h as charts: store/activity.py) and Stats (Kala's figures and the same
charts); p50/p95 over repeated requests through the WSGI app in-process (Flask's test client:
routing, queries and rendering, no network). The Overview is timed once more without the
index its aggregates read (ix_runs_due, migration 0008), to show what the index is for.

The runs are bulk-inserted in SQL (PostgreSQL: INSERT ... SELECT generate_series, the runs
triggers off; SQLite: a recursive CTE), 1M/10k = 100 per job, each job's evenly spread over
the last `--runs-days` days: 30 by default, the history KALA_RUN_RETENTION's default (P30D)
keeps, so 1M stored runs are about 33k due in the Overview's 24 h (23 a minute);
`--runs-days 7` is a store four times busier (143k in 24 h, 100 a minute). Each run is
0.2-2.1 s late (every 97th 30 s more) and 1-13 s long; 90 % success, 6 % failed, 2 % lost,
2 % skipped; the newest run of every 50th job still running. Then ANALYZE (PostgreSQL: VACUUM
ANALYZE, as autovacuum would).

Targets: the job list (issue 13) and each chart page (issue 28) in <= 300 ms of server time at
p95, with 10k jobs and 1M runs.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, text

from bench.common import Report, Servers, log, ms, secs, spread
from kala_celery.api import create_app
from kala_celery.config import Settings
from tests.webdata import insert_heartbeats, insert_jobs

TARGET = 0.300  # seconds at p95: a page of the job list (issue 13), each chart page (issue 28)
CHUNK = 250_000  # runs per INSERT statement
STATES = ("CASE WHEN h < 90 THEN 'success' WHEN h < 96 THEN 'failed' WHEN h < 98 THEN 'lost' "
          "ELSE 'skipped' END")


def _runs_sql(dialect: str) -> str:
    """INSERT runs :lo .. :hi - 1. Run i is occurrence k = i / :jobs of job j = i % :jobs,
    due at :base + k * :step + j * :step / :jobs seconds."""
    if dialect == "postgresql":
        series = "generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint) - 1) AS g(i)"
        job = "'job-' || lpad(CAST(i % :jobs AS text), 6, '0')"
        run_id = "CAST(md5('dashboard-' || i) AS uuid)"

        def at(seconds: str) -> str:
            return f"CAST(:base AS timestamp) + ({seconds}) * interval '1 second'"
    else:
        series = ("(WITH RECURSIVE r(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM r "
                  "WHERE i < :hi - 1) SELECT i FROM r) AS g")
        job = "printf('job-%06d', i % :jobs)"
        run_id = "printf('dashboard-run-%012d', i)"

        def at(seconds: str) -> str:  # SQLAlchemy's text form, microseconds included
            return (f"strftime('%Y-%m-%d %H:%M:%f', :base, '+' || ({seconds}) || ' seconds')"
                    " || '000'")

    fields = (
        f"SELECT i, {job} AS job, (i / :jobs) * :step + (i % :jobs) * :step / :jobs AS due_s, "
        "0.2 + (i % 20) * 0.1 + CASE WHEN i % 97 = 0 THEN 30 ELSE 0 END AS late, "
        "1 + i % 13 AS took, (i * 7 + (i / :jobs) * 13) % 100 AS h, "
        "(i / :jobs = :per_job - 1 AND i % :jobs % 50 = 0) AS running "
        f"FROM {series}"
    )
    state = f"CASE WHEN running THEN 'started' ELSE {STATES} END"
    return (
        "INSERT INTO runs (id, job_id, scheduled_for, trigger, seq, state, attempts, created_at, "
        "started_at, attempt_at, finished_at, duration_ns, exit_code, output, redeliveries) "
        f"SELECT {run_id}, job, {at('due_s')}, 'schedule', 0, {state}, 1, {at('due_s')}, "
        f"CASE WHEN h >= 98 AND NOT running THEN NULL ELSE {at('due_s + late')} END, "
        f"CASE WHEN h >= 98 AND NOT running THEN NULL ELSE {at('due_s + late')} END, "
        f"CASE WHEN running OR h >= 98 THEN NULL ELSE {at('due_s + late + took')} END, "
        "CASE WHEN running OR h >= 98 THEN NULL ELSE took * 1000000000 END, "
        "CASE WHEN running OR h >= 98 THEN NULL WHEN h < 90 THEN 0 ELSE 1 END, "
        "CASE WHEN running OR h >= 98 THEN NULL ELSE 'ok' END, 0 "
        f"FROM ({fields}) AS f"
    )


def fill_runs(engine: Engine, jobs: int, runs: int, days: float, now: datetime) -> float:
    """`runs` runs of jobs job-000000 .. (tests/webdata.insert_jobs), spread over `days`."""
    began = time.perf_counter()
    pg = engine.dialect.name == "postgresql"
    per_job = max(runs // jobs, 1)
    step = days * 86_400 / per_job
    base = (now - timedelta(days=days)).astimezone(UTC).replace(tzinfo=None)
    sql = text(_runs_sql(engine.dialect.name))
    if pg:  # /metrics's counter triggers: 1M calls would only slow the fill
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE runs DISABLE TRIGGER USER"))
    try:
        for lo in range(0, per_job * jobs, CHUNK):
            with engine.begin() as conn:
                conn.execute(sql, {"lo": lo, "hi": min(lo + CHUNK, per_job * jobs),
                                   "jobs": jobs, "step": step, "per_job": per_job,
                                   "base": base if pg else base.isoformat(sep=" ")})
            log(f"  runs up to {min(lo + CHUNK, per_job * jobs):,} "
                f"({secs(time.perf_counter() - began)})")
    finally:
        if pg:
            with engine.begin() as conn:
                conn.execute(text("ALTER TABLE runs ENABLE TRIGGER USER"))
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("VACUUM ANALYZE" if pg else "ANALYZE"))
    return time.perf_counter() - began


def _routes(job_id: str, pages: int) -> list[tuple[str, str]]:
    return [
        ("jobs, first page", "/webui/"),
        ("jobs, last page", f"/webui/?page={pages}"),
        ("jobs, search", "/webui/?q=billing"),
        ("jobs, failing", "/webui/?state=failing"),
        ("a job: 100-run strip, 20 runs", f"/webui/job/{job_id}/"),
        ("overview (charts, 24 h)", "/webui/overview"),
        ("stats (Kala's + charts)", "/webui/stats"),
    ]


def _time(client, path: str, repeats: int) -> tuple[dict[str, float], int]:
    response = client.get(path)  # warm: templates compiled, statements cached
    assert response.status_code == 200, (path, response.status_code)
    took = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        response = client.get(path)
        took.append(time.perf_counter() - t0)
    return spread(took), len(response.data)


def run(args, servers: Servers) -> Report:
    report = Report("dashboard", smoke=args.smoke)
    n = args.list_jobs or (500 if args.smoke else 10_000)
    m = args.dashboard_runs or (10_000 if args.smoke else 1_000_000)
    days = args.runs_days or 30.0
    repeats = 3 if args.smoke else 30
    stores = args.dbs or (["sqlite"] if args.smoke else ["sqlite", "postgresql"])
    pages = report.table(
        f"Dashboard pages with {n:,} jobs and {m:,} runs over {days:g} days "
        f"(server time, {repeats} requests each)",
        ["store", "page", "p50", "p95", "max", "size"],
    )
    fills = report.table("Fill (bulk SQL)", ["store", "jobs", "runs", "runs due in the last 24 h"])
    targets = report.table("Targets", ["target", "measured", "met"])
    for store in stores:
        url = servers.database(store, "dashboard")
        app = create_app(
            Settings(database_url=url, data_dir=servers.dir(f"dashboard-{store}")),
            publish=lambda runs: None,
        )
        engine = app.extensions["kala"].engine
        try:
            now = datetime.now(UTC)
            began = time.perf_counter()
            ids = insert_jobs(engine, n, now=now)
            took_jobs = time.perf_counter() - began
            log(f"inserted {n:,} jobs in {secs(took_jobs)} ({store}); {m:,} runs")
            took_runs = fill_runs(engine, n, m, days, now)
            insert_heartbeats(engine, now=now)
            with engine.connect() as conn:
                due = conn.execute(text("SELECT count(*) FROM runs WHERE scheduled_for >= :t"),
                                   {"t": (now - timedelta(hours=24)).replace(tzinfo=None)
                                    if store == "postgresql" else
                                    (now - timedelta(hours=24)).strftime("%Y-%m-%d %H:%M:%S")}
                                   ).scalar()
            fills.add(store, secs(took_jobs), secs(took_runs), f"{due:,}")
            client = app.test_client()
            worst = {"list": 0.0, "charts": 0.0}
            for label, path in _routes(ids[0], max(-(-n // 50), 1)):
                s, size = _time(client, path, repeats)
                pages.add(store, label, ms(s["p50"], 1), ms(s["p95"], 1), ms(s["max"], 1),
                          f"{size / 1024:,.0f} KiB")
                kind = "list" if label.startswith("jobs") else "charts"
                worst[kind] = max(worst[kind], s["p95"])
            with engine.begin() as conn:  # what the index is for
                conn.execute(text("DROP INDEX ix_runs_due"))
            s, size = _time(client, "/webui/overview", max(repeats // 6, 2))
            pages.add(store, "overview, without ix_runs_due", ms(s["p50"], 1), ms(s["p95"], 1),
                      ms(s["max"], 1), f"{size / 1024:,.0f} KiB")
            targets.add(f"job list p95 ≤ {TARGET * 1000:.0f} ms with {n:,} jobs ({store})",
                        ms(worst["list"], 1), "yes" if worst["list"] <= TARGET else "NO")
            targets.add(f"job page, overview, stats p95 ≤ {TARGET * 1000:.0f} ms with {n:,} "
                        f"jobs and {m:,} runs ({store})", ms(worst["charts"], 1),
                        "yes" if worst["charts"] <= TARGET else "NO")
        finally:
            engine.dispose()
            servers.drop(url)
    return report
