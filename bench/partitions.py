"""partitions: the multi-host harness of tests/test_multihost.py (issue 25) with more jobs and
random faults for `--minutes` (10), then a history check in the manner of Jepsen's.

Machines (tests/multihost.py): network namespaces on a private bridge with a /24 of their own;
a db host with PostgreSQL and Redis, three hosts h1 to h3 each with `celery beat -S kala` and a
`celery worker`, the API on h3; h1's beat runs 30 s fast and h2's worker 45 s slow
(libfaketime; `--no-skew` keeps every clock right). Every job's command appends its run id,
attempt, scheduled time, real time and host to one record file (tests/history.py).

The plan, until `--minutes` have passed: a random fault of a random host — its link down, cut
from PostgreSQL, cut from Redis (nftables in its namespace), or the db host's link down (every
host cut from both) — for 5 s to 3 x KALA_WORKER_TIMEOUT (PT10S here; with --smoke PT5S, and
20 s of faults), then healed; the next fault once every job has started again after it (at
most 60 s) and a few seconds more. Then the jobs are disabled and the cluster left alone
until no run is open.

The check prints: occurrences run twice, commands started more than 1 s before their time,
commands run twice (allowed only when the worker's host was cut from the database for longer
than KALA_WORKER_TIMEOUT; each with why), runs taken from a live worker, late outcomes that
overwrote a newer attempt's, runs left open, jobs that did not fire within 60 s of a fault's
end, and jobs that stopped. A failed check fails the suite (exit status 1); the logs are then
kept in the directory the notes name.
"""

from __future__ import annotations

import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from bench.common import Report, log
from tests import multihost, servers
from tests.history import CUT_POSTGRES, CUT_REDIS, LINK_DOWN, History
from tests.multihost import Cluster, JobSpec, Machines

HOSTS = ("h1", "h2", "h3")
LAYOUT = {host: ("beat", "worker") for host in HOSTS}
SKEWS = {"h1 beat": 30, "h2 worker": -45}
KINDS = (LINK_DOWN, CUT_POSTGRES, CUT_REDIS)
FIRE_AGAIN = 60.0


def full_jobs() -> list[JobSpec]:
    """30 jobs: 24 short ones every 1 to 3 s, 6 long ones (3 to 5 s) every 2 or 3 s, most with a
    retry."""
    short = [JobSpec(f"short-{n}", every=1 + n % 3) for n in range(24)]
    long = [JobSpec(f"long-{n}", every=2 + n % 2, sleep=3 + n % 3, retries=0 if n == 5 else 1)
            for n in range(6)]
    return short + long


SMOKE_JOBS = [
    JobSpec("short-1s", every=1),
    JobSpec("short-2s", every=2),
    JobSpec("long-3s", every=2, sleep=3, retries=1),
    JobSpec("long-once", every=3, sleep=4),
]


@dataclass
class Plan:
    minutes: float
    jobs: list[JobSpec]
    worker_timeout: int  # seconds
    concurrency: int
    skew: bool
    seed: int


class PartitionsReport(Report):
    failures: list[str]


def run(args: Any, servers_: Any) -> PartitionsReport:
    smoke = bool(getattr(args, "smoke", False))
    plan = Plan(minutes=1 / 3 if smoke else (getattr(args, "minutes", None) or 10),
                jobs=SMOKE_JOBS if smoke else full_jobs(),
                worker_timeout=5 if smoke else 10,
                concurrency=args.concurrency or (2 if smoke else 4),
                skew=not getattr(args, "no_skew", False), seed=random.randrange(1 << 30))
    report = PartitionsReport("partitions", smoke)
    report.failures = []
    reason = multihost.unavailable()
    if reason:
        report.note(f"not run: {reason}")
        return report
    directory = servers.make_base_dir("kcmh-bench-")
    machines = Machines(HOSTS, directory)
    try:
        if plan.skew:
            machines.clocks  # noqa: B018 - made first: MultihostUnavailable names what is missing
        history, faults_table, claims = run_plan(machines, plan)
    except multihost.MultihostUnavailable as exc:
        report.note(f"not run: {exc}")
        return report
    finally:
        machines.close()
    fill(report, history, faults_table, plan)
    fill_clocks(report, claims, SKEWS if plan.skew else {})
    if report.failures:
        report.note(f"FAILED: {', '.join(report.failures)} (logs kept in {directory})")
    else:
        shutil.rmtree(directory, ignore_errors=True)
    return report


