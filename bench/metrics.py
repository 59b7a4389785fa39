"""metrics: the cost of one `GET /metrics` scrape with many jobs and runs stored (target:
≤ 50 ms with 1M jobs and 10M runs), and what the counter triggers add to the writes.

The store is PostgreSQL with the schema at head (migrations: metric_counts and its
triggers). Jobs are bulk-inserted like beat-scale does (INSERT ... SELECT generate_series)
with their triggers on; runs go in 1M per statement with the runs triggers off (10M trigger
calls would only slow the fill), then metric_counts is seeded from them with migration 0002's
own seed statements, as an upgrade does. 90 % of the runs succeeded, the rest failed, were
lost or skipped, and 10k (smoke: 300) are pending, sent or started; then VACUUM ANALYZE
(what autovacuum does). Two beats and 50 worker processes have liveness rows.

Timed: the collector in process (the SQL reads and the text, what every scrape costs), and
GET /metrics through the Flask app (what the API's server serves), each `--scrapes` times; EXPLAIN
ANALYZE of the reads. Then the triggers' cost on writes: a run's end (UPDATE state, one
transaction per run, as runs.finish) and a job insert, with the triggers on and off.
--smoke: 1k jobs, 10k runs, on PostgreSQL and SQLite.
"""

from __future__ import annotations

import importlib.util
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine, text

from bench.common import (
    REPO,
    Report,
    Servers,
    insert_jobs,
    log,
    ms,
    secs,
    spread,
    utcnow,
)
from kala_celery.api.metrics import KalaCollector, registry_for, render
from kala_celery.store.db import init_schema, make_engine

FULL = (1_000_000, 10_000_000)
SMOKE = (1_000, 10_000)
CHUNK = 1_000_000
TARGET = 0.050
WRITES = 2_000  # single-run transactions timed per trigger setting (smoke: 200)
STATES = "CASE WHEN r.i % 100 < 90 THEN 'success' WHEN r.i % 100 < 96 THEN 'failed' " \
         "WHEN r.i % 100 < 98 THEN 'lost' ELSE 'skipped' END"


def _migration_0002() -> Any:
    path = REPO / "kala_celery/store/migrations/versions/0002_liveness_and_metrics.py"
    spec = importlib.util.spec_from_file_location("kala_migration_0002", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _runs_sql(dialect: str) -> str:
    """INSERT runs :lo..:hi; run i belongs to job (i % :jobs) + 1, occurrence i / :jobs
    (so (job, scheduled_for) stays unique), 0.2 .. 2.2 s late; the first :open are open."""
    if dialect == "postgresql":
        job = "CAST(:prefix AS text) || lpad(CAST(r.i % :jobs + 1 AS text), 8, '0')"
        due = "CAST(:base AS timestamp) - (r.i / :jobs) * interval '1 hour'"
        late = "(0.2 + (r.i % 20) * 0.1) * interval '1 second'"
        return (
            "INSERT INTO runs (id, job_id, scheduled_for, trigger, seq, state, attempts, "
            "created_at, started_at, finished_at) SELECT CAST(md5(CAST(r.i AS text)) AS uuid), "
            f"{job}, {due}, 'schedule', 0, CASE WHEN r.i <= :open THEN "
            "(ARRAY['pending', 'sent', 'started'])[r.i % 3 + 1] ELSE "
            f"{STATES} END, 1, {due}, {due} + {late}, {due} + {late} + interval '1 second' "
            "FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS r(i)"
        )
    job = "(:prefix || substr('0000000' || (r.i % :jobs + 1), -8, 8))"
    due = "datetime(:base, '-' || (r.i / :jobs) || ' hours')"
    late = "'+' || (0.2 + (r.i % 20) * 0.1) || ' seconds'"
    return (
        "WITH RECURSIVE r(i) AS (SELECT :lo UNION ALL SELECT i + 1 FROM r WHERE i < :hi) "
        "INSERT INTO runs (id, job_id, scheduled_for, trigger, seq, state, attempts, "
        "created_at, started_at, finished_at) SELECT printf('run-%012d', r.i), "
        f"{job}, {due}, 'schedule', 0, CASE WHEN r.i <= :open THEN "
        "(CASE r.i % 3 WHEN 0 THEN 'pending' WHEN 1 THEN 'sent' ELSE 'started' END) ELSE "
        f"{STATES} END, 1, {due}, strftime('%Y-%m-%d %H:%M:%f', {due}, {late}), "
        f"strftime('%Y-%m-%d %H:%M:%f', {due}, {late}, '+1 seconds')"
        " FROM r"
    )


def _triggers(engine: Engine, table: str, on: bool) -> None:
    if engine.dialect.name != "postgresql":
        return  # SQLite has no DISABLE TRIGGER: its fill keeps them (small N only)
    with engine.begin() as conn:
        conn.execute(text(f"ALTER TABLE {table} {'ENABLE' if on else 'DISABLE'} TRIGGER USER"))


def fill(engine: Engine, jobs: int, runs: int, open_runs: int) -> dict[str, float]:
    took: dict[str, float] = {}
    now = utcnow().replace(microsecond=0)
    log(f"insert {jobs:,} jobs")
    took["jobs"] = insert_jobs(engine, jobs, first_due=now + timedelta(days=1),
                               spread_seconds=86_400)
    log(f"  {secs(took['jobs'])}; insert {runs:,} runs")
    began = time.perf_counter()
    pg = engine.dialect.name == "postgresql"
    _triggers(engine, "runs", False)
    sql = text(_runs_sql(engine.dialect.name))
    for lo in range(1, runs + 1, CHUNK):
        hi = min(lo + CHUNK - 1, runs)
        with engine.begin() as conn:
            conn.execute(sql, {"lo": lo, "hi": hi, "jobs": jobs, "prefix": "bench-",
                               "base": now.replace(tzinfo=None).isoformat(sep=" "),
                               "open": open_runs})
        log(f"  runs up to {hi:,} ({secs(time.perf_counter() - began)})")
    if pg:
        seed = [s for s in _migration_0002()._seed("postgresql") if "FROM runs" in s]
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM metric_counts WHERE series IN ('runs', 'lateness')"))
            for statement in seed:
                conn.execute(text(statement))
        _triggers(engine, "runs", True)
    took["runs"] = time.perf_counter() - began
    with engine.begin() as conn:
        for i in range(2):
            conn.execute(text("INSERT INTO beats (name, started_at, last_tick) "
                              "VALUES (:n, :t, :t)"), {"n": f"beat-{i}/1", "t": now})
        for i in range(50):
            conn.execute(text("INSERT INTO workers (name, started_at, last_seen, running) "
                              "VALUES (:n, :t, :t, '')"), {"n": f"celery@w{i % 5}/{i}", "t": now})
    log("  VACUUM ANALYZE")
    began = time.perf_counter()
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="AUTOCOMMIT")
        conn.execute(text("VACUUM ANALYZE" if pg else "ANALYZE"))
    took["vacuum"] = time.perf_counter() - began
    return took


