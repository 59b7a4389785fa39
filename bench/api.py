"""api: the REST API under granian (`kala-celery api -p PORT`, as shipped: one worker
process per CPU, access log off) on SQLite and on PostgreSQL —

- job creates per second with 1 and 4 client connections (keep-alive, each client its own
  process, requests back to back), jobs with a future schedule (nothing is published);
- `GET /api/v1/job/` with N stored jobs (10k), p50/p95 over repeated requests;
- `GET /api/v1/stats/` with the same N jobs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

from bench.common import (
    REPO,
    Proc,
    Report,
    Servers,
    free_port,
    insert_jobs,
    kala_env,
    kala_time,
    log,
    ms,
    port_open,
    spread,
    utcnow,
    wait_until,
)
from kala_celery.ops.server import default_workers
from kala_celery.store.db import make_engine

PREFIX = "/api/v1"


def load(port: int, conns: int, method: str, path: str, *, body: str | None, seconds: float,
         max_requests: int, expect: int) -> dict[str, Any]:
    """`conns` client processes hitting one route at once; merged results."""
    start_at = time.time() + 0.4 * conns  # all clients start together, after their imports
    specs = [
        {"port": port, "method": method, "path": path, "body": body, "start_at": start_at,
         "seconds": seconds, "max_requests": max_requests, "expect": expect, "tag": f"c{c}"}
        for c in range(conns)
    ]
    procs = [
        subprocess.Popen([sys.executable, "-m", "bench.http_load", json.dumps(s)], cwd=REPO,
                         stdout=subprocess.PIPE, text=True)
        for s in specs
    ]
    results = []
    for proc in procs:
        try:
            out, _ = proc.communicate(timeout=seconds + 180)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        results.append(json.loads(out.strip().splitlines()[-1]) if out.strip() else
                       {"count": 0, "errors": ["client died"], "error_count": 1,
                        "latencies": [], "bytes": 0})
    wall = max((sum(r["latencies"]) for r in results), default=0.0)  # back to back: ≈ elapsed
    lat = [x for r in results for x in r["latencies"]]
    return {
        "count": len(lat),
        "errors": sum(r["error_count"] for r in results),
        "first_errors": [e for r in results for e in r["errors"]][:3],
        "latencies": lat,
        "per_client_busy": [sum(r["latencies"]) for r in results],
        "wall": wall,
        "bytes": sum(r["bytes"] for r in results),
    }


def run(args, servers: Servers) -> Report:
    report = Report("api", smoke=args.smoke)
    seconds = args.seconds or (0.5 if args.smoke else 10.0)
    list_jobs = args.list_jobs or (50 if args.smoke else 10_000)
    list_requests = 3 if args.smoke else 30
    stats_requests = 5 if args.smoke else 300
    stores = args.dbs or (["sqlite"] if args.smoke else ["sqlite", "postgresql"])
    creates = report.table(
        "Job creates (POST /api/v1/job/, future schedule), requests back to back",
        ["store", "connections", "creates", "per second", "p50", "p95", "p99", "errors"],
    )
    reads = report.table(
        f"Reads with {list_jobs:,} stored jobs",
        ["store", "route", "requests", "p50", "p95", "max", "response size"],
    )
    targets = report.table("Targets", ["target", "measured", "met"])
    future = kala_time(utcnow() + timedelta(days=2))
    body = json.dumps({"name": "bench {i}", "command": "true", "owner": "bench@example.com",
                       "schedule": f"R/{future}/PT1H"})
    for store in stores:
        url = servers.database(store, "api")
        work = servers.dir(f"api-{store}")
        port = free_port()
        env = kala_env(url, servers.fresh_redis(), work)
        log(f"starting kala-celery api -p {port} ({store})")
        api = Proc([sys.executable, "-m", "kala_celery", "api", "-p", str(port)],
                   work / "api.log", env)
        try:
            wait_until(lambda p=port, a=api: port_open(p) or not a.alive(), 60, "the API", 0.1)
            if not api.alive():
                raise RuntimeError(f"the API exited:\n{api.output()[-3000:]}")
            rates = {}
            for conns in (1, 4):
                log(f"creates, {conns} connection(s), {seconds:.0f} s ({store})")
                res = load(port, conns, "POST", f"{PREFIX}/job/", body=body, seconds=seconds,
                           max_requests=200_000, expect=201)
                s = spread(res["latencies"])
                rate = res["count"] / res["wall"] if res["wall"] else 0.0
                rates[conns] = rate
                creates.add(store, conns, f"{res['count']:,}", f"{rate:,.0f}", ms(s["p50"]),
                            ms(s["p95"]), ms(s["p99"]), res["errors"])
                if res["errors"]:
                    report.note(f"{store} creates x{conns}: {res['first_errors']}")
            if store == "sqlite":
                best = max(rates.values())
                targets.add("creates ≥ 1,300/s on SQLite (durable: WAL, synchronous=NORMAL)",
                            f"{best:,.0f}/s", _yes(best >= 1300))

            # -- reads over list_jobs stored jobs
            engine = make_engine(url)
            try:
                from sqlalchemy import text

                with engine.begin() as conn:
                    for table in ("job_links", "runs", "jobs"):
                        conn.execute(text(f"DELETE FROM {table}"))
                took = insert_jobs(engine, list_jobs, first_due=utcnow() + timedelta(days=1),
                                   spread_seconds=86_400)
                log(f"inserted {list_jobs:,} jobs in {took:.1f} s ({store})")
            finally:
                engine.dispose()
            for route, path, count_ in (("GET /api/v1/job/", f"{PREFIX}/job/", list_requests),
                                        ("GET /api/v1/stats/", f"{PREFIX}/stats/",
                                         stats_requests)):
                log(f"{route} x {count_} ({store})")
                res = load(port, 1, "GET", path, body=None, seconds=120 if not args.smoke else 20,
                           max_requests=count_, expect=200)
                s = spread(res["latencies"])
                size = res["bytes"] / res["count"] if res["count"] else 0
                reads.add(store, route, res["count"], ms(s["p50"], 1), ms(s["p95"], 1),
                          ms(s["max"], 1), f"{size / 1024:,.0f} KiB")
                if res["errors"]:
                    report.note(f"{store} {route}: {res['first_errors']}")
                if path.endswith("/job/"):
                    targets.add(f"list of {list_jobs:,} jobs p50 ≤ 200 ms ({store})",
                                ms(s["p50"], 1), _yes(s["p50"] <= 0.200))
            if args.profile and not args.smoke:
                _profile(report, api, port, store, work, "GET", "/job/", None, 200)
                _profile(report, api, port, store, work, "POST", "/job/", body, 201)
        finally:
            api.stop()
            servers.drop(url)
    report.note(f"server: `kala-celery api -p PORT` = granian (WSGI), {default_workers()} "
                "worker(s) (one per CPU), 16 threads each, access log off; clients: one process "
                "per connection (http.client), on the "
                "same 2-core box as the server and the database")
    return report


def _profile(report: Report, api: Proc, port: int, store: str, work, method: str, path: str,
             body: str | None, expect: int) -> None:
    """py-spy the API worker for 10 s of one connection's requests (where the time goes)."""
    from bench.cluster import worker_children
    from bench.common import pyspy_available, pyspy_record, summarize_collapsed

    if not pyspy_available():
        report.note("py-spy not installed: no profiles")
        return
    workers = worker_children(api.pid) or [api.pid]
    out = work / f"{method.lower()}.pyspy.txt"
    spy = pyspy_record(workers[0], 12, out, work / "pyspy.log")
    time.sleep(1.0)
    load(port, 1, method, f"{PREFIX}{path}", body=body, seconds=10, max_requests=100_000,
         expect=expect)
    spy.proc.wait(30)
    spy.stop()
    if out.exists():
        report.extra(f"py-spy of the API worker during {method} {PREFIX}{path} ({store})",
                     summarize_collapsed(out))


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"
