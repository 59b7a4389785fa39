"""wsgi-servers: the same app (`kala_celery.wsgi:app`, a SQLite job store) under each WSGI server
we could ship, side by side in one run (issue 16, item 3) —

- job creates per second at 1 and 4 keep-alive connections (`bench.api.load`), in rounds that
  alternate the servers, so that a shared box's load falls on all of them alike;
- the server's CPU per create: user + system time of its process tree over the creates it
  answered (moves less with the box's load than throughput does).

Servers: granian's WSGI interface with 2 workers x 16 threads (what `serve` runs on 2 cores)
and with 1 worker, gunicorn gthread (what `serve` ran until issue 24) and gunicorn sync when
gunicorn is installed (the `bench` extra); each is skipped with a note when its command is
missing.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
from collections.abc import Callable

from bench.api import PREFIX, load
from bench.common import (
    REPO,
    Proc,
    Report,
    Servers,
    free_port,
    log,
    port_open,
    ratio,
    wait_until,
)
from bench.vs_kala import tree_cpu

APP = "kala_celery.wsgi:app"

SERVERS: dict[str, Callable[[int], list[str]]] = {
    "granian wsgi, 2 workers x 16 threads (serve)": lambda port: [
        "granian", "--interface", "wsgi", "--workers", "2", "--blocking-threads", "16",
        "--backpressure", "16", "--host", "127.0.0.1", "--port", str(port), "--no-ws",
        "--log-level", "warning", APP,
    ],
    "granian wsgi, 1 worker x 16 threads": lambda port: [
        "granian", "--interface", "wsgi", "--workers", "1", "--blocking-threads", "16",
        "--backpressure", "16", "--host", "127.0.0.1", "--port", str(port), "--no-ws",
        "--log-level", "warning", APP,
    ],
    "gunicorn gthread, 2 workers x 16 threads": lambda port: [
        "gunicorn", "-w", "2", "-k", "gthread", "--threads", "16", "-b", f"127.0.0.1:{port}", APP,
    ],
    "gunicorn sync, 2 workers": lambda port: [
        "gunicorn", "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}", APP,
    ],
}  # fmt: skip


def _start(servers: Servers, name: str, make: Callable[[int], list[str]]) -> tuple[Proc, int]:
    work = servers.dir("wsgi-" + "".join(c if c.isalnum() else "-" for c in name))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALA_")}
    env.update(
        KALA_DATABASE_URL=f"sqlite:///{work}/jobs.db",
        KALA_BROKER_URL=f"sqla+sqlite:///{work}/broker.db",
        KALA_DATA_DIR=str(work),
        PYTHONPATH=str(REPO),
    )
    port = free_port()
    argv = make(port)
    proc = Proc([shutil.which(argv[0]) or argv[0], *argv[1:]], work / "server.log", env,
                inherit=False)
    wait_until(lambda: port_open(port) or not proc.alive(), 90, f"{name} to listen", 0.1)
    if not proc.alive():
        raise RuntimeError(f"{name} exited:\n{proc.output()[-3000:]}")
    return proc, port


def run(args, servers: Servers) -> Report:
    report = Report("wsgi-servers", smoke=args.smoke)
    rounds = 1 if args.smoke else 3
    seconds = args.seconds or (0.5 if args.smoke else 4.0)
    body = json.dumps({"name": "bench {i}", "command": "true", "owner": "bench@example.com",
                       "schedule": "R/2100-01-01T00:00:00Z/PT1H"})
    started: dict[str, tuple[Proc, int]] = {}
    try:
        for name, make in SERVERS.items():
            command = make(0)[0]
            if shutil.which(command) is None:
                report.note(f"skipped {name}: no `{command}` command")
                continue
            log(f"starting {name}")
            started[name] = _start(servers, name, make)
        rates = {name: {1: [], 4: []} for name in started}
        cpu = dict.fromkeys(started, 0.0)
        count = dict.fromkeys(started, 0)
        for r in range(rounds):
            for name, (proc, port) in started.items():
                for conns in (1, 4):
                    before = tree_cpu(proc.pid)
                    out = load(port, conns, "POST", f"{PREFIX}/job/", body=body,
                               seconds=seconds, max_requests=1_000_000, expect=201)
                    cpu[name] += tree_cpu(proc.pid) - before
                    count[name] += out["count"]
                    rates[name][conns].append(out["count"] / out["wall"] if out["wall"] else 0)
                    if out["errors"]:
                        report.note(f"{name}, {conns} conn(s): {out['first_errors']}")
            log(f"round {r + 1} of {rounds} done")
    finally:
        for proc, _port in started.values():
            proc.stop()
    if not started:
        return report
    base = next(iter(started))
    table = report.table(
        "Creates on one app under each server, same run (medians of the rounds)",
        ["server", "creates/s, 1 conn", f"vs {base}", "creates/s, 4 conns", f"vs {base}",
         "server CPU per create"],
    )
    for name in started:
        one, four = (statistics.median(rates[name][c]) for c in (1, 4))
        table.add(
            name,
            f"{one:,.0f}",
            ratio(one, statistics.median(rates[base][1]), higher_is_better=True),
            f"{four:,.0f}",
            ratio(four, statistics.median(rates[base][4]), higher_is_better=True),
            f"{cpu[name] / count[name] * 1000:.2f} ms" if count[name] else "—",
        )
    return report