def time_scrapes(engine: Engine, db_url: str, scrapes: int) -> dict[str, list[float]]:
    from kala_celery.api import create_app
    from kala_celery.config import Settings

    registry = registry_for(engine, timedelta(seconds=30))
    render(registry)  # the first: connects, compiles the statements
    collector: list[float] = []
    for _ in range(scrapes):
        began = time.perf_counter()
        body = render(registry)
        collector.append(time.perf_counter() - began)
    app = create_app(Settings(database_url=db_url), publish=lambda runs: [])
    client = app.test_client()
    client.get("/metrics")
    http: list[float] = []
    for _ in range(scrapes):
        began = time.perf_counter()
        response = client.get("/metrics")
        http.append(time.perf_counter() - began)
        assert response.status_code == 200
    app.extensions["kala"].engine.dispose()
    return {"collector": collector, "http": http, "body": [len(body)]}


def explain(engine: Engine) -> str:
    from kala_celery.api import metrics

    out = []
    with engine.connect() as conn:
        for statement in (metrics._COUNTS, metrics._OPEN, metrics._BEATS, metrics._WORKERS):
            sql = str(statement.compile(engine, compile_kwargs={"literal_binds": True}))
            plan = conn.execute(text("EXPLAIN (ANALYZE, BUFFERS) " + sql)).scalars().all()
            out += [sql, *plan, ""]
    return "\n".join(out)


