"""lateness: how late after its due instant a job is published, started by a worker, and its
process running — for a burst of jobs due at one instant and for a single job, through real
`celery beat -S kala` and `celery worker` processes on Redis.

- due: the job's schedule start (`R0/<T>/`, whole seconds, a few seconds ahead);
- published: the moment Redis received the run's task message (its LPUSH, seen with Redis'
  MONITOR: the server's clock, which is this machine's);
- task started: `runs.started_at`, written by the worker when it claims the run;
- process start: the job's command is `date +%s.%N`; its output (kept in `runs.output`) is
  the wall-clock time at which the command was running.
All clocks are this machine's.
"""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from datetime import UTC, datetime

from bench.cluster import Cluster, cores
from bench.common import (
    OutOfTime,
    Report,
    Servers,
    kala_time,
    log,
    ms,
    spread,
    wait_until,
)
from kala_celery.store.tables import TERMINAL_STATES

COMMAND = "date +%s.%N"


class Published:
    """When each run's message reached Redis: the LPUSH of its task message as Redis' MONITOR
    reports it (the server's clock, which is this machine's), watched from a background
    thread. Independent of what the beat emits (kala-celery sends no task-sent events by
    default); MONITOR costs Redis a little per command, the same for every run."""

    TASK_ID = re.compile(r'\\?"id\\?": \\?"([0-9a-f-]{36})')

    def __init__(self, broker_url: str) -> None:
        import redis

        self.client = redis.Redis.from_url(broker_url)
        self.sent: dict[str, float] = {}
        self._monitor = None
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="published", daemon=True)

    def _run(self) -> None:
        with self.client.monitor() as monitor:
            self._monitor = monitor
            for command in monitor.listen():
                if self._stop:
                    return
                text = command.get("command", "")
                if text.startswith("LPUSH"):
                    for task_id in self.TASK_ID.findall(text):
                        self.sent.setdefault(task_id, float(command["time"]))

    def start(self) -> None:
        self._thread.start()
        wait_until(lambda: self._monitor is not None, 10, "redis MONITOR")
        self.client.ping()  # the monitor sees this once it is attached
        time.sleep(0.5)

    def stop(self) -> None:
        self._stop = True
        with contextlib.suppress(Exception):
            self.client.ping()  # wakes the monitor so it sees the stop
        self._thread.join(5)
        self.client.close()


def _epoch(t: datetime) -> float:
    return t.replace(tzinfo=UTC).timestamp() if t.tzinfo is None else t.timestamp()


def _due_in(seconds: float) -> datetime:
    """The next whole second at least `seconds` from now (Kala schedules have 1 s precision)."""
    return datetime.fromtimestamp(math.ceil(time.time() + seconds), UTC)


def measure(cluster: Cluster, events: Published, run_ids: set[str] | None = None) -> dict:
    published, started, process, states = [], [], [], {}
    for run in cluster.runs():
        if run_ids is not None and run.id not in run_ids:
            continue
        due = _epoch(run.scheduled_for)
        states[run.state] = states.get(run.state, 0) + 1
        if run.id in events.sent:
            published.append(events.sent[run.id] - due)
        if run.started_at is not None:
            started.append(_epoch(run.started_at) - due)
        with contextlib.suppress(ValueError, IndexError):
            process.append(float((run.output or "").strip().splitlines()[-1]) - due)
    return {"published": published, "started": started, "process": process, "states": states}


def _done(cluster: Cluster, n: int, job_ids: list[str]) -> bool:
    ids = ",".join(f"'{j}'" for j in job_ids)
    terminal = ",".join(f"'{s}'" for s in TERMINAL_STATES)
    finished = cluster.scalar(
        f"SELECT count(*) FROM runs WHERE job_id IN ({ids}) AND state IN ({terminal})"
    )
    return int(finished or 0) >= n


