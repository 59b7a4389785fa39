"""vs-kala: the real Kala and `kala-celery serve` side by side in one run, over HTTP only.

Each side is a real server on 127.0.0.1: Kala (boltdb, its durable default; started as
tests/kala_reference.py starts it, found at KALA_REFERENCE_BIN or ../shared/reference/kala)
and `kala-celery serve` as shipped — the embedded default (SQLite job store, kombu's
SQLAlchemy broker on SQLite) and, with `--stores embedded postgresql`, PostgreSQL + Redis.
The suite skips cleanly (a note, exit 0) when the Kala binary is absent.

Workloads, the same requests to every side:
- idle CPU: the server's whole process tree (API, beat, worker, pool), CPU seconds over a
  window with no job due, as a share of one core;
- burst: N jobs (200) due at one whole second; each job's command is
  `sh -c 'date +%s.%N > DIR/NAME'`, so its file holds the wall-clock time the command ran
  (both run commands without a shell, split into words); "last start" = the latest of them
  minus the due instant; "box CPU per run" = the whole machine's busy CPU from the creates'
  end to the last command's start, over N (the commands, the server, its database and
  broker: nothing else runs), which says how much of the burst is CPU the side spends;
- the burst's reference: the same N commands through bare Celery (bench/bare_app.py) with
  `serve`'s pool and kala-celery's delivery settings on Redis, published at the due instant
  by this process (what any scheduler on Celery starts from);
- single: one job due at a whole second, K times (10); due → command start;
- creates: `POST /api/v1/job/` back to back on 1 and 4 keep-alive connections (one client
  process each, bench/http_load.py), future schedules;
- list: `GET /api/v1/job/` with exactly M stored jobs (10k, created over HTTP right after
  the warm-up, before any other workload; `DELETE /job/all/` after it), p50 of R requests.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from bench.api import load
from bench.cluster import worker_children
from bench.common import (
    OutOfTime,
    Proc,
    Report,
    Servers,
    free_port,
    kala_env,
    kala_time,
    log,
    ms,
    port_open,
    ratio,
    spread,
    utcnow,
    wait_until,
)

PREFIX = "/api/v1"
TICK = os.sysconf("SC_CLK_TCK")


@dataclass
class Side:
    """One server under test: its origin, the pid at the root of its process tree, and how
    to stop it."""

    name: str
    port: int
    root_pid: int
    stop: Callable[[], None]
    work: Path
    notes: list[str] = field(default_factory=list)
    db_url: str = ""  # ours: the job store the side's `serve` uses
    burst_cpu: float | None = None  # box CPU seconds per run of the last due_runs

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}{PREFIX}"


def _tree(pid: int) -> list[int]:
    """pid and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(worker_children(p))
    return out


def tree_cpu(pid: int) -> float:
    """CPU seconds (user + system, with reaped children) of a process tree."""
    total = 0
    for p in _tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
    return total / TICK


def start_kala_side(servers: Servers) -> Side | None:
    from tests.kala_reference import binary, start_kala

    if binary() is None:
        return None
    kala = start_kala()
    return Side("Kala", int(kala.url.rsplit(":", 1)[1]), kala.proc.pid, kala.stop,
                servers.dir("vs-kala-kala"))


def start_ours(servers: Servers, store: str, label: str = "vs-kala") -> Side:
    """`kala-celery serve` on the embedded default or on PostgreSQL + Redis."""
    work = servers.dir(f"{label}-{store}")
    port = free_port()
    args = [sys.executable, "-m", "kala_celery", "serve", "-p", str(port),
            "--data-dir", str(work / "data")]
    env = {k: v for k, v in os.environ.items() if not k.startswith("KALA_")}
    if store == "postgresql":
        url = servers.database("postgresql", label.replace("-", ""))
        env.update(kala_env(url, servers.fresh_redis(), work / "data"))
        name = "ours, PostgreSQL + Redis"
    else:
        env["PYTHONPATH"] = kala_env("", "", work)["PYTHONPATH"]
        url = f"sqlite:///{work / 'data' / 'kala.db'}"
        name = "ours, embedded"
    log(f"starting {name} on port {port}")
    proc = Proc(args, work / "serve.log", env, inherit=False)
    wait_until(lambda: port_open(port) or not proc.alive(), 90, f"{name} to listen", 0.1)
    if not proc.alive():
        raise RuntimeError(f"{name} exited:\n{proc.output()[-3000:]}")
    return Side(name, port, proc.pid, proc.stop, work, db_url=url)



