"""beat-scale: idle tick cost and beat RSS as the number of stored jobs grows, and the time to
claim and publish a burst of jobs due at one instant, for kala-celery's KalaScheduler
(PostgreSQL; SQLite up to 100k) next to celery's default PersistentScheduler (entries in
`beat_schedule`) and celery-redbeat (entries in Redis), all publishing to the same Redis.

Every measurement runs in a fresh `python -m bench.probe` process (see bench/probe.py) with
its own time budget; a step that runs out is recorded as "did not finish in X s".
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any

from sqlalchemy import text

from bench.common import (
    REPO,
    Budget,
    OutOfTime,
    Report,
    Servers,
    insert_jobs,
    log,
    mib,
    ms,
    ratio,
    secs,
    spread,
    utcnow,
)
from kala_celery.store.db import init_schema, make_engine

FULL_SIZES = (1_000, 100_000, 1_000_000)
SMOKE_SIZES = (50,)
SQLITE_MAX = 100_000
SCHEDULERS = ("kala", "celery", "redbeat")
LABEL = {
    "kala": "kala-celery",
    "celery": "celery PersistentScheduler",
    "redbeat": "celery-redbeat",
}


NOOP = "bench.noop"
SAVE_ONE_BY_ONE = 20_000
PIPELINE = 2_000


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


class ProbeFailed(RuntimeError):
    pass


def run_probe(spec: dict[str, Any], budget: float) -> dict[str, Any]:
    """Run bench.probe in a fresh interpreter; OutOfTime if it does not end in `budget` s."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", "bench.probe", json.dumps(spec)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=budget,
        )
    except subprocess.TimeoutExpired as exc:
        out = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else (
            exc.stdout or "")
        if out.strip().startswith("{"):  # measured, then stuck in clean-up
            return json.loads(out.strip().splitlines()[-1])
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (
            exc.stderr or "")
        last = [ln for ln in err.splitlines() if ln.startswith("probe: ")]
        where = f" (last: {last[-1].removeprefix('probe: ')})" if last else " (still building)"
        raise OutOfTime(f"did not finish in {budget:.0f} s{where}") from None
    if done.returncode != 0:
        raise ProbeFailed(f"probe {spec['kind']}/{spec['mode']} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- filling the stores


def fill_redbeat(redis_url: str, n: int, budget: Budget, *, due_at=None) -> float:
    """N RedBeat entries (every hour; due in an hour, or all at `due_at`).

    Up to SAVE_ONE_BY_ONE entries are stored with RedBeatSchedulerEntry(...).save(), as a
    RedBeat user would; beyond that (1M saves one round trip each take longer than a step's
    budget) the same three writes save() makes per entry (HSET definition, HSETNX meta, ZADD
    score), with the same encoder, go through pipelines of PIPELINE entries."""
    import json

    from celery import Celery
    from celery.schedules import schedule
    from redbeat import RedBeatSchedulerEntry
    from redbeat.decoder import RedBeatJSONEncoder

    app = Celery("bench-redbeat-fill", broker=redis_url)
    app.conf.update(redbeat_redis_url=redis_url, redbeat_lock_key=None, enable_utc=True)
    every = schedule(timedelta(hours=1), app=app)
    last = due_at - timedelta(hours=1) if due_at is not None else utcnow()
    t0 = time.perf_counter()
    if n <= SAVE_ONE_BY_ONE:
        for i in range(n):
            RedBeatSchedulerEntry(
                f"job-{i}", NOOP, every, args=[i], app=app, last_run_at=last
            ).save()
            if i % 1000 == 0:
                budget.check()
    else:
        import redis

        client = redis.Redis.from_url(redis_url)
        probe = RedBeatSchedulerEntry("job-0", NOOP, every, args=[0], app=app, last_run_at=last)
        schedule_key, score = app.redbeat_conf.schedule_key, probe.score
        meta = json.dumps({"last_run_at": last}, cls=RedBeatJSONEncoder)
        for lo in range(0, n, PIPELINE):
            with client.pipeline(transaction=False) as pipe:
                for i in range(lo, min(lo + PIPELINE, n)):
                    key = RedBeatSchedulerEntry.generate_key(app, f"job-{i}")
                    definition = {"name": f"job-{i}", "task": NOOP, "args": [i], "kwargs": {},
                                  "options": {}, "schedule": every, "enabled": True}
                    pipe.hset(key, "definition", json.dumps(definition, cls=RedBeatJSONEncoder))
                    pipe.hsetnx(key, "meta", meta)
                    pipe.zadd(schedule_key, {key: score})
                pipe.execute()
            budget.check()
        # what was written loads back as RedBeat's own entry, ranked in its schedule
        loaded = RedBeatSchedulerEntry.from_key(probe.key, app=app)
        assert loaded.name == "job-0" and loaded.rank is not None, loaded
    app.close()
    return time.perf_counter() - t0


def queued(redis_url: str) -> int:
    import redis

    return int(redis.Redis.from_url(redis_url).llen("celery"))


# ---------------------------------------------------------------- the suite


def run(args, servers: Servers) -> Report:
    report = Report("beat-scale", smoke=args.smoke)
    sizes = tuple(args.sizes or (SMOKE_SIZES if args.smoke else FULL_SIZES))
    burst_n = (30 if args.smoke else 10_000) if args.burst is None else args.burst  # 0: none
    ticks = args.ticks or (5 if args.smoke else 100)
    step = args.step_seconds or (60 if args.smoke else 600)
    schedulers = [s for s in SCHEDULERS if s in (args.schedulers or SCHEDULERS)]
    if "redbeat" in schedulers and not _installed("redbeat"):
        schedulers.remove("redbeat")
        report.note("celery-redbeat is not installed (pip install celery-redbeat): "
                    "no RedBeat figures in this run")
    stores = ["postgresql", "sqlite"]
    work = servers.dir("beat-scale")

    idle: dict[tuple[str, str, int], dict[str, Any] | str] = {}

    def probe_idle(kind: str, store: str, n: int, db: str | None, setup: float | None) -> None:
        log(f"idle {LABEL[kind]} {store} N={n:,}")
        spec = {
            "kind": kind, "mode": "idle", "n": n, "ticks": ticks, "seconds": step * 0.6,
            "db": db, "redis": servers.fresh_redis() if kind != "redbeat" else servers.redis.url,
            "dir": str(work), "profile": False,
        }
        try:
            res = run_probe(spec, step)
        except (OutOfTime, ProbeFailed) as exc:
            idle[(kind, store, n)] = str(exc).splitlines()[0]
            report.note(f"{LABEL[kind]} {store} N={n:,}: {exc}")
            return
        if setup is not None:
            res["fill"] = setup
        idle[(kind, store, n)] = res
        s = spread(res["ticks"])
        log(f"  tick p50 {ms(s['p50'], 3)} p95 {ms(s['p95'], 3)} over {s['n']} ticks, "
            f"RSS {mib(res['rss_kib'])}")
        if args.profile and kind == "kala" and n == max(sizes):  # separate, profiled run
            try:
                prof = run_probe({**spec, "profile": True}, step)["profile"]
                report.extra(f"cProfile of {ticks} idle kala-celery ticks ({store}, N={n:,})",
                             prof)
            except (OutOfTime, ProbeFailed) as exc:
                report.note(f"profiled idle ticks {store} N={n:,}: {exc}")

    # -- idle ticks and RSS ----------------------------------------------------------
    for n in sizes:
        for kind in schedulers:
            if kind == "kala":
                for store in stores:
                    if store == "sqlite" and n > SQLITE_MAX:
                        continue
                    url = servers.database(store, f"idle{n}")
                    engine = make_engine(url)
                    init_schema(engine)
                    log(f"insert {n:,} jobs ({store})")
                    try:
                        took = insert_jobs(
                            engine, n, first_due=utcnow() + timedelta(days=1), spread_seconds=86_400
                        )
                    finally:
                        engine.dispose()
                    log(f"  inserted in {secs(took)}")
                    probe_idle("kala", store, n, url, took)
                    servers.drop(url)
            elif kind == "celery":
                probe_idle("celery", "memory + shelve", n, None, None)
            else:
                url = servers.fresh_redis()
                log(f"save {n:,} RedBeat entries")
                try:
                    took = fill_redbeat(url, n, Budget(step, f"RedBeat fill N={n:,}"))
                except OutOfTime as exc:
                    idle[("redbeat", "redis", n)] = str(exc)
                    report.note(str(exc))
                    continue
                log(f"  saved in {secs(took)}")
                probe_idle("redbeat", "redis", n, None, took)
                servers.fresh_redis()

    # -- burst: N due at one instant -> published to Redis ---------------------------
    bursts: dict[tuple[str, str], dict[str, Any] | str] = {}

    def probe_burst(kind: str, store: str, prepare, db: str | None = None) -> None:
        log(f"burst {LABEL[kind]} {store}: {burst_n:,} due at one instant")
        try:
            due = prepare()
            spec = {
                "kind": kind, "mode": "burst", "n": burst_n, "ticks": 1, "seconds": step * 0.8,
                "db": db, "redis": servers.redis.url, "dir": str(work), "profile": False,
                "burst_due": due,
            }
            res = run_probe(spec, step)
        except (OutOfTime, ProbeFailed) as exc:
            bursts[(kind, store)] = str(exc).splitlines()[0]
            report.note(f"burst {LABEL[kind]} {store}: {exc}")
            return
        res["published"] = queued(servers.redis.url)
        bursts[(kind, store)] = res
        log(f"  {res['published']:,} published in {secs(res['burst'])}")
        if args.profile and kind == "kala":  # a second, profiled run of the same burst
            try:
                spec["burst_due"] = prepare()
                res["profile"] = run_probe({**spec, "profile": True}, step * 2)["profile"]
            except (OutOfTime, ProbeFailed) as exc:
                report.note(f"profiled burst {LABEL[kind]} {store}: {exc}")

    for kind in schedulers if burst_n > 0 else ():
        if kind == "kala":
            for store in stores:
                url = servers.database(store, "burst")

                def prepare_kala(url: str = url) -> None:
                    engine = make_engine(url)
                    init_schema(engine)
                    with engine.begin() as conn:
                        for table in ("job_links", "runs", "jobs"):
                            conn.execute(text(f"DELETE FROM {table}"))
                    insert_jobs(engine, burst_n, first_due=utcnow() - timedelta(seconds=1),
                                spread_seconds=1, prefix="burst-")
                    engine.dispose()
                    servers.fresh_redis()

                probe_burst("kala", store, prepare_kala, url)
                servers.drop(url)
        elif kind == "celery":

            def prepare_celery() -> float:
                servers.fresh_redis()
                return time.time() - 1

            probe_burst("celery", "memory + shelve", prepare_celery)
        else:

            def prepare_redbeat() -> float:
                url = servers.fresh_redis()
                due = utcnow() - timedelta(seconds=1)
                fill_redbeat(url, burst_n, Budget(step, "RedBeat burst fill"), due_at=due)
                return due.timestamp()

            probe_burst("redbeat", "redis", prepare_redbeat)

    _tables(report, sizes, schedulers, idle, bursts, burst_n, ticks)
    return report


# ---------------------------------------------------------------- tables


def _p50(res: dict[str, Any] | str | None) -> float | None:
    return spread(res["ticks"])["p50"] if isinstance(res, dict) and res.get("ticks") else None


def _rss(res: dict[str, Any] | str | None) -> float | None:
    return res["rss_kib"] if isinstance(res, dict) else None


def _tables(report, sizes, schedulers, idle, bursts, burst_n, ticks) -> None:
    t = report.table(
        f"Idle tick (nothing due; {ticks} timed ticks after a first one) and beat RSS",
        ["scheduler", "store", "N", "fill", "setup", "first tick", "tick p50", "tick p95",
         "ticks", "RSS"],
    )
    for (kind, store, n), res in idle.items():
        if isinstance(res, str):
            t.add(LABEL[kind], store, f"{n:,}", "—", "—", "—", res, "—", "—", "—")
            continue
        s = spread(res["ticks"])
        t.add(LABEL[kind], store, f"{n:,}", secs(res.get("fill")), secs(res.get("setup")),
              ms(res.get("first_tick"), 2), ms(s["p50"], 3), ms(s["p95"], 3), s["n"],
              mib(res["rss_kib"]))

    c = report.table(
        "Idle tick and RSS, kala-celery (PostgreSQL) vs peers (ratio > 1: kala-celery is better)",
        ["N", "kala tick", "celery tick", "RedBeat tick", "vs celery", "vs RedBeat",
         "kala RSS", "celery RSS", "RedBeat RSS", "RSS vs celery", "RSS vs RedBeat"],
    )
    for n in sizes:
        ours = idle.get(("kala", "postgresql", n))
        cel = idle.get(("celery", "memory + shelve", n))
        red = idle.get(("redbeat", "redis", n))

        def show(res, fmt):
            if isinstance(res, str):
                return res
            return fmt(res) if res else "—"

        c.add(f"{n:,}",
              show(ours, lambda r: ms(_p50(r), 3)), show(cel, lambda r: ms(_p50(r), 3)),
              show(red, lambda r: ms(_p50(r), 3)),
              ratio(_p50(ours), _p50(cel)), ratio(_p50(ours), _p50(red)),
              show(ours, lambda r: mib(_rss(r))), show(cel, lambda r: mib(_rss(r))),
              show(red, lambda r: mib(_rss(r))),
              ratio(_rss(ours), _rss(cel)), ratio(_rss(ours), _rss(red)))

    if bursts:
        b = report.table(
            f"Burst: {burst_n:,} jobs due at one instant → claimed and published to Redis",
            ["scheduler", "store", "published", "time", "per second", "ticks", "RSS after",
             "kala (PostgreSQL) vs this"],
        )
    ours = bursts.get(("kala", "postgresql"))
    ours_t = ours["burst"] if isinstance(ours, dict) else None
    for (kind, store), res in bursts.items():
        if isinstance(res, str):
            b.add(LABEL[kind], store, "—", res, "—", "—", "—", "—")
            continue
        rate = res["published"] / res["burst"] if res["burst"] else 0
        b.add(LABEL[kind], store, f"{res['published']:,}", secs(res["burst"]), f"{rate:,.0f}",
              f"{res['burst_ticks']:,}", mib(res["rss_kib"]),
              "—" if kind == "kala" and store == "postgresql" else ratio(ours_t, res["burst"]))

    # targets
    g = report.table("Targets", ["target", "measured", "met"])
    for store in ("postgresql", "sqlite"):
        ticks_by_n = {n: _p50(idle.get(("kala", store, n))) for n in sizes}
        known = {n: v for n, v in ticks_by_n.items() if v is not None}
        if known:
            worst = max(known.values())
            g.add(f"idle tick ≤ 2 ms ({store}, every N)", ms(worst, 3), _yes(worst <= 0.002))
            lo, hi = min(known), max(known)
            if hi != lo:
                growth = known[hi] / known[lo]
                g.add(f"idle tick flat ({store}): p50 at {hi:,} / p50 at {lo:,}",
                      f"{growth:.2f}x", _yes(growth <= 1.5))
        rss = {n: _rss(idle.get(("kala", store, n))) for n in sizes}
        rss = {n: v for n, v in rss.items() if v}
        if len(rss) > 1:
            lo, hi = min(rss), max(rss)
            g.add(f"beat RSS at {hi:,} ≤ 1.2x RSS at {lo:,} ({store})",
                  f"{rss[hi] / rss[lo]:.2f}x ({mib(rss[hi])} / {mib(rss[lo])})",
                  _yes(rss[hi] / rss[lo] <= 1.2))
    for store in ("postgresql", "sqlite"):
        res = bursts.get(("kala", store))
        if isinstance(res, dict):
            g.add(f"{burst_n:,} due jobs published in ≤ 2 s ({store})", secs(res["burst"]),
                  _yes(res["burst"] <= 2.0 and res["published"] == burst_n))
            red = bursts.get(("redbeat", "redis"))
            if isinstance(red, dict):
                g.add(f"≥ 2x RedBeat's burst rate ({store})",
                      f"{red['burst'] / res['burst']:.2f}x", _yes(red["burst"] / res["burst"] >= 2))
    if any(isinstance(r, dict) and r.get("profile") for r in bursts.values()):
        for (kind, store), res in bursts.items():
            if isinstance(res, dict) and res.get("profile"):
                report.extra(f"cProfile of the {LABEL[kind]} burst ({store})", res["profile"])


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"
