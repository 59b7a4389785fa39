"""One beat scheduler measured in a fresh process: `python -m bench.probe '<json>'`.

The parent (bench.beat_scale) prepares the stored jobs/entries; this process builds one
scheduler in-process, times its `tick()` and reports VmRSS, so sizes and schedulers never share
a heap. The last line of stdout is a JSON object,
printed as soon as the measurement is done.

Spec keys: kind (kala | celery | redbeat), mode (idle | burst), n, ticks, seconds (time budget
of the tick loop), db (kala), redis, dir, profile (bool), burst_due (epoch seconds; redbeat and
celery: the instant every entry becomes due).
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

NOOP_TASK = "bench.noop"
_T0 = time.perf_counter()


def progress(message: str) -> None:
    """A line on stderr; the parent quotes the last one when the probe runs out of time."""
    rss = status_kib("VmRSS") / 1024
    print(f"probe: {message} (after {time.perf_counter() - _T0:.1f} s, RSS {rss:.0f} MiB)",
          file=sys.stderr, flush=True)


def status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def profile_text(prof: cProfile.Profile, limit: int = 22) -> str:
    out = io.StringIO()
    stats = pstats.Stats(prof, stream=out)
    stats.sort_stats("cumulative").print_stats(limit)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    # keep the header line with totals and the table; shorten long paths
    return "\n".join(ln.replace(str(Path(sys.prefix)), "<py>") for ln in lines)


def timed_ticks(tick, count: int, seconds: float) -> list[float]:
    times: list[float] = []
    deadline = time.monotonic() + seconds
    while len(times) < count and time.monotonic() < deadline:
        t0 = time.perf_counter()
        tick()
        times.append(time.perf_counter() - t0)
    return times


# ---------------------------------------------------------------- kala


def kala_scheduler(spec: dict[str, Any]):
    from kala_celery.beat import KalaScheduler
    from kala_celery.celery_app import make_celery
    from kala_celery.config import Settings

    settings = Settings(
        database_url=spec["db"], broker_url=spec["redis"], data_dir=Path(spec["dir"])
    )
    sched = KalaScheduler(app=make_celery(settings), lazy=True)
    sched.setup_schedule()
    # Warm the connection pool, as a running beat has it. This reaches into the scheduler's
    # private store (best effort: skipped when its internals change); the idle figures do not
    # depend on it (an untimed first tick comes first), only the burst's first query does.
    connect = getattr(sched, "_connect", None)
    if callable(connect):
        connect()
    store = getattr(sched, "_store", None)
    if store is not None:
        from sqlalchemy import text

        with store.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    return sched


def celery_scheduler(spec: dict[str, Any]):
    from celery import Celery
    from celery.beat import PersistentScheduler

    app = Celery("bench-celery-beat", broker=spec["redis"])
    app.conf.update(enable_utc=True, timezone="UTC", result_expires=None)
    t0 = time.perf_counter()
    app.conf.beat_schedule = {
        f"job-{i}": {"task": NOOP_TASK, "schedule": timedelta(hours=1), "args": (i,)}
        for i in range(spec["n"])
    }
    progress(f"beat_schedule has {spec['n']:,} entries")
    sched = PersistentScheduler(
        app=app, lazy=True, schedule_filename=str(Path(spec["dir"]) / "celerybeat-schedule")
    )
    sched.setup_schedule()  # builds the entries and writes the shelve file
    progress("PersistentScheduler.setup_schedule() done")
    setup = time.perf_counter() - t0
    if spec["mode"] == "burst":
        due = datetime.fromtimestamp(spec["burst_due"], UTC) - timedelta(hours=1)
        for entry in sched.schedule.values():
            entry.last_run_at = due
    return sched, setup


def redbeat_scheduler(spec: dict[str, Any]):
    from celery import Celery
    from redbeat import RedBeatScheduler

    app = Celery("bench-redbeat", broker=spec["redis"])
    app.conf.update(
        enable_utc=True, timezone="UTC", result_expires=None,
        redbeat_redis_url=spec["redis"], redbeat_lock_key=None,
    )
    sched = RedBeatScheduler(app=app, lazy=True)
    sched.lock_key = None  # one beat, no lock round trips (the lock is not what we measure)
    sched.setup_schedule()
    return sched


# ---------------------------------------------------------------- main


def main(spec: dict[str, Any]) -> dict[str, Any]:
    kind, mode = spec["kind"], spec["mode"]
    result: dict[str, Any] = {"kind": kind, "mode": mode, "n": spec["n"]}
    t0 = time.perf_counter()
    if kind == "kala":
        sched = kala_scheduler(spec)
        result["setup"] = time.perf_counter() - t0
    elif kind == "celery":
        sched, result["setup"] = celery_scheduler(spec)
    elif kind == "redbeat":
        sched = redbeat_scheduler(spec)
        result["setup"] = time.perf_counter() - t0
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    prof = cProfile.Profile() if spec.get("profile") else None

    if mode == "idle":
        t1 = time.perf_counter()
        sched.tick()  # the first tick (celery: builds its heap; kala: first sweep)
        result["first_tick"] = time.perf_counter() - t1
        progress(f"first tick took {result['first_tick']:.3f} s")
        if prof:
            prof.enable()
        result["ticks"] = timed_ticks(sched.tick, spec["ticks"], spec["seconds"])
        progress(f"{len(result['ticks'])} timed ticks done")
    else:  # burst: tick until everything due is published
        deadline = time.monotonic() + spec["seconds"]
        ticks = 0
        if prof:
            prof.enable()
        t1 = time.perf_counter()
        if kind == "celery":  # one entry per tick; tick returns 0 while more are due
            while time.monotonic() < deadline:
                ticks += 1
                if sched.tick() > 0:
                    break
        else:  # kala and RedBeat publish everything due in one tick
            sched.tick()
            ticks = 1
        result["burst"] = time.perf_counter() - t1
        result["burst_ticks"] = ticks
        result["finished"] = time.monotonic() < deadline
    if prof:
        prof.disable()
        result["profile"] = profile_text(prof)
    result["rss_kib"] = status_kib("VmRSS")
    result["hwm_kib"] = status_kib("VmHWM")
    print(json.dumps(result), flush=True)  # before close(): celery's close re-writes the shelve
    if kind != "celery":
        sched.close()
    return result


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