# ---------------------------------------------------------------- workloads


def _due_in(seconds: float) -> datetime:
    return datetime.fromtimestamp(math.ceil(time.time() + seconds), UTC)


def _stamp_command(path: Path) -> str:
    return f"sh -c 'date +%s.%N > {path}'"


def _create(client: httpx.Client, body: dict) -> str:
    r = client.post("/job/", json=body)
    if r.status_code != 201:
        raise RuntimeError(f"create refused: {r.status_code} {r.text[:300]}")
    return r.json()["id"]


def _stamps(paths: list[Path]) -> list[float]:
    out = []
    for p in paths:
        with contextlib.suppress(OSError, ValueError):
            out.append(float(p.read_text().strip()))
    return out


def box_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (/proc/stat, every core)."""
    fields = [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / TICK


def due_runs(side: Side, n: int, label: str, lead: float, timeout: float) -> list[float]:
    """n jobs due at one whole second `lead` s ahead; each one's due → command start (s).
    Sets side.burst_cpu: the box's busy CPU per run from the creates' end to the last start."""
    out_dir = side.work / f"{label}-{time.monotonic_ns()}"
    out_dir.mkdir()
    paths = [out_dir / f"j{i}" for i in range(n)]
    with httpx.Client(base_url=side.api, timeout=30) as client:
        due = _due_in(lead)
        for i, p in enumerate(paths):
            _create(client, {"name": f"{label}-{i}", "command": _stamp_command(p),
                             "schedule": f"R0/{kala_time(due)}/"})
        if time.time() >= due.timestamp():
            side.notes.append(f"{label}: creating {n} jobs took past the due instant")
    busy = box_busy()
    try:
        wait_until(lambda: all(p.exists() and p.stat().st_size for p in paths), timeout,
                   f"{n} commands on {side.name}", 0.02)
    except OutOfTime as exc:  # recorded; the rest of the run goes on
        side.notes.append(f"{label}: {exc}")
    side.burst_cpu = (box_busy() - busy) / n
    return [t - due.timestamp() for t in _stamps(paths)]


def bare_celery_burst(servers: Servers, n: int, timeout: float) -> tuple[list[float], float]:
    """The burst's reference on Celery itself: a bare Celery worker (bench/bare_app.py) with
    `serve`'s pool (`-P threads -c 32`) and kala-celery's delivery settings on a Redis of its
    own; at the due instant this process publishes n tasks that run the burst's command, as
    a beat with nothing to read would. Returns each due → command start (s) and the box's
    busy CPU per run, measured as `due_runs` does."""
    import shlex

    from bench.ceiling import bare_app_on, bare_worker

    work = servers.dir(f"vs-kala-bare-{time.monotonic_ns()}")
    url, worker = bare_worker(servers, work, "threads", 32, kala_settings=True)
    try:
        app = bare_app_on(url, kala_settings=True)
        paths = [work / f"j{i}" for i in range(n + 1)]
        with app.producer_or_acquire() as producer:
            def send(path: Path) -> None:
                app.send_task("bare.argv", (shlex.split(_stamp_command(path)),),
                              producer=producer)

            send(paths[-1])  # a warm-up, as each side has
            wait_until(lambda: paths[-1].exists(), 30, "the bare warm-up", 0.02)
            paths = paths[:-1]
            due = _due_in(2.0)
            busy = box_busy()
            time.sleep(max(0.0, due.timestamp() - time.time()))
            for path in paths:
                send(path)
        with contextlib.suppress(OutOfTime):  # the table says how many ran
            wait_until(lambda: all(p.exists() and p.stat().st_size for p in paths), timeout,
                       f"{n} commands on bare Celery", 0.02)
        cpu = (box_busy() - busy) / n
        return [t - due.timestamp() for t in _stamps(paths)], cpu
    finally:
        worker.stop()


def idle_cpu(side: Side, seconds: float) -> float:
    """Share of one core the side's process tree used over `seconds` with nothing due."""
    c0, t0 = tree_cpu(side.root_pid), time.monotonic()
    time.sleep(seconds)
    return (tree_cpu(side.root_pid) - c0) / (time.monotonic() - t0)


def empty(side: Side) -> None:
    with httpx.Client(base_url=side.api, timeout=120) as client:
        emptied = client.delete("/job/all/")
    if emptied.status_code != 204:
        raise RuntimeError(f"{side.name}: DELETE /job/all/ answered {emptied.status_code}")


