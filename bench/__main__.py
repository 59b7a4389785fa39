"""`python -m bench <suite>|all [--smoke] [options]`: run benchmark suites, print their tables
and RESULTS.md-ready markdown (command, machine, date)."""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback
from pathlib import Path

from bench import SUITES

MODULES = {
    "beat-scale": "bench.beat_scale",
    "lateness": "bench.lateness",
    "api": "bench.api",
    "throughput": "bench.throughput",
    "ceiling": "bench.ceiling",
    "chaos": "bench.chaos",
    "partitions": "bench.partitions",
    "dashboard": "bench.dashboard",
    "metrics": "bench.metrics",
    "import": "bench.importer",
    "vs-kala": "bench.vs_kala",
    "fuzz": "bench.fuzz",
    "wsgi-servers": "bench.wsgi_servers",
    "scale": "bench.scale",
}


def size(text: str) -> int:
    """1000, 1k, 100k, 1M."""
    t = text.strip().lower().replace("_", "").replace(",", "")
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1:], 1)
    return int(float(t[:-1] if mult > 1 else t) * mult)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("suite", choices=[*SUITES, "all"])
    p.add_argument("--smoke", action="store_true", help="tiny N and short runs (CI)")
    p.add_argument("--append", type=Path, help="append the markdown to this file")
    p.add_argument("--profile", action="store_true", help="cProfile the measured part")
    g = p.add_argument_group("beat-scale")
    g.add_argument("--sizes", nargs="+", type=size, help="stored jobs, e.g. 1k 100k 1M")
    g.add_argument("--burst", type=size, help="jobs due at one instant (10k)")
    g.add_argument("--ticks", type=int, help="timed idle ticks per size (100)")
    g.add_argument("--step-seconds", type=float, help="time budget of one step (600)")
    g.add_argument("--schedulers", nargs="+", choices=["kala", "celery", "redbeat"])
    g = p.add_argument_group("lateness / api / throughput")
    g.add_argument("--dbs", nargs="+", choices=["sqlite", "postgresql"], help="job stores")
    g.add_argument("--jobs", type=int, help="lateness: jobs due at one instant (200)")
    g.add_argument("--trials", type=int, help="lateness: single-job trials (30)")
    g.add_argument("--concurrency", type=int,
                   help="worker slots (default: cores; throughput -P threads: 32)")
    g.add_argument("--pool", choices=["prefork", "threads"],
                   help="throughput: the worker's pool (prefork)")
    g.add_argument("--seconds", type=float, help="api: seconds per create phase (10); "
                   "throughput: measured window (60); chaos: length of the fault plan (300)")
    g.add_argument("--list-jobs", type=size,
                   help="api, dashboard: stored jobs for the list/stats (10k); "
                   "import: jobs moved out of Kala (2k)")
    g = p.add_argument_group("dashboard")
    g.add_argument("--dashboard-runs", type=size,
                   help="stored runs for the charts (1M; smoke: 10k)")
    g.add_argument("--runs-days", type=float,
                   help="days the stored runs are spread over (30, KALA_RUN_RETENTION's "
                   "default; 7: four times as many in the Overview's 24 h)")
    g = p.add_argument_group("vs-kala")
    g.add_argument("--stores", nargs="+", choices=["embedded", "postgresql"],
                   help="kala-celery serve's stores beside Kala (embedded)")
    g = p.add_argument_group("scale")
    g.add_argument("--scale-jobs", type=size, help="jobs every minute (10k; smoke: 60)")
    g.add_argument("--minutes", type=int, help="scale, partitions: minutes of the run (10; "
                   "smoke: scale one 10 s period, partitions 20 s)")
    g = p.add_argument_group("chaos")
    g.add_argument("--workers", type=int, help="celery workers (3; smoke: 2)")
    g.add_argument("--beats", type=int, help="celery beats (2)")
    g.add_argument("--faults", nargs="+",
                   choices=["worker", "redis", "beat", "postgres", "api", "postgres-down"],
                   help="kinds of fault in the plan (all but postgres-down: stopped for 10 s)")
    g.add_argument("--keep", action="store_true",
                   help="keep the logs and runs.csv also when every check passed")
    g = p.add_argument_group("partitions")
    g.add_argument("--no-skew", action="store_true",
                   help="every clock right (default: h1's beat 30 s fast, h2's worker 45 s slow)")
    g = p.add_argument_group("metrics")
    g.add_argument("--metric-jobs", type=size, help="stored jobs (1M; smoke: 1k)")
    g.add_argument("--metric-runs", type=size, help="stored runs (10M; smoke: 10k)")
    g.add_argument("--scrapes", type=int, help="timed scrapes per store (200; smoke: 20)")
    g = p.add_argument_group("fuzz")
    g.add_argument("--requests", type=size, help="requests per store (20k; smoke: 300)")
    g.add_argument("--examples", type=int, help="per operation and phase, per run (100)")
    return p


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwind: every suite's `finally` stops what it started


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    from bench.common import Servers

    suites = SUITES if args.suite == "all" else (args.suite,)
    servers = Servers()
    failed = []
    try:
        for suite in suites:
            module = importlib.import_module(MODULES[suite])
            try:
                report = module.run(args, servers)
            except Exception:
                traceback.print_exc()
                failed.append(suite)
                continue
            print()
            print(report.text())
            print()
            md = report.markdown()
            print("---- markdown for bench/RESULTS.md ----")
            print(md)
            if args.append:
                with args.append.open("a") as out:
                    out.write("\n" + md)
            if getattr(report, "failures", None):  # a suite whose checks failed (chaos)
                print(f"{suite}: failed checks: {', '.join(report.failures)}", file=sys.stderr)
                failed.append(suite)
    finally:
        servers.close()
    if failed:
        print(f"failed suites: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
