"""scale: N jobs at `PT1M` with their starts spread evenly over the minute, for M minutes, on
one `kala-celery serve` with PostgreSQL + Redis (issue 16 item 6; 10,000 jobs = about 167 due
every second).

- the jobs go into the job store directly (bench.common.insert_jobs: one INSERT, so the set-up
  takes seconds, not the minute that 10k creates over HTTP would), job i first due at
  T0 + (i mod 60) s, every minute after; their command is `date +%s.%N`, so each run's output
  (runs.output) is the wall-clock time its command ran;
- while it runs, a client creates a job over HTTP every `CREATE_EVERY` s (`POST /job/`, a
  future schedule) and times each request;
- afterwards, from the runs table: per minute of due instants, how many occurrences were due,
  how many ran, how many are missing (no run recorded for that job and instant), and the
  lateness (command start - due) percentiles.
Every loop is bounded: the window (M minutes), then at most `SETTLE` s for the last runs.
"""

from __future__ import annotations

import contextlib
import threading
import time
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import text

from bench.common import (
    OutOfTime,
    Report,
    Servers,
    insert_jobs,
    kala_time,
    log,
    ms,
    pct,
    spread,
    utcnow,
    wait_until,
)
from bench.vs_kala import Side, due_runs, start_ours
from kala_celery.store.db import make_engine

COMMAND = "date +%s.%N"
CREATE_EVERY = 0.2  # seconds between the timed POST /job/ requests
SETTLE = 60.0  # seconds the last minute's runs get to finish after the window


def _creates(side: Side, stop: threading.Event, out: list[float], errors: list[str]) -> None:
    """POST /job/ every CREATE_EVERY s until `stop`; each request's seconds into `out`."""
    future = kala_time(utcnow() + timedelta(days=2))
    with httpx.Client(base_url=side.api, timeout=30) as client:
        i = 0
        while not stop.is_set():
            i += 1
            body = {"name": f"scale-create-{i}", "command": "true",
                    "schedule": f"R/{future}/PT1H"}
            t0 = time.perf_counter()
            try:
                r = client.post("/job/", json=body)
                if r.status_code != 201:
                    errors.append(f"{r.status_code} {r.text[:200]}")
            except httpx.HTTPError as exc:
                errors.append(repr(exc))
            out.append(time.perf_counter() - t0)
            stop.wait(CREATE_EVERY)


def expected(jobs: int, spread_seconds: int, period: int, first: datetime, end: datetime):
    """Every (job number, due instant) in [first, end): job i is due at
    first + (i mod spread_seconds) s + k * period s."""
    for i in range(1, jobs + 1):
        due = first + timedelta(seconds=i % spread_seconds)
        while due < end:
            yield i, due
            due += timedelta(seconds=period)


def run(args, servers: Servers) -> Report:
    report = Report("scale", smoke=args.smoke)
    jobs = args.scale_jobs or (60 if args.smoke else 10_000)
    minutes = args.minutes or (1 if args.smoke else 10)
    period = 10 if args.smoke else 60  # the smoke run's jobs are every PT10S, its "minute" 10 s
    window = minutes * period
    side = start_ours(servers, "postgresql", "scale")
    engine = make_engine(side.db_url)
    try:
        log("warm-up run (the worker is up and connected)")
        due_runs(side, 1, "warm", 1.2, 60)
        first = datetime.fromtimestamp(int(time.time()) + 8, UTC)
        log(f"inserting {jobs:,} jobs every {period} s, spread over {period} s from {first:%X}")
        took = insert_jobs(engine, jobs, first_due=first, spread_seconds=period, prefix="scale-",
                           command=COMMAND, interval=f"PT{period}S")
        end = first + timedelta(seconds=window)
        if time.time() > first.timestamp():
            report.note(f"inserting the jobs took {took:.1f} s, past the first due instant")
        stop, posts, errors = threading.Event(), [], []
        client = threading.Thread(target=_creates, args=(side, stop, posts, errors), daemon=True)
        client.start()
        log(f"running for {window} s (to {end:%X})")
        time.sleep(max(0.0, end.timestamp() - time.time()))
        stop.set()
        client.join(30)
        due = list(expected(jobs, period, period, first, end))
        log(f"waiting up to {SETTLE:.0f} s for the last of {len(due):,} occurrences")
        sql = text("SELECT count(*) FROM runs WHERE state IN ('success', 'failed', 'lost', "
                   "'skipped') AND scheduled_for < :end")
        with engine.connect() as conn:
            def settled() -> bool:
                return (conn.execute(sql, {"end": end}).scalar() or 0) >= len(due)
            try:
                wait_until(settled, SETTLE, "the last runs", 0.5)
            except OutOfTime as exc:  # recorded; the tables show what is missing
                report.note(f"settling: {exc}")
            rows = conn.execute(text(
                "SELECT j.id, r.scheduled_for, r.output, r.state FROM runs r JOIN jobs j "
                "ON j.id = r.job_id WHERE j.id LIKE 'scale-%' AND r.scheduled_for < :end"),
                {"end": end}).all()
        _tables(report, jobs, period, first, due, rows, posts, errors)
    finally:
        engine.dispose()
        side.stop()
    for n in side.notes:
        report.note(n)
    return report


def _as_utc(t: datetime) -> datetime:
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _tables(report: Report, jobs: int, period: int, first: datetime, due: list, rows: list,
            posts: list[float], errors: list[str]) -> None:
    seen: dict[tuple[int, datetime], tuple[float | None, str]] = {}
    for job_id, scheduled_for, output, state in rows:
        started = None
        with contextlib.suppress(ValueError):
            started = float((output or "").strip())
        seen[(int(job_id.removeprefix("scale-")), _as_utc(scheduled_for))] = (started, state)
    unit = "minute" if period == 60 else f"{period} s"
    t = report.table(f"{jobs:,} jobs every {period} s, starts spread over the {unit}: due → "
                     "command start per " + unit,
                     [unit, "due", "ran", "missing", "p50", "p95", "p99", "max"])
    buckets: dict[int, list] = {}
    for key in due:
        buckets.setdefault(int((key[1] - first).total_seconds()) // period, []).append(key)
    late_all: list[float] = []
    missing_all = 0
    for b, keys in sorted(buckets.items()):
        late = [seen[k][0] - k[1].timestamp() for k in keys
                if k in seen and seen[k][0] is not None]
        missing = sum(1 for k in keys if k not in seen)
        missing_all += missing
        late_all += late
        s = spread(late) if late else {}
        t.add(b + 1, f"{len(keys):,}", f"{len(late):,}", missing,
              *[ms(s.get(q)) for q in ("p50", "p95", "p99", "max")])
    extra = len(seen) - len(set(seen) & set(due))
    s = spread(late_all) if late_all else {}
    summary = report.table("Whole run", ["measure", "value"])
    summary.add("occurrences due", f"{len(due):,}")
    summary.add("occurrences missing (no run)", f"{missing_all:,}")
    summary.add("runs not at a due instant of the plan", f"{extra:,}")
    summary.add("due → command start p50 / p99 / max",
                " / ".join(ms(s.get(q)) for q in ("p50", "p99", "max")))
    summary.add(f"POST /job/ while it ran (n={len(posts)}) p50 / p99",
                f"{ms(pct(posts, 50)) if posts else '—'} / {ms(pct(posts, 99)) if posts else '—'}")
    if errors:
        report.note(f"POST /job/ errors: {len(errors)}, first: {errors[:3]}")