def write_cost(engine: Engine, n: int) -> dict[str, float]:
    """Seconds per single-row transaction: a run's end (started -> success) and a job insert,
    with the triggers on and off (PostgreSQL only)."""
    cost: dict[str, float] = {}
    with engine.begin() as conn:
        ids = conn.execute(text("SELECT id FROM runs WHERE state IN ('success', 'failed') "
                                "LIMIT :n"), {"n": 2 * n}).scalars().all()
        conn.execute(text("UPDATE runs SET state = 'started' WHERE id = ANY(:ids)"),
                     {"ids": list(ids)})
    for on, chunk in ((True, ids[:n]), (False, ids[n:])):
        _triggers(engine, "runs", on)
        began = time.perf_counter()
        for run_id in chunk:
            with engine.begin() as conn:
                conn.execute(text("UPDATE runs SET state = 'success' WHERE id = :id"),
                             {"id": run_id})
        cost[f"run end, triggers {'on' if on else 'off'}"] = (time.perf_counter() - began) / n
    _triggers(engine, "runs", True)
    for on in (True, False):
        _triggers(engine, "jobs", on)
        began = time.perf_counter()
        for i in range(n):
            with engine.begin() as conn:
                conn.execute(text(
                    "INSERT INTO jobs (id, name, command, owner, disabled, on_failure_job, "
                    "schedule, retries, epsilon, template_delimiters, "
                    "resume_at_next_scheduled_time, job_type, remote_url, remote_method, "
                    "remote_body, remote_timeout, success_count, error_count, "
                    "number_of_finished_runs, is_done, runs_used, missed_occurrences, "
                    "retry_backoff, allow_overlap, created_at) VALUES (:id, '', 'true', '', "
                    "false, '', '', 0, '', '', false, 0, '', '', '', 0, 0, 0, 0, false, 0, 0, "
                    "false, false, now())"), {"id": f"write-{on}-{i}"})
        cost[f"job insert, triggers {'on' if on else 'off'}"] = (time.perf_counter() - began) / n
    _triggers(engine, "jobs", True)
    return cost


def run(args, servers: Servers) -> Report:
    report = Report("metrics", smoke=args.smoke)
    jobs, runs = (args.metric_jobs, args.metric_runs) if args.metric_jobs else (
        SMOKE if args.smoke else FULL)
    runs = args.metric_runs or runs
    scrapes = args.scrapes or (20 if args.smoke else 200)
    open_runs = min(10_000 if not args.smoke else 300, runs)
    dbs = args.dbs or (["postgresql", "sqlite"] if args.smoke else ["postgresql"])
    t = report.table(f"One scrape of GET /metrics ({scrapes} timed, after a first one)",
                     ["store", "jobs", "runs", "open runs", "fill", "collector p50",
                      "collector p95", "collector max", "GET p50", "GET p95", "GET max",
                      f"≤ {ms(TARGET, 0)} (GET p95)"])
    costs: dict[str, dict[str, float]] = {}
    for kind in dbs:
        url = servers.database(kind, "metrics")
        engine = make_engine(url)
        try:
            init_schema(engine)
            took = fill(engine, jobs, runs, open_runs)
            with engine.connect() as conn:
                counted = conn.execute(text("SELECT count(*) FROM runs")).scalar()
            assert counted == runs, (counted, runs)
            log(f"scrape {scrapes} times ({kind})")
            timed = time_scrapes(engine, url, scrapes)
            c, h = spread(timed["collector"]), spread(timed["http"])
            t.add(kind, f"{jobs:,}", f"{runs:,}", f"{open_runs:,}",
                  f"{secs(took['jobs'])} + {secs(took['runs'])} + {secs(took['vacuum'])}",
                  ms(c["p50"]), ms(c["p95"]), ms(c["max"]), ms(h["p50"]), ms(h["p95"]),
                  ms(h["max"]), "yes" if h["p95"] <= TARGET else "**no**")
            log(f"  collector p50 {ms(c['p50'])} p95 {ms(c['p95'])}; GET p50 {ms(h['p50'])} "
                f"p95 {ms(h['p95'])}")
            check = KalaCollector(engine, timedelta(seconds=30))
            families = {f.name: f for f in check.collect()}
            ended = sum(s.value for s in families["kala_runs"].samples)
            waiting = sum(s.value for s in families["kala_runs_open"].samples)
            assert ended + waiting == runs, (ended, waiting, runs)  # the figures are right
            if kind == "postgresql":
                report.extra(f"EXPLAIN ANALYZE of the scrape's reads ({jobs:,} jobs, "
                             f"{runs:,} runs)", explain(engine))
                costs[kind] = write_cost(engine, 200 if args.smoke else WRITES)
        finally:
            engine.dispose()
            servers.drop(url)
    for kind, cost in costs.items():
        w = report.table(f"What the counter triggers add to a write ({kind}, one transaction "
                         "per row)", ["write", "per transaction"])
        for name, seconds in cost.items():
            w.add(name, ms(seconds, 3))
    report.note("Runs are inserted with their triggers off and metric_counts seeded from them "
                "by migration 0002's seed statements (as an upgrade does); jobs with them on.")
    if "sqlite" in dbs:
        report.note("SQLite keeps its triggers on during the fill (no DISABLE TRIGGER).")
    return report
