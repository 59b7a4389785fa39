"""import: how long `kala-celery import` takes to move N jobs (2,000; smoke: 200) out of the real
Kala (tests/kala_reference.py; skipped without the binary), on SQLite and on PostgreSQL, against
the baseline of creating the same jobs through the API's create path in the same run.

Kala gets N jobs over HTTP: nine in ten scheduled (`R/<start>/PT1H`, retries 1), every tenth a
child of the job before it. Timed, in this process: the import from Kala's saved listing
(decode, plan, write: what the command does after reading), a second import of the same
listing (every job already here), and the baseline: the same N bodies POSTed to our API
through Flask's test client (routing, decode, create, commit per request, no network).
"""

from __future__ import annotations

import time
from datetime import timedelta

import httpx

from bench.common import Report, Servers, log, ratio, secs, utcnow
from kala_celery.api import create_app
from kala_celery.config import Settings
from kala_celery.ops import import_kala as importer
from kala_celery.store.db import make_sessionmaker
from kala_celery.store.jobs import Rules
from kala_celery.wire import format_time
from tests.kala_reference import binary, start_kala


def _bodies(n: int, start: str) -> list[dict]:
    """N job bodies; a child names the index of its parent in `parent_jobs` (resolved later)."""
    return [{"name": f"c{i}", "command": "true", "parent_jobs": [i - 1]} if i % 10 == 9 else
            {"name": f"j{i}", "command": "true", "owner": "o@x", "retries": 1,
             "schedule": f"R/{start}/PT1H"} for i in range(n)]


def _post_all(post, bodies: list[dict]) -> list[str]:
    ids: list[str] = []
    for body in bodies:
        if "parent_jobs" in body:
            body = {**body, "parent_jobs": [ids[p] for p in body["parent_jobs"]]}
        ids.append(post(body))
    return ids


def run(args, servers: Servers) -> Report:
    report = Report("import", smoke=args.smoke)
    n = args.list_jobs or (200 if args.smoke else 2_000)
    stores = args.dbs or ["sqlite", "postgresql"]
    if binary() is None:
        report.note("skipped: no Kala binary (KALA_REFERENCE_BIN unset, no ../shared/reference)")
        return report
    table = report.table(f"Moving {n:,} jobs out of the real Kala",
                         ["store", "step", "time", "jobs/s", "vs the API's creates"])
    bodies = _bodies(n, format_time(utcnow() + timedelta(days=30)))
    kala = start_kala()
    try:
        with httpx.Client(base_url=kala.api, timeout=30) as http:
            began = time.perf_counter()
            _post_all(lambda body: http.post("/job/", json=body).json()["id"], bodies)
            log(f"filled Kala with {n:,} jobs in {time.perf_counter() - began:.1f} s")
            listing = http.get("/job/").content
    finally:
        kala.stop()
    for store in stores:
        url = servers.database(store, "import")
        baseline_url = servers.database(store, "import-baseline")
        settings = Settings(database_url=baseline_url, data_dir=servers.dir(f"import-{store}"))
        app = create_app(settings, publish=lambda runs: None)
        client = app.test_client()
        began = time.perf_counter()
        _post_all(lambda body, client=client: client.post("/api/v1/job/", json=body)
                  .get_json()["id"], bodies)
        baseline = time.perf_counter() - began
        app.extensions["kala"].engine.dispose()
        table.add(store, f"{n:,} POST /api/v1/job/ (baseline)", secs(baseline),
                  f"{n / baseline:,.0f}", "1.00x")
        engine = create_app(settings.with_overrides(database_url=url),
                            publish=lambda runs: None).extensions["kala"].engine
        sessions = make_sessionmaker(engine)
        try:
            for step in ("import", "import again (all here)"):
                began = time.perf_counter()
                found, _ = importer.parse_listing(listing)
                outcomes = importer.import_jobs(sessions, found, Rules(), utcnow())
                took = time.perf_counter() - began
                done = sum(o.result in (importer.IMPORTED, importer.HERE) for o in outcomes)
                assert done == n, importer.table(outcomes)
                table.add(store, step, secs(took), f"{n / took:,.0f}",
                          ratio(took, baseline))
        finally:
            engine.dispose()
            servers.drop(url)
            servers.drop(baseline_url)
    return report
