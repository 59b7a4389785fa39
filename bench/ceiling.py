"""ceiling: kala-celery's runs per second next to bare Celery's, through the same Redis, the same
pool and the same concurrency, in one run (issue 24's yardstick).

For each pool (prefork with one process per core, as `celery worker` defaults; threads x32, the
worker `kala-celery serve` starts), one worker at a time drains a backlog queued before its
window:
- bare Celery, a task that does nothing (`bench/bare_app.py`: Celery's own cost per task);
- bare Celery, a task that forks the same command a kala job runs (`true`, output piped);
- the same with kala-celery's delivery settings (acks late, prefetch 1, no ack emulation);
- the same, writing what at-most-once needs in PostgreSQL around the command: one UPDATE
  taking the message's row from `sent` to `started`, one UPDATE with the outcome (psycopg
  alone, autocommit, prepared; `bare.fork_recorded`): what any scheduler on Celery that runs
  each occurrence at most once and keeps its outcome in SQL pays the database at least;
- kala-celery: manual starts of jobs whose command is `true` (the API's start path, recorded
  and published before the window, the worker stopped meanwhile), on PostgreSQL (or --dbs).
Each rate is messages taken off the queue per second while the queue was not empty (in the
steady state that is what finished). CPU ms per run is split by process over the window: the
worker's main process (Celery's consumer; with the threads pool it also runs the tasks), its
pool processes (prefork: the tasks, less their commands), the commands they waited for, the
database and Redis. With --profile, py-spy
samples the kala-celery worker after its window, while its backlog lasts.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from celery import Celery

from bench.cluster import Cluster, cores, worker_children
from bench.common import (
    Proc,
    Report,
    Servers,
    chunks,
    kala_time,
    log,
    pyspy_available,
    pyspy_record,
    summarize_collapsed,
    utcnow,
    wait_worker_ready,
)
from bench.throughput import COMMAND, cpu_seconds, cpu_split, postgres_pids

JOBS = 50


@dataclass
class Measured:
    rate: float  # runs/s while the queue had work
    taken: int
    cpu_ms: tuple[float, ...]  # per run: worker main, pool, commands, database, redis
    dry: bool  # the backlog ran out inside the window


def queue_length(redis_url: str) -> int:
    import redis

    return int(redis.Redis.from_url(redis_url).llen("celery"))


Pids = Callable[[], tuple[list[int], list[int], list[int]]]  # worker, database, redis


def _groups(pids: Pids) -> list[dict[int, float]]:
    """CPU seconds per process of each group: the worker's main process, its pool processes,
    the commands those waited for (their reaped children), the database, Redis."""
    worker, db, redis_ = pids()
    split = {pid: cpu_split(pid) for pid in worker}  # each /proc read once
    return [{pid: split[pid][0] for pid in worker[:1]},
            {pid: split[pid][0] for pid in worker[1:]},
            {pid: split[pid][1] for pid in worker},
            {pid: cpu_seconds([pid]) for pid in db},
            {pid: cpu_seconds([pid]) for pid in redis_}]


def drain(redis_url: str, window: float, pids: Pids) -> Measured:
    """Watch the queue for `window` seconds (or until it is empty): messages taken per
    second, and the CPU each group of processes spent per message. The processes are listed
    again at the end: a database connection opened inside the window counts from zero."""
    before = _groups(pids)
    t0, first = time.monotonic(), queue_length(redis_url)
    t, last = t0, first
    while t - t0 < window and last > 0:
        time.sleep(0.05)
        t, last = time.monotonic(), queue_length(redis_url)
    after = _groups(pids)
    spent = [sum(cpu - b.get(pid, 0.0) for pid, cpu in a.items())
             for b, a in zip(before, after, strict=True)]
    taken = first - last
    per_run = tuple(1000 * c / max(taken, 1) for c in spent)
    return Measured(taken / max(t - t0, 1e-3), taken, per_run, last == 0)


def bare_worker(servers: Servers, where: Path, pool: str, concurrency: int,
                kala_settings: bool, database: str = "") -> tuple[str, Proc]:
    url = servers.fresh_redis()
    env = {"BARE_BROKER_URL": url, "BARE_KALA_SETTINGS": "1" if kala_settings else "0",
           "BARE_DATABASE_URL": database}
    proc = Proc([sys.executable, "-m", "celery", "-A", "bench.bare_app", "worker", "-l",
                 "warning", "-c", str(concurrency), "-P", pool, "-n", f"bare-{pool}@%h",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"],
                where / f"bare-{pool}-{int(kala_settings)}.log", env)
    wait_worker_ready(url, proc)
    return url, proc


def bare_app_on(url: str, kala_settings: bool) -> Celery:
    """bench/bare_app.py's Celery app, publishing to `url` (its settings are read at import)."""
    import os

    os.environ["BARE_BROKER_URL"] = url
    os.environ["BARE_KALA_SETTINGS"] = "1" if kala_settings else "0"
    from bench import bare_app

    bare_app.app.conf.broker_url = url
    return bare_app.app