def run(args, servers: Servers) -> Report:
    report = Report("lateness", smoke=args.smoke)
    burst = args.jobs or (5 if args.smoke else 200)
    trials = args.trials or (2 if args.smoke else 30)
    concurrency = args.concurrency or cores()
    stores = args.dbs or (["postgresql"] if args.smoke else ["postgresql", "sqlite"])
    table = report.table(
        "Lateness after the due instant (due = a whole second; one clock: this machine)",
        ["store", "case", "measure", "n", "min", "p50", "p99", "max"],
    )
    targets = report.table("Targets", ["target", "measured", "met"])
    for store in stores:
        cluster = Cluster(servers, store, "lateness")
        events = Published(cluster.redis_url)
        try:
            cluster.start_worker(concurrency)
            events.start()
            cluster.start_beat()

            # -- one run through beat and worker first: the measured runs are not the first
            # statements each process compiles and sends (steady state, not start-up)
            warm = cluster.create_job({"name": "warm-up", "command": COMMAND,
                                       "schedule": f"R0/{kala_time(_due_in(1.2))}/"})
            wait_until(lambda c=cluster, w=warm: _done(c, 1, [w]), 30, "the warm-up run", 0.05)
            warm_ids = {r.id for r in cluster.runs()}

            # -- a burst of jobs due at one instant
            due = _due_in(1.5 if args.smoke else 3.0)
            log(f"{burst} jobs due at {due:%H:%M:%S} ({store})")
            ids = cluster.create_jobs([
                {"name": f"late-{i}", "command": COMMAND, "schedule": f"R0/{kala_time(due)}/"}
                for i in range(burst)
            ])
            try:
                wait_until(lambda ids=ids, c=cluster: _done(c, burst, ids), 60 + burst * 0.5,
                           f"{burst} runs to finish", 0.2)
            except OutOfTime as exc:
                report.note(f"{store}: {exc}")
            time.sleep(0.5)  # the monitor's last lines
            burst_ids = {r.id for r in cluster.runs()} - warm_ids
            res = measure(cluster, events, burst_ids)
            _rows(table, store, f"{burst} due at once", res)
            if res["states"] != {"success": burst}:
                report.note(f"{store}: burst run states {res['states']}")
            pub = spread(res["published"])
            targets.add(f"{burst} simultaneous jobs all published within 50 ms of due ({store})",
                        f"last at {ms(pub['max'], 1)} ({len(res['published'])} seen)",
                        _yes(len(res["published"]) == burst and pub["max"] <= 0.050))

            # -- a single job, `trials` times
            log(f"{trials} single-job trials ({store})")
            for k in range(trials):
                due = _due_in(1.2)
                jid = cluster.create_job(
                    {"name": f"single-{k}", "command": COMMAND,
                     "schedule": f"R0/{kala_time(due)}/"})
                try:
                    wait_until(lambda jid=jid, c=cluster: _done(c, 1, [jid]), 30, "the run", 0.05)
                except OutOfTime as exc:
                    report.note(f"{store} trial {k}: {exc}")
                    break
            time.sleep(0.3)
            burst_and_single = {r.id for r in cluster.runs()}
            single = burst_and_single - burst_ids - warm_ids
            res = measure(cluster, events, single)
            _rows(table, store, f"single job x {len(single)}", res)
            proc = spread(res["process"])
            targets.add(f"single job due → process start p50 ≤ 20 ms ({store})",
                        ms(proc["p50"], 1), _yes(proc["p50"] <= 0.020))
        finally:
            events.stop()
            cluster.close()
    report.note(f"worker: celery prefork, concurrency {concurrency} (= cores unless "
                "--concurrency), prefetch multiplier 1, acks late (kala-celery's settings)")
    return report


def _rows(table, store: str, case: str, res: dict) -> None:
    for measure_, label in (("published", "due → published"),
                            ("started", "due → task started on the worker"),
                            ("process", "due → process start")):
        s = spread(res[measure_])
        table.add(store, case, label, s["n"], ms(s["min"], 1), ms(s["p50"], 1),
                  ms(s["p99"], 1), ms(s["max"], 1))


def _yes(ok: bool) -> str:
    return "yes" if ok else "**no**"
