"""throughput: sustained shell runs per second through one `celery -A kala_celery worker`
(prefork, concurrency = cores) for a fixed window, next to the raw fork/exec rate of the same
command on this box measured in the same run (the physical limit).

- raw limit: `concurrency` fresh Python processes each running `subprocess.run(["true"],
  stdout=PIPE, stderr=STDOUT, stdin=DEVNULL)` back to back for a few seconds (kala-celery's
  runner also pipes the output); also one loop alone;
- ours: K jobs with command `true`; a feeder thread in this process keeps ≥ LOW messages in
  the Redis queue by recording manual starts (runs.start.manual, as POST /job/start/?wait=false)
  and publishing them; after a warm-up, runs that finished `success` inside the window are
  counted from the runs table. CPU seconds of the worker, PostgreSQL/SQLite side and Redis over
  the window show where the box's cores went.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

from sqlalchemy import func, select

from bench.cluster import Cluster, cores, worker_children
from bench.common import (
    REPO,
    Report,
    Servers,
    chunks,
    kala_time,
    log,
    pyspy_available,
    pyspy_record,
    secs,
    summarize_collapsed,
    utcnow,
)
from kala_celery.store.tables import Run

COMMAND = "true"
LOW = 200  # keep at least this many messages queued
TOP_UP = 200  # runs recorded per top-up transaction
JOBS = 50

_RAW = """
import subprocess, sys, time
argv, seconds = sys.argv[1:-1], float(sys.argv[-1])
n, end = 0, time.monotonic() + seconds
while time.monotonic() < end:
    subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                   stderr=subprocess.STDOUT)
    n += 1
print(n)
"""


def raw_rate(loops: int, seconds: float) -> float:
    """fork/exec+wait of COMMAND per second with `loops` processes at once."""
    procs = [
        subprocess.Popen([sys.executable, "-c", _RAW, COMMAND, str(seconds)],
                         stdout=subprocess.PIPE, text=True)
        for _ in range(loops)
    ]
    total = 0
    for proc in procs:
        out, _ = proc.communicate(timeout=seconds + 60)
        total += int(out.strip() or 0)
    return total / seconds


# ---------------------------------------------------------------- CPU accounting


def cpu_split(pid: int) -> tuple[float, float]:
    """CPU seconds of a process: its own, and its children's that it waited for (the job
    processes); (0, 0) when it is gone."""
    import os

    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0, 0.0
    tick = os.sysconf("SC_CLK_TCK")  # utime + stime, cutime + cstime
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


def cpu_seconds(pids: list[int]) -> float:
    """CPU seconds of the processes, with their children's that they waited for."""
    return sum(sum(cpu_split(p)) for p in pids)


def postgres_pids(servers: Servers) -> list[int]:
    pg = servers._pg
    if pg is None:
        return []
    try:
        master = int((pg.data_dir / "postmaster.pid").read_text().splitlines()[0])
    except (OSError, ValueError, IndexError):
        return []
    return [master, *worker_children(master)]


# ---------------------------------------------------------------- the suite


class Feeder(threading.Thread):
    def __init__(self, cluster: Cluster, job_ids: list[str]) -> None:
        super().__init__(name="feeder", daemon=True)
        self.cluster = cluster
        self.job_ids = job_ids
        self.stop_event = threading.Event()
        self.recorded = 0
        self.cpu = 0.0
        self.error: BaseException | None = None

    def run(self) -> None:
        i = 0
        try:
            while not self.stop_event.is_set():
                if self.cluster.queue_length() >= LOW:
                    time.sleep(0.05)
                    continue
                t0 = time.thread_time()
                ids = [self.job_ids[(i + k) % len(self.job_ids)] for k in range(TOP_UP)]
                i += TOP_UP
                self.recorded += self.cluster.start_runs(ids)
                self.cpu += time.thread_time() - t0
        except BaseException as exc:  # reported by the suite
            self.error = exc


def last_finished(cluster: Cluster, since, until):
    """When the last run that finished inside [since, until) finished."""
    with cluster.state.sessions() as session:
        return session.scalar(select(func.max(Run.finished_at))
                              .where(Run.finished_at >= since, Run.finished_at < until))


def count_finished(cluster: Cluster, state: str, since, until) -> int:
    with cluster.state.sessions() as session:
        return int(session.scalar(
            select(func.count()).select_from(Run)
            .where(Run.state == state, Run.finished_at >= since, Run.finished_at < until)
        ) or 0)