def send_bare(url: str, task: str, n: int, kala_settings: bool) -> None:
    """Queue `n` messages of a bare task (one producer, as a Celery user would send them)."""
    app = bare_app_on(url, kala_settings)
    args = (COMMAND,) if task == "bare.fork" else ()
    with app.producer_or_acquire() as producer:
        for _ in range(n):
            app.send_task(task, args, producer=producer)


def recorded_database(servers: Servers, label: str) -> str:
    """A new PostgreSQL database with `bare_app.RECORDED_TABLE`; its libpq URL."""
    import psycopg

    from bench.bare_app import RECORDED_TABLE

    dsn = servers.postgres.dsn(servers.database("postgresql", label).rsplit("/", 1)[1])
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(RECORDED_TABLE)
    return dsn


def send_recorded(url: str, dsn: str, n: int) -> None:
    """`n` rows in `sent`, then a `bare.fork_recorded` message for each (as a scheduler
    records its runs before it publishes them)."""
    import uuid

    import psycopg

    ids = [str(uuid.uuid4()) for _ in range(n)]
    with (psycopg.connect(dsn, autocommit=True) as conn, conn.cursor() as cursor,
          cursor.copy("COPY bare_runs (id, state) FROM STDIN") as copy):
        for run_id in ids:
            copy.write_row((run_id, "sent"))
    app = bare_app_on(url, True)
    with app.producer_or_acquire() as producer:
        for run_id in ids:
            app.send_task("bare.fork_recorded", (run_id, COMMAND), producer=producer)


@contextmanager
def paused(pids: list[int]) -> Iterator[None]:
    """The processes stopped (SIGSTOP) inside the block, continued after it."""
    stopped = []
    try:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def measure(fill: Callable[[int], None], url: str, pids: Pids, window: float, warmup: float,
            smoke: bool, at_least: float = 0.0) -> Measured:
    """Queue a warm-up's worth, estimate the rate, queue 1.5 windows' worth with the worker
    stopped, measure. Stopped: kala-celery's starts are recorded and published at about
    300 a second on this box, slower than its worker takes them, so a backlog queued
    beside a running worker never built up and the worker ran dry inside its window.
    `at_least`: a rate to queue for when the warm-up's estimate is lower."""
    fill(100 if smoke else 1500)
    estimate = drain(url, warmup, pids).rate  # what the warm-up leaves joins the backlog
    with paused(pids()[0]):  # the worker's processes: it takes nothing while it is queued
        fill(int(max(estimate, at_least, 50 if smoke else 500) * window * 1.5))
    return drain(url, window, pids)