def run_plan(machines: Machines, plan: Plan
             ) -> tuple[History, list[tuple[str, float]], dict[str, list[float]]]:
    """Start the cluster, make the jobs, run random faults for the plan's minutes; the
    history, per fault how long until every job had started again, and what each process
    said of its clock."""
    rng = random.Random(plan.seed)
    timeout = plan.worker_timeout
    env = {"KALA_WORKER_TIMEOUT": f"PT{timeout}S", "KALA_REDELIVER_AFTER": "PT5S"}
    cluster = Cluster(machines, env)
    recoveries: list[tuple[str, float]] = []
    try:
        log(f"partitions: starting 3 beats, 3 workers (-c {plan.concurrency}) and the API"
            + (f"; clocks {SKEWS}" if plan.skew else ""))
        cluster.start(LAYOUT, skews=SKEWS if plan.skew else None, api="h3",
                      concurrency=plan.concurrency)
        cluster.create(plan.jobs)
        cluster.wait_runs(2, after=time.time(), timeout=90)
        end = time.monotonic() + plan.minutes * 60
        while time.monotonic() < end:
            host = rng.choice(["db", *HOSTS])
            kind = LINK_DOWN if host == "db" else rng.choice(KINDS)
            length = rng.uniform(5, 3 * timeout)
            log(f"partitions: {host} {kind} for {length:.0f} s")
            cluster.fault(kind, host)
            time.sleep(length)  # the fault's length is the point: nothing to wait on
            cluster.heal(host)
            back = time.time()
            try:
                cluster.wait_runs(1, after=back, timeout=FIRE_AGAIN)
                recoveries.append((str(cluster.faults[-1]), time.time() - back))
            except TimeoutError:
                recoveries.append((str(cluster.faults[-1]), float("inf")))
            time.sleep(rng.uniform(3, 10))  # every part up for a while
        log("partitions: disabling the jobs, waiting until no run is open")
        history = cluster.finish(drain=120)
        return history, recoveries, cluster.clock_claims()
    finally:
        cluster.close()


def fill(report: PartitionsReport, history: History, recoveries: list[tuple[str, float]],
         plan: Plan) -> None:
    checks = history.checks()
    table = report.table("partitions: history check",
                         ["check", "result", "count", "e.g. (or a note when ok)"])
    for check in checks:
        table.add(check.name, "ok" if check.ok else "FAIL", len(check.problems),
                  check.problems[0] if check.problems else "; ".join(check.notes[:1]))
    report.failures = [c.name for c in checks if not c.ok]

    twice = report.table("partitions: commands run twice, and why", ["why", "runs"])
    again = history.runs_twice()
    allowed = Counter(note.rsplit(": ", 1)[1] for note in again.notes)
    refused = Counter(problem.rsplit(": ", 1)[1] for problem in again.problems)
    for reason, n in sorted(allowed.items()):
        twice.add(f"allowed: {reason}", n)
    for reason, n in sorted(refused.items()):
        twice.add(f"NOT allowed: {reason}", n)

    faults = report.table("partitions: faults", ["fault", "every job started again after"])
    for fault, seconds in recoveries:
        faults.add(fault, "never" if seconds == float("inf") else f"{seconds:.1f} s")
    states = Counter(r["state"] for r in history.runs.values())
    report.note(f"{len(history.runs)} runs ({dict(states)}), {len(history.executions)} "
                f"executions of {len(plan.jobs)} jobs; KALA_WORKER_TIMEOUT {plan.worker_timeout}"
                f" s; clocks {SKEWS if plan.skew else 'in step'}; seed {plan.seed}; "
                f"{datetime.now(UTC):%H:%M} UTC")
    report.extra("the history check in full", history.report())


def fill_clocks(report: PartitionsReport, claims: dict[str, list[float]],
                skews: dict[str, int]) -> None:
    """What each process logged of its clock against the database's (Decision 27): a skewed
    one must say so, with its offset; any other one saying so reads the database's time
    wrong (a reading that straddled a partition, say)."""
    table = report.table("partitions: what the processes said of their clocks",
                         ["process", "offsets logged (s)", "its clock's real offset (s)"])
    wrong = False
    for who in sorted(set(claims) | set(skews)):
        said = claims.get(who, [])
        real = skews.get(who, 0)
        table.add(who, ", ".join(f"{o:+.1f}" for o in said) or "none", f"{real:+d}")
        wrong = wrong or any(abs(o - real) > 2 for o in said) or (real and not said)
    if wrong:
        report.failures.append("every process knew the database's time")


__all__ = ["run"]