def run(args, servers: Servers) -> Report:
    report = Report("throughput", smoke=args.smoke)
    window = args.seconds or (1.5 if args.smoke else 60.0)
    warmup = 1.0 if args.smoke else 5.0
    raw_seconds = 0.5 if args.smoke else 10.0
    pool = args.pool or "prefork"
    concurrency = args.concurrency or (32 if pool == "threads" else cores())
    stores = args.dbs or ["postgresql"]

    loops = cores()
    log(f"raw fork/exec rate of `{COMMAND}`: 1 loop, then {loops} loops")
    raw1 = raw_rate(1, raw_seconds)
    rawc = raw_rate(loops, raw_seconds)
    table = report.table(
        f"Sustained runs of `{COMMAND}` through one worker (-P {pool} -c {concurrency}) for "
        f"{window:.0f} s vs the raw fork/exec rate of the same command",
        ["what", "store", "runs/s", "of the raw limit", "finished in window", "failed",
         "CPU s: worker", "CPU s: database", "CPU s: redis", "still queued at the end"],
    )
    limit = max(raw1, rawc)  # the physical limit: the better of one loop and `cores` loops
    table.add("raw fork/exec, 1 loop", "—", f"{raw1:,.0f}", f"{raw1 / limit:.0%}", "—", "—",
              "—", "—", "—", "—")
    table.add(f"raw fork/exec, {loops} loops", "—", f"{rawc:,.0f}", f"{rawc / limit:.0%}",
              "—", "—", "—", "—", "—", "—")
    targets = report.table("Targets", ["target", "measured", "met"])
    for store in stores:
        cluster = Cluster(servers, store, "throughput")
        feeder = None
        try:
            worker = cluster.start_worker(concurrency, pool)
            future = kala_time(utcnow() + timedelta(days=2))
            job_ids = cluster.create_jobs([
                {"name": f"tp-{i}", "command": COMMAND, "schedule": f"R/{future}/PT1H"}
                for i in range(JOBS)
            ])
            feeder = Feeder(cluster, job_ids)
            log(f"warm-up: feeding the worker for {warmup:.0f} s ({store})")
            feeder.start()
            time.sleep(warmup / 2)
            mark = utcnow()
            time.sleep(warmup / 2)
            feeder.stop_event.set()
            feeder.join(30)
            if feeder.error is not None:
                raise RuntimeError(f"feeder failed: {feeder.error!r}") from feeder.error
            estimate = count_finished(cluster, "success", mark, utcnow()) / (warmup / 2)
            # The window's whole backlog is queued before it starts, so nothing but the worker,
            # the database and Redis run in it.
            backlog = int(max(estimate, 20) * window * 1.5) + LOW
            log(f"warm-up rate ≈ {estimate:,.0f}/s; queueing {backlog:,} runs for the window")
            t0 = time.thread_time()
            ids = [job_ids[k % len(job_ids)] for k in range(backlog)]
            for chunk in chunks(ids, 500):
                cluster.start_runs(chunk)
            prefill_cpu = time.thread_time() - t0
            report.note(f"{store}: queued {backlog:,} runs in {prefill_cpu:.1f} s of CPU "
                        "(recording runs and publishing them, before the window)")
            worker_pids = [worker.pid, *worker_children(worker.pid)]
            db_pids = postgres_pids(servers) if store == "postgresql" else []
            redis_pids = [servers.redis.process.pid] if servers.redis.process else []
            cpu0 = [cpu_seconds(worker_pids), cpu_seconds(db_pids), cpu_seconds(redis_pids)]
            since = utcnow()
            time.sleep(window)
            until = utcnow()
            cpu1 = [cpu_seconds(worker_pids), cpu_seconds(db_pids), cpu_seconds(redis_pids)]
            left = cluster.queue_length()
            busy_until = until
            if left == 0:  # the rate over the time the worker had work, not the whole window
                busy_until = last_finished(cluster, since, until) or until
                dry = secs((busy_until - since).total_seconds())
                report.note(f"{store}: the queue ran dry {dry} into the window: the rate is "
                            "over that time")
            spy = None
            if args.profile and pyspy_available() and left > 0:  # after the window: no overhead
                spy = pyspy_record(worker.pid, 15, cluster.dir / "worker.pyspy.txt",
                                   cluster.dir / "pyspy.log")
            time.sleep(1.0)  # runs finishing at the window's edge get their row written
            done = count_finished(cluster, "success", since, until)
            failed = count_finished(cluster, "failed", since, until)
            rate = done / max((busy_until - since).total_seconds(), 1e-3)
            cpu = [b - a for a, b in zip(cpu0, cpu1, strict=True)]
            table.add("kala-celery worker", store, f"{rate:,.0f}", f"{rate / limit:.1%}",
                      f"{done:,}", failed, *(f"{c:.1f}" for c in cpu), f"{left:,}")
            if store == "sqlite":
                table.rows[-1][7] = "(in the worker)"
            targets.add(f"sustained runs ≥ 25 % of the fork/exec limit ({store}; issue 16)",
                        f"{rate / limit:.1%} ({rate:,.0f} of {limit:,.0f}/s)",
                        "yes" if rate >= 0.25 * limit else "**no**")
            if spy is not None:
                spy.proc.wait(60)
                spy.stop()
                out = cluster.dir / "worker.pyspy.txt"
                if out.exists():
                    report.extra(f"py-spy of the worker and its pool during the window ({store})",
                                 summarize_collapsed(out))
        finally:
            if feeder is not None:
                feeder.stop_event.set()
                feeder.join(30)
            cluster.close()
    report.note(f"window {window:.0f} s after {warmup:.0f} s of warm-up; {JOBS} jobs started "
                "round-robin (manual starts, the API's start path, recorded and published by "
                "this process before the window); worker, database and Redis share the box's "
                "cores; CPU s = user+system seconds inside the window (worker: main + pool "
                "processes + the commands they ran)")
    return report


if __name__ == "__main__":  # the raw rate alone: python -m bench.throughput [loops] [seconds]
    loops = int(sys.argv[1]) if len(sys.argv) > 1 else cores()
    seconds = float(sys.argv[2]) if len(sys.argv) > 2 else 5.0
    print(json.dumps({"loops": loops, "per_second": raw_rate(loops, seconds), "repo": str(REPO)}))