def run(args, servers: Servers) -> Report:
    report = Report("ceiling", smoke=args.smoke)
    window = args.seconds or (1.5 if args.smoke else 20.0)
    warmup = 1.0 if args.smoke else 3.0
    pools = [args.pool] if args.pool else ["prefork"] if args.smoke else ["prefork", "threads"]
    stores = args.dbs or ["postgresql"]
    table = report.table(
        f"Runs per second through one worker, same Redis, same pool ({window:.0f} s windows)",
        ["pool", "what", "store", "runs/s", "kala-celery's share",
         "CPU ms/run: worker main", "pool processes", "commands", "database", "redis",
         "in all"],
    )
    targets = report.table("Targets", ["target", "measured", "met"])
    redis_pids = [servers.redis.process.pid] if servers.redis.process else []
    for pool in pools:
        concurrency = args.concurrency or (32 if pool == "threads" else cores())
        rows: dict[str, tuple[str, Measured]] = {}  # label: (store, measured)
        where = servers.dir(f"ceiling-{pool}")
        for label, task, kala_settings in (
            ("bare Celery: a task that does nothing", "bare.noop", False),
            (f"bare Celery: a task that forks `{COMMAND}`", "bare.fork", False),
            (f"bare Celery: forks `{COMMAND}`, kala's delivery settings", "bare.fork", True),
        ):
            log(f"ceiling: {label} (-P {pool} -c {concurrency})")
            url, proc = bare_worker(servers, where, pool, concurrency, kala_settings)
            try:
                rows[label] = "—", measure(
                    lambda n, url=url, task=task, ks=kala_settings: send_bare(url, task, n, ks),
                    url, lambda pid=proc.pid: ([pid, *worker_children(pid)], [], redis_pids),
                    window, warmup, args.smoke)
            finally:
                proc.stop()
        label = f"bare Celery: forks `{COMMAND}` between two UPDATEs"
        log(f"ceiling: {label} (-P {pool} -c {concurrency})")
        dsn = recorded_database(servers, f"ceiling-bare-{pool}")
        url, proc = bare_worker(servers, where, pool, concurrency, True, dsn)
        try:
            recorded = measure(
                lambda n, url=url, dsn=dsn: send_recorded(url, dsn, n), url,
                lambda pid=proc.pid: ([pid, *worker_children(pid)], postgres_pids(servers),
                                      redis_pids),
                window, warmup, args.smoke)
        finally:
            proc.stop()
            servers.drop(dsn)
        rows[label + " (postgresql)"] = "postgresql", recorded
        bare_fork = rows[f"bare Celery: a task that forks `{COMMAND}`"][1]
        for store in stores:
            log(f"ceiling: kala-celery on {store} (-P {pool} -c {concurrency})")
            cluster = Cluster(servers, store, f"ceiling-{pool}")
            try:
                worker = cluster.start_worker(concurrency, pool)
                future = kala_time(utcnow() + timedelta(days=2))
                job_ids = cluster.create_jobs([
                    {"name": f"ceiling-{i}", "command": COMMAND, "schedule": f"R/{future}/PT1H"}
                    for i in range(JOBS)])

                def fill(n: int, cluster: Cluster = cluster, job_ids: list[str] = job_ids
                         ) -> None:
                    for chunk in chunks([job_ids[k % len(job_ids)] for k in range(n)], 500):
                        cluster.start_runs(chunk)

                def pids(pid: int = worker.pid, store: str = store
                         ) -> tuple[list[int], list[int], list[int]]:
                    db = postgres_pids(servers) if store == "postgresql" else []
                    return [pid, *worker_children(pid)], db, redis_pids

                ours = measure(fill, cluster.redis_url, pids, window, warmup, args.smoke,
                               at_least=bare_fork.rate)  # bare Celery's rate bounds ours
                rows[f"kala-celery ({store})"] = store, ours
                spy = None
                if args.profile and pyspy_available() and queue_length(cluster.redis_url):
                    out = cluster.dir / "worker.pyspy.txt"
                    spy = pyspy_record(worker.pid, 10, out, cluster.dir / "pyspy.log")
                    spy.proc.wait(60)
                    spy.stop()
                    if out.exists():
                        report.extra(f"py-spy of the kala-celery worker (-P {pool}, {store})",
                                     summarize_collapsed(out))
            finally:
                cluster.close()
            share = ours.rate / max(bare_fork.rate, 1e-9)
            targets.add(f"kala-celery ≥ 70 % of bare Celery forking `{COMMAND}` "
                        f"(-P {pool} -c {concurrency}, {store})",
                        f"{share:.0%} ({ours.rate:,.0f} of {bare_fork.rate:,.0f}/s)",
                        "yes" if share >= 0.7 else "**no**")
            targets.add(f"(reference) kala-celery's share of bare Celery writing the two "
                        f"UPDATEs at-most-once needs (-P {pool} -c {concurrency}, {store})",
                        f"{ours.rate / max(recorded.rate, 1e-9):.0%} ({ours.rate:,.0f} of "
                        f"{recorded.rate:,.0f}/s)", "—")
        for label, (store, m) in rows.items():
            share = m.rate / max(bare_fork.rate, 1e-9)
            table.add(pool, label + (" (ran dry)" if m.dry else ""), store, f"{m.rate:,.0f}",
                      f"{share:.0%}" if label.startswith("kala") else "—",
                      *(f"{c:.2f}" for c in m.cpu_ms), f"{sum(m.cpu_ms):.2f}")
    report.note("share = kala-celery's rate / bare Celery's rate for the task that forks the "
                "same command, same pool and concurrency; CPU ms/run = CPU seconds spent in the "
                "window by each group of processes / messages taken: the worker's main process "
                "(with the threads pool it runs the tasks too, and its pool column is 0), its "
                "pool processes less the commands, the commands (the children they waited "
                "for), the database, Redis; bare Celery has no database but in the row with "
                "the two UPDATEs")
    return report
