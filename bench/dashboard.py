"""dashboard: server time of the dashboard's pages (kala_celery/web) with N stored jobs (10k),
on SQLite and on PostgreSQL — the job list's first and last page, a search, a state filter,
a job page with runs, and the stats page; p50/p95 over repeated requests through the WSGI app
in-process (Flask's test client: routing, queries and rendering, no network).

Target (issue 13): the job list renders 10,000 jobs in ≤ 300 ms of server time.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

from bench.common import Report, Servers, log, ms, spread
from kala_celery.api import create_app
from kala_celery.config import Settings
from tests.webdata import insert_jobs, insert_runs

TARGET = 0.300  # seconds for a page of the job list with 10k jobs


def _routes(job_id: str, pages: int) -> list[tuple[str, str]]:
    return [
        ("jobs, first page", "/webui/"),
        ("jobs, last page", f"/webui/?page={pages}"),
        ("jobs, search", "/webui/?q=billing"),
        ("jobs, failing", "/webui/?state=failing"),
        ("a job, 30 runs", f"/webui/job/{job_id}/"),
        ("stats", "/webui/stats"),
    ]


def run(args, servers: Servers) -> Report:
    report = Report("dashboard", smoke=args.smoke)
    n = args.list_jobs or (500 if args.smoke else 10_000)
    repeats = 3 if args.smoke else 30
    stores = args.dbs or (["sqlite"] if args.smoke else ["sqlite", "postgresql"])
    pages = report.table(
        f"Dashboard pages with {n:,} stored jobs (server time, {repeats} requests each)",
        ["store", "page", "p50", "p95", "max", "size"],
    )
    targets = report.table("Targets", ["target", "measured", "met"])
    for store in stores:
        url = servers.database(store, "dashboard")
        app = create_app(
            Settings(database_url=url, data_dir=servers.dir(f"dashboard-{store}")),
            publish=lambda runs: None,
        )
        engine = app.extensions["kala"].engine
        try:
            began = time.perf_counter()
            ids = insert_jobs(engine, n, now=datetime.now(UTC))
            for job_id in ids[:: max(n // 100, 1)]:  # a run history for 1 % of the jobs
                insert_runs(engine, job_id, 30, output="done\n" * 20)
            log(f"inserted {n:,} jobs in {time.perf_counter() - began:.1f} s ({store})")
            client = app.test_client()
            worst_list = 0.0
            for label, path in _routes(ids[0], max(-(-n // 50), 1)):
                response = client.get(path)  # warm: templates compiled, statements cached
                assert response.status_code == 200, (path, response.status_code)
                took = []
                for _ in range(repeats):
                    t0 = time.perf_counter()
                    response = client.get(path)
                    took.append(time.perf_counter() - t0)
                s = spread(took)
                pages.add(store, label, ms(s["p50"], 1), ms(s["p95"], 1), ms(s["max"], 1),
                          f"{len(response.data) / 1024:,.0f} KiB")
                if label.startswith("jobs"):
                    worst_list = max(worst_list, s["p95"])
            targets.add(f"job list p95 ≤ {TARGET * 1000:.0f} ms with {n:,} jobs ({store})",
                        ms(worst_list, 1), "yes" if worst_list <= TARGET else "NO")
        finally:
            engine.dispose()
            servers.drop(url)
    return report