def fill_jobs(side: Side, total: int) -> None:
    """Top the side's store up to `total` jobs (future schedule), created over HTTP. The run
    fills before the creates phase, which leaves as many jobs as each side manages to
    create; list_latency checks that each side lists `total`."""
    with httpx.Client(base_url=side.api, timeout=120) as client:
        have = len(client.get("/job/").json()["jobs"] or {})
    missing = total - have
    body = json.dumps({"name": "fill {i}", "command": "true",
                       "schedule": f"R/{kala_time(utcnow() + timedelta(days=2))}/PT1H"})
    # max_requests is per connection: 4 connections for the multiple of 4, 1 for the rest
    for connections, creates in ((4, missing // 4 * 4), (1, missing % 4)):
        if creates > 0:
            load(side.port, connections, "POST", f"{PREFIX}/job/", body=body, seconds=600,
                 max_requests=creates // connections, expect=201)


def list_latency(side: Side, requests: int, jobs: int
                 ) -> tuple[list[float], int, list[float] | None]:
    """Times of `requests` GET /job/ and the size of the answer, which must list `jobs`; then
    times of as many conditional ones with the answer's ETag, each of which must be a 304
    (None: the side sends no ETag, as Kala)."""
    times, size = [], 0
    with httpx.Client(base_url=side.api, timeout=120) as client:
        for _ in range(requests):
            t0 = time.perf_counter()
            r = client.get("/job/")
            times.append(time.perf_counter() - t0)
            size = len(r.content)
        listed = len(r.json()["jobs"] or {})
        if listed != jobs:
            raise RuntimeError(f"{side.name}: GET /job/ listed {listed} jobs, not {jobs}")
        tag = r.headers.get("ETag")
        if tag is None:
            return times, size, None
        conditional = []
        for _ in range(requests):
            t0 = time.perf_counter()
            r = client.get("/job/", headers={"If-None-Match": tag})
            conditional.append(time.perf_counter() - t0)
            if r.status_code != 304:
                raise RuntimeError(f"{side.name}: a conditional GET /job/ got {r.status_code}")
    return times, size, conditional


# ---------------------------------------------------------------- the suite


def run(args, servers: Servers) -> Report:
    report = Report("vs-kala", smoke=args.smoke)
    burst = args.jobs or (10 if args.smoke else 200)
    trials = args.trials or (2 if args.smoke else 10)
    seconds = args.seconds or (0.5 if args.smoke else 10.0)
    list_jobs = args.list_jobs or (100 if args.smoke else 10_000)
    list_requests = 3 if args.smoke else 20
    idle_seconds = 2.0 if args.smoke else 20.0
    stores = args.stores or ["embedded"]

    kala = start_kala_side(servers)
    if kala is None:
        report.note("skipped: no Kala binary (set KALA_REFERENCE_BIN, or keep it at "
                    "../shared/reference/kala beside the repository)")
        return report
    sides = [kala]
    try:
        log(f"{burst} due at once on bare Celery (the burst's reference)")
        bare = bare_celery_burst(servers, burst, 60 + burst * 0.5)
        for store in stores:
            sides.append(start_ours(servers, store))
        results: dict[str, dict[str, object]] = {s.name: {} for s in sides}
        for side in sides:
            res = results[side.name]
            log(f"warm-up run on {side.name}")
            due_runs(side, 1, "warm", 1.2, 60)
            # The list first, on a store that has seen no deletes: Kala's list slows down
            # after DELETE /job/all/ and a refill (bench/RESULTS.md, fourth pass).
            log(f"filling to {list_jobs:,} jobs on {side.name}")
            fill_jobs(side, list_jobs)
            res["list"], res["list_size"], res["list_304"] = list_latency(
                side, list_requests, list_jobs)
            empty(side)
            log(f"idle CPU over {idle_seconds:.0f} s on {side.name}")
            res["idle"] = idle_cpu(side, idle_seconds)
            log(f"{burst} due at once on {side.name}")
            res["burst"] = due_runs(side, burst, "burst", 3.0, 60 + burst * 0.5)
            res["burst_cpu"] = side.burst_cpu
            log(f"{trials} single-job trials on {side.name}")
            single: list[float] = []
            for k in range(trials):
                single += due_runs(side, 1, f"single{k}", 1.2, 30)
            res["single"] = single
            for conns in (1, 4):
                log(f"creates, {conns} connection(s), {seconds:.0f} s on {side.name}")
                body = json.dumps({
                    "name": "bench {i}", "command": "true", "owner": "bench@example.com",
                    "schedule": f"R/{kala_time(utcnow() + timedelta(days=2))}/PT1H"})
                out = load(side.port, conns, "POST", f"{PREFIX}/job/", body=body,
                           seconds=seconds, max_requests=200_000, expect=201)
                res[f"creates{conns}"] = out["count"] / out["wall"] if out["wall"] else 0.0
                if out["errors"]:
                    side.notes.append(f"creates x{conns}: {out['first_errors']}")
        _tables(report, sides, results, burst, list_jobs)
        _bare_table(report, results[kala.name], bare, burst)
    finally:
        for side in sides:
            try:
                side.stop()
            except Exception as exc:  # a side that will not stop must not hide the rest
                report.note(f"stopping {side.name}: {exc}")
    for side in sides:
        for n in side.notes:
            report.note(f"{side.name}: {n}")
    return report


def _bare_table(report: Report, kala: dict, bare: tuple[list[float], float], burst: int) -> None:
    """The burst on Celery itself beside Kala's: what any scheduler publishing to Celery at the
    due instant starts with, on this box."""
    starts, cpu = bare
    table = report.table(
        f"{burst} due at once on Celery itself, same run: bare Celery (Redis, `-P threads -c 32`,"
        " kala-celery's delivery settings), the same command, published at the due instant",
        ["quantity", "Kala", "bare Celery", "bare Celery vs Kala"])
    last = max(starts) if len(starts) == burst else None
    kala_last = max(kala["burst"]) if len(kala["burst"]) == burst else None
    table.add("last command start", ms(kala_last, 1), ms(last, 1),
              ratio(last, kala_last, higher_is_better=False))
    table.add("p50", ms(spread(kala["burst"])["p50"], 1), ms(spread(starts)["p50"], 1),
              ratio(spread(starts)["p50"], spread(kala["burst"])["p50"], higher_is_better=False))
    table.add("box CPU per run (to the last start)", ms(kala["burst_cpu"], 2), ms(cpu, 2),
              ratio(cpu, kala["burst_cpu"], higher_is_better=False))
    if len(starts) != burst:
        report.note(f"bare Celery: only {len(starts)} of {burst} burst commands ran")


def _tables(report: Report, sides: list[Side], results: dict, burst: int, list_jobs: int) -> None:
    kala, ours = sides[0], sides[1:]
    k = results[kala.name]
    table = report.table("Side by side, same run (due = a whole second; one clock)",
                         ["workload", *[s.name for s in sides],
                          *[f"{s.name} vs Kala" for s in ours]])

    def row(label: str, value: Callable[[dict], float | None], fmt: Callable, higher: bool):
        cells = [fmt(value(results[s.name])) for s in sides]
        ratios = [ratio(value(results[s.name]), value(k), higher_is_better=higher) for s in ours]
        table.add(label, *cells, *ratios)

    def last(r: dict) -> float | None:
        return max(r["burst"]) if len(r["burst"]) == burst else None

    def pct_core(v: float | None) -> str:
        return "—" if v is None else f"{v * 100:.2f} %"

    row("idle CPU, share of one core", lambda r: r["idle"], pct_core, False)
    row(f"{burst} due at once: last command start", last, lambda v: ms(v, 1), False)
    row(f"{burst} due at once: p50", lambda r: spread(r["burst"])["p50"], lambda v: ms(v, 1),
        False)
    row(f"{burst} due at once: box CPU per run (to the last start)", lambda r: r["burst_cpu"],
        lambda v: "—" if v is None else ms(v, 2), False)
    row("single job: due → command start p50", lambda r: spread(r["single"])["p50"],
        lambda v: ms(v, 1), False)
    row("creates/s, 1 connection", lambda r: r["creates1"], lambda v: f"{v:,.0f}", True)
    row("creates/s, 4 connections", lambda r: r["creates4"], lambda v: f"{v:,.0f}", True)
    row(f"GET /job/ with {list_jobs:,} jobs, p50", lambda r: spread(r["list"])["p50"],
        lambda v: ms(v, 1), False)
    table.add(f"GET /job/ with {list_jobs:,} jobs, unchanged, If-None-Match → 304, p50",
              *[ms(spread(results[s.name]["list_304"])["p50"], 1)
                if results[s.name]["list_304"] else "no ETag" for s in sides],
              *["—" for _ in ours])
    for s in sides:
        r = results[s.name]
        if len(r["burst"]) != burst:
            report.note(f"{s.name}: only {len(r['burst'])} of {burst} burst commands ran")
        report.note(f"{s.name}: GET /job/ response {r['list_size'] / 1024:,.0f} KiB")
