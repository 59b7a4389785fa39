"""chaos: the production topology as real processes on this box (PostgreSQL, Redis without
persistence, the API under granian, ≥ 2 beats, ≥ 2 workers), jobs created over HTTP, and a
fault plan that repeats every kind of fault:

- `worker`: SIGKILL a worker mid-run (its whole process group: the main process and its pool
  children; the 1st, 3rd, ... kill also the commands it was running, as when its machine
  dies, the 2nd, 4th, ... leave them running as orphans), then start a new one;
- `redis`: SIGKILL redis-server and start it again, empty, on the same port;
- `beat`: SIGKILL a beat, then start a new one;
- `postgres`: `pg_ctl restart -m immediate`;
- `api`: SIGKILL the API (granian's main process and workers) and start it again on the same port.

Every command appends a line to one record file when it starts and when it ends, with the
KALA_RUN_ID, KALA_JOB_ID, KALA_ATTEMPT and KALA_SCHEDULED_FOR the engine gives it and the pid
of its parent (the worker's pool process), so the checker counts real executions per run.
After the plan: a settle period with every part up, then the jobs are disabled and the
cluster is left alone until no run is open (bounded). The checker reads the runs table and
the record file:

- every (job, scheduled_for) ran at most once: a run executed more than once is allowed only
  when its attempts > 1 and every earlier execution was on a worker we killed ("re-run after
  a worker death"); any other duplicate fails;
- no run is open (pending/sent/started) after settling;
- every job fired again after the last fault (a run scheduled after its recovery succeeded);
- lateness after each recovery: seconds from the part coming back to every job having a run
  started after it (the issue's bound: 60 s);
- and, as further evidence: every `success` run executed; no run was taken from a live
  worker; the API never answered 500 (a prober reads it twice a second); no part exited on
  its own.

`python -m bench chaos [--seconds 300] [--workers 3] [--beats 2] [--concurrency 2]`;
`--smoke` runs a short plan (every kind of fault once) with shortened KALA_REDELIVER_AFTER and
KALA_WORKER_TIMEOUT. tests/test_chaos.py runs `run_chaos` with a one-minute plan.
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.common import (
    OutOfTime,
    Proc,
    Report,
    Table,
    free_port,
    kala_env,
    kala_time,
    log,
    secs,
    wait_until,
)
from tests.servers import redis_ping

KINDS = ("worker", "redis", "beat", "postgres", "api")  # the default plan
EXTRA_KINDS = ("postgres-down",)  # only with --faults: PostgreSQL stopped for 10 s
POSTGRES_DOWN = 10.0
OPEN_STATES = ("pending", "sent", "started")
LATENESS_BOUND = 60.0  # seconds: issue 11's bound after any single fault
DEFAULT_REDELIVER_AFTER = "PT30S"
DEFAULT_WORKER_TIMEOUT = "PT30S"


# ---------------------------------------------------------------- jobs


@dataclass(frozen=True)
class JobSpec:
    key: str  # a short name, unique in a plan
    sleep: float = 0  # 0: a short command (two echos)
    every: int | None = None  # PTnS; None: a dependent (no schedule)
    overlap: bool = False
    retries: int = 0
    parent: str | None = None  # key of the parent job (a dependent)
    manual: bool = False  # started over HTTP every 2 s (its schedule is far away)

    @property
    def kind(self) -> str:
        what = f"sleep {self.sleep:g}" if self.sleep else "short"
        when = (f"PT{self.every}S" if self.every else "POST start every 2 s" if self.manual
                else f"after {self.parent}")
        extras = [x for x in ("overlap" if self.overlap else "",
                              f"retries {self.retries}" if self.retries else "") if x]
        return ", ".join([what, when, *extras])


# Demand on the workers (slot-seconds per second): a long job without overlap ≈ sleep /
# (sleep + interval / 2), with overlap sleep / interval, a short one ≈ 0.05. The full set asks
# for about 3 slots of the default 3 workers x 2 (and 4 are left while one is dead).
FULL_JOBS = (
    JobSpec("s1", every=1),
    JobSpec("s2", every=1, overlap=True),
    JobSpec("s3", every=2),
    JobSpec("s4", every=2, overlap=True, retries=1),
    JobSpec("s5", every=3),
    JobSpec("s6", every=3, overlap=True),
    JobSpec("l1", sleep=3, every=2, retries=1),
    JobSpec("l2", sleep=2, every=3),
    JobSpec("l3", sleep=4, every=3, overlap=True, retries=1),
    JobSpec("l4", sleep=5, every=3, retries=2),
    JobSpec("c1", parent="s3"),
    JobSpec("c2", parent="c1"),
    JobSpec("c3", sleep=2, parent="l2", retries=1),
    JobSpec("m1", manual=True),
)

SMOKE_JOBS = (
    JobSpec("s1", every=1),
    JobSpec("s2", every=2, overlap=True),
    JobSpec("s3", every=3),
    JobSpec("l1", sleep=3, every=2, retries=1),
    JobSpec("l2", sleep=2, every=3, overlap=True),
    JobSpec("l3", sleep=4, every=3),
    JobSpec("c1", parent="s3"),
    JobSpec("c2", sleep=2, parent="l1", retries=1),
    JobSpec("m1", manual=True),
)


def record_command(spec: JobSpec, record: Path) -> str:
    """argv (no shell): bash appends a start line, sleeps, appends an end line. Inside single
    quotes the engine expands nothing; bash expands the variables from its environment."""
    start = (f'echo "start|$KALA_RUN_ID|$KALA_JOB_ID|$KALA_ATTEMPT|$PPID|$(date +%s.%N)|'
             f'$KALA_SCHEDULED_FOR" >> {record}')
    end = f'echo "end|$KALA_RUN_ID|$KALA_JOB_ID|$KALA_ATTEMPT|$PPID|$(date +%s.%N)|" >> {record}'
    middle = f"; sleep {spec.sleep:g}" if spec.sleep else ""
    return f"bash -c '{start}{middle}; {end}'"


# ---------------------------------------------------------------- the record file


@dataclass
class Execution:
    run_id: str
    job_id: str
    attempt: str
    ppid: int
    start: float
    scheduled_for: str
    end: float | None = None


class Records:
    """The executions the commands recorded, read incrementally."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.path.touch()
        self._offset = 0
        self.executions: list[Execution] = []
        self._open: dict[tuple[str, str, int], Execution] = {}
        self.bad_lines = 0
        self.first_start: dict[str, list[float]] = defaultdict(list)  # job id -> starts

    def refresh(self) -> None:
        with self.path.open("rb") as f:
            f.seek(self._offset)
            data = f.read()
        cut = data.rfind(b"\n") + 1
        self._offset += cut
        for raw in data[:cut].decode(errors="replace").splitlines():
            parts = raw.split("|")
            if len(parts) != 7 or parts[0] not in ("start", "end"):
                self.bad_lines += 1
                continue
            what, run_id, job_id, attempt, ppid, stamp, when = parts
            try:
                t, pp = float(stamp), int(ppid)
            except ValueError:
                self.bad_lines += 1
                continue
            key = (run_id, attempt, pp)
            if what == "start":
                ex = Execution(run_id, job_id, attempt, pp, t, when)
                self.executions.append(ex)
                self._open[key] = ex
                self.first_start[job_id].append(t)
            elif key in self._open:
                self._open.pop(key).end = t

    def started_after(self, moment: float) -> set[str]:
        return {job for job, starts in self.first_start.items() if starts and starts[-1] >= moment}

    def first_after(self, job_id: str, moment: float) -> float | None:
        return next((t for t in self.first_start.get(job_id, []) if t >= moment), None)


# ---------------------------------------------------------------- processes


def process_table() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) of every process."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            out[int(entry.name)] = (ppid, cmd)
    return out


def descendants(pid: int, table: dict[int, tuple[int, str]]) -> list[int]:
    kids: dict[int, list[int]] = defaultdict(list)
    for child, (parent, _) in table.items():
        kids[parent].append(child)
    out, todo = [], [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out


def sigkill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class Fault:
    kind: str
    number: int  # the how-manieth fault of its kind
    at: float  # epoch seconds: the fault
    back: float | None = None  # epoch seconds: the part answers again
    detail: str = ""
    killed_runs: list[str] = field(default_factory=list)  # runs whose command we killed


class Prober(threading.Thread):
    """Reads the API twice a second (GET /stats/ and GET /job/{id}/) and, every 2 s while
    `starting` is set, starts the manual job (POST /job/start/{id}/?wait=false); counts the
    answers ("GET 200", "POST start 202", "GET no answer", ...)."""

    def __init__(self, base: str, job_id: str, start_id: str | None = None) -> None:
        super().__init__(name="api-prober", daemon=True)
        self.base, self.job_id, self.start_id = base, job_id, start_id
        self.answers: Counter[str] = Counter()
        self.errors: list[str] = []  # 500s: when and what
        self.starting = threading.Event()
        self._halt = threading.Event()

    def _ask(self, client: Any, method: str, path: str, label: str) -> None:
        import httpx

        try:
            response = client.request(method, path)
        except httpx.HTTPError:
            self.answers[f"{label} no answer"] += 1
            return
        code = response.status_code
        self.answers[f"{label} {code}"] += 1
        if code >= 500 and code != 503 and len(self.errors) < 20:
            self.errors.append(f"{datetime.now(UTC):%H:%M:%S} {method} {path} -> {code}: "
                               f"{response.text[:300]!r}")
        if code == 503 and "Retry-After" not in response.headers:
            self.answers[f"{label} 503 without Retry-After"] += 1

    def run(self) -> None:
        import httpx

        with httpx.Client(base_url=self.base, timeout=10) as client:
            for tick in itertools.count():
                if self._halt.wait(0.5):
                    return
                self._ask(client, "GET", "/stats/", "GET")
                self._ask(client, "GET", f"/job/{self.job_id}/", "GET")
                if self.start_id and self.starting.is_set() and tick % 4 == 0:
                    self._ask(client, "POST", f"/job/start/{self.start_id}/?wait=false",
                              "POST start")

    def bad_answers(self) -> int:
        """Answers of 500 and up other than 503."""
        return sum(n for what, n in self.answers.items() if what.split()[-1].isdigit()
                   and int(what.split()[-1]) >= 500 and what.split()[-1] != "503")

    def stop(self) -> None:
        self._halt.set()
        self.join(15)


class Topology:
    """PostgreSQL (given), and our own redis-server, API, beats and workers as processes."""

    def __init__(self, pg: Any, db_url: str, workdir: Path, extra_env: dict[str, str],
                 concurrency: int = 2) -> None:
        self.pg = pg
        self.db_url = db_url
        self.dir = workdir
        self.redis_port = free_port()
        self.api_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.env = {**kala_env(db_url, self.redis_url, workdir / "data"), **extra_env}
        self.concurrency = concurrency
        self.api_base = f"http://127.0.0.1:{self.api_port}/api/v1"
        self.redis: Proc | None = None
        self.api: Proc | None = None
        self.beats: list[Proc] = []
        self.workers: dict[str, Proc] = {}
        self.dead_pools: set[int] = set()  # pool pids of workers that died (killed or not)
        self.pools: dict[int, set[int]] = defaultdict(set)  # worker pid -> pool pids seen
        self.killed: set[int] = set()  # pids of processes we killed on purpose
        self.exits: list[str] = []  # parts that exited on their own (then restarted)
        self.all: list[Proc] = []
        self._n = itertools.count(1)
        self._worker_n = itertools.count(1)

    # -- starting ---------------------------------------------------------------------

    def _spawn(self, name: str, args: list[str]) -> Proc:
        proc = Proc(args, self.dir / f"{name}-{next(self._n)}.log", self.env)
        proc.name = name  # type: ignore[attr-defined]
        self.all.append(proc)
        return proc

    def start_redis(self) -> Proc:
        binary = shutil.which("redis-server") or "redis-server"
        data = self.dir / "redis"
        data.mkdir(exist_ok=True)
        for _ in range(20):  # the port may linger for a moment after a kill
            proc = self._spawn("redis", [
                binary, "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", str(data), "--daemonize", "no"])
            try:
                wait_until(lambda p=proc: not p.alive() or redis_ping(self.redis_port), 30,
                           "redis-server", 0.05)
            except OutOfTime:
                proc.stop(signal.SIGKILL)
                raise
            if proc.alive():
                self.redis = proc
                return proc
            time.sleep(0.5)
        raise RuntimeError(f"redis-server did not start on port {self.redis_port}")

    def spawn_api(self) -> Proc:
        self.api = self._spawn("api", [sys.executable, "-m", "kala_celery", "api", "-p",
                                       str(self.api_port)])
        return self.api

    def api_serving(self) -> bool:
        import httpx

        assert self.api is not None
        if not self.api.alive():
            raise RuntimeError(f"the API exited:\n{self.api.output()[-3000:]}")
        try:
            return httpx.get(f"{self.api_base}/stats/", timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def spawn_beat(self) -> Proc:
        proc = self._spawn("beat", [sys.executable, "-m", "celery", "-A", "kala_celery", "beat",
                                    "-S", "kala", "-l", "info", "--pidfile=",
                                    "-s", str(self.dir / "celerybeat-schedule")])
        self.beats.append(proc)
        return proc

    def spawn_worker(self) -> Proc:
        name = f"w{next(self._worker_n)}"
        proc = self._spawn(name, [
            sys.executable, "-m", "celery", "-A", "kala_celery", "worker", "-l", "info",
            "-c", str(self.concurrency), "-n", f"{name}@%h", "--without-gossip",
            "--without-mingle"])
        self.workers[name] = proc
        return proc

    @staticmethod
    def wait_logged(proc: Proc, needle: str, timeout: float) -> None:
        proc.wait_for_output(needle, timeout)

    def start(self, beats: int, workers: int) -> None:
        self.start_redis()
        self.spawn_api()  # first: it creates the schema
        wait_until(self.api_serving, 90, "the API serving", 0.2)
        started = [self.spawn_beat() for _ in range(beats)]
        started += [self.spawn_worker() for _ in range(workers)]
        for proc in started:
            self.wait_logged(proc, "beat: Starting" if proc in self.beats else " ready.", 120)

    # -- a restart policy (compose: `restart: unless-stopped`) ---------------------------

    def note_pools(self) -> None:
        table = process_table()
        for proc in self.workers.values():
            if proc.alive():
                self.pools[proc.pid].update(
                    pid for pid, (ppid, _) in table.items() if ppid == proc.pid)

    def supervise(self) -> None:
        """Start again, at once, every part that exited without us killing it (and note it).
        Called from the main thread only (children die with the thread that forked them)."""
        self.note_pools()
        parts: list[tuple[str, Proc | None]] = [("redis", self.redis), ("api", self.api)]
        parts += [("beat", b) for b in self.beats] + [("worker", w) for w in
                                                       self.workers.values()]
        for kind, proc in parts:
            if proc is None or proc.alive() or proc.pid in self.killed:
                continue
            self.killed.add(proc.pid)  # handled
            last = [line for line in proc.output().splitlines()
                    if "CRITICAL" in line or "Error" in line][-1:]
            what = (f"{datetime.now(UTC):%H:%M:%S} {proc.name} pid {proc.pid} exited "  # type: ignore[attr-defined]
                    f"{proc.proc.returncode}: {last[0][:200] if last else '(no error line)'}")
            self.exits.append(what)
            log(f"chaos: {what}; starting it again")
            if kind == "redis":
                self.start_redis()
            elif kind == "api":
                self.spawn_api()
            elif kind == "beat":
                self.beats.remove(proc)
                self.spawn_beat()
            else:
                name = next(n for n, w in self.workers.items() if w is proc)
                del self.workers[name]
                self.dead_pools.update(self.pools.get(proc.pid, ()))
                self.spawn_worker()

    def wait(self, check: Callable[[], object], timeout: float, what: str,
             pause: float = 0.25) -> Any:
        """wait_until, supervising the parts while it waits."""
        def step() -> object:
            self.supervise()
            return check()

        return wait_until(step, timeout, what, pause)

    def sleep(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.supervise()
            time.sleep(max(0.0, min(0.5, end - time.monotonic())))

    # -- faults -----------------------------------------------------------------------

    def _sigkill(self, proc: Proc) -> None:
        self.killed.add(proc.pid)
        sigkill_group(proc.pid)  # the session we made: the process and its children
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.proc.wait(10)

    def running_commands(self) -> dict[str, list[tuple[int, str]]]:
        """worker name -> (pid, command line) of the job commands it is running."""
        table = process_table()
        out = {}
        for name, proc in self.workers.items():
            if proc.alive():
                out[name] = [(pid, table[pid][1]) for pid in descendants(proc.pid, table)
                             if table[pid][1].startswith("bash -c ")]
        return out

    def kill_worker(self, records: Records, commands_too: bool = True,
                    want_long: float = 20) -> Fault:
        """SIGKILL the worker running the most (long) commands: its process group (main
        process and pool) and, with `commands_too`, the commands it runs (each in its own
        process group), as when its machine dies; without, they run on as orphans (the worker
        process crashed, or was OOM-killed)."""
        deadline = time.monotonic() + want_long
        while True:
            running = self.running_commands()
            longs = {n: [c for c in cmds if "sleep" in c[1]] for n, cmds in running.items()}
            best = max(running, key=lambda n: (len(longs[n]), len(running[n])), default=None)
            if best is None:
                raise RuntimeError("no worker is alive")
            if longs[best] or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        proc = self.workers.pop(best)
        table = process_table()
        pools = [pid for pid, (ppid, _) in table.items() if ppid == proc.pid]
        pools = sorted(set(pools) | self.pools.get(proc.pid, set()))
        commands = [pid for pid, _ in running[best]]
        groups = set()
        for pid in commands:
            with contextlib.suppress(ProcessLookupError):
                groups.add(os.getpgid(pid))
        fault = Fault("worker", 0, time.time())
        self._sigkill(proc)
        for pgid in groups if commands_too else ():
            if pgid != proc.pid:
                sigkill_group(pgid)
        self.dead_pools.update(pools)
        time.sleep(0.3)  # a command forked just before the kill writes its start line
        records.refresh()
        running_ids = {ex.run_id for ex in records.executions
                       if ex.ppid in pools and ex.end is None}
        fault.killed_runs = sorted(running_ids)
        fault.detail = (f"{best} (pid {proc.pid}, pool {pools}) with {len(commands)} commands "
                        f"running ({len(longs[best])} long), "
                        + ("commands killed too" if commands_too else "commands left running"))
        new = self.spawn_worker()
        self.wait_logged(new, " ready.", 120)
        fault.back = time.time()
        fault.detail += f"; {new.name} ready"  # type: ignore[attr-defined]
        return fault

    def kill_beat(self) -> Fault:
        proc = self.beats.pop(0)  # the oldest
        fault = Fault("beat", 0, time.time(), detail=f"beat pid {proc.pid}")
        self._sigkill(proc)
        new = self.spawn_beat()
        self.wait_logged(new, "beat: Starting", 120)
        fault.back = time.time()
        return fault

    def kill_redis(self, down: float) -> Fault:
        assert self.redis is not None
        fault = Fault("redis", 0, time.time(), detail=f"down {down:g} s, back empty")
        self._sigkill(self.redis)
        time.sleep(down)
        self.start_redis()
        fault.back = time.time()
        return fault

    def kill_api(self) -> Fault:
        assert self.api is not None
        fault = Fault("api", 0, time.time(), detail=f"api pid {self.api.pid}")
        self._sigkill(self.api)
        self.spawn_api()
        wait_until(self.api_serving, 90, "the API serving again", 0.1)
        fault.back = time.time()
        return fault

    def restart_postgres(self) -> Fault:
        from tests.servers import _pg_run, find_pg_binary

        fault = Fault("postgres", 0, time.time(), detail="pg_ctl restart -m immediate")
        args = [find_pg_binary("pg_ctl"), "restart", "-D", str(self.pg.data_dir), "-m",
                "immediate", "-w", "-t", "60", "-l", str(self.pg.log_file)]
        res = _pg_run(args, self.pg.as_root, timeout=90)
        if res.returncode:
            raise RuntimeError(f"pg_ctl restart failed: {res.stdout}{res.stderr}")
        wait_until(lambda: postgres_answers(self.pg), 60, "PostgreSQL back", 0.05)
        fault.back = time.time()
        return fault

    def postgres_outage(self, down: float) -> Fault:
        """`pg_ctl stop -m immediate`, `down` seconds away, `pg_ctl start` on the same port."""
        from tests.servers import _pg_run, find_pg_binary

        fault = Fault("postgres-down", 0, time.time(),
                      detail=f"pg_ctl stop -m immediate, down {down:g} s")
        pg_ctl = find_pg_binary("pg_ctl")
        res = _pg_run([pg_ctl, "stop", "-D", str(self.pg.data_dir), "-m", "immediate", "-w",
                       "-t", "60"], self.pg.as_root, timeout=90)
        if res.returncode:
            raise RuntimeError(f"pg_ctl stop failed: {res.stdout}{res.stderr}")
        self.sleep(max(0.0, fault.at + down - time.time()))
        res = _pg_run([pg_ctl, "start", "-D", str(self.pg.data_dir), "-l", str(self.pg.log_file),
                       "-w", "-t", "60", "-o", f"-p {self.pg.port}"], self.pg.as_root,
                      timeout=90)
        if res.returncode:
            raise RuntimeError(f"pg_ctl start failed: {res.stdout}{res.stderr}")
        wait_until(lambda: postgres_answers(self.pg), 60, "PostgreSQL back", 0.05)
        fault.back = time.time()
        return fault

    def unexpected_exits(self) -> list[str]:
        self.supervise()
        return list(self.exits)

    def close(self) -> None:
        for proc in reversed(self.all):
            with contextlib.suppress(Exception):
                proc.stop(signal.SIGTERM, timeout=15)


def postgres_answers(pg: Any) -> bool:
    import psycopg

    try:
        with psycopg.connect(pg.dsn("postgres"), connect_timeout=2) as conn:
            conn.execute("SELECT 1")
        return True
    except psycopg.Error:
        return False


# ---------------------------------------------------------------- the plan


@dataclass
class Plan:
    faults: Sequence[str]  # kinds, in order
    every: float  # seconds between faults (at least)
    warmup: float = 60  # bound: every job ran once before the first fault
    recover: float = 90  # bound: every job started after a recovery before the next fault
    settle: float = 30  # seconds with every part up after the last fault (after it recovered)
    drain: float | None = None  # bound on the wait for no open run (None: from the settings)
    redis_down: float = 3.0
    jobs: Sequence[JobSpec] = FULL_JOBS
    beats: int = 2
    workers: int = 3
    concurrency: int = 2
    env: dict[str, str] = field(default_factory=dict)  # KALA_* for every process


def full_plan(seconds: float, kinds: Sequence[str] = KINDS, rounds: int = 2) -> list[str]:
    """Every kind `rounds` times at least (more when `seconds` leaves 30 s per fault), the
    order turned by one each round."""
    kinds = list(kinds)
    n = max(rounds, int(seconds // (len(kinds) * 30)))
    return [kinds[(i + r) % len(kinds)] for r in range(n) for i in range(len(kinds))]


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    warn_only: bool = False  # reported, does not fail the run
    info: bool = False  # a count, not a check

    @property
    def result(self) -> str:
        if self.info:
            return "info"
        return "PASS" if self.ok else "WARN" if self.warn_only else "FAIL"


@dataclass
class Outcome:
    checks: list[Check]
    tables: list[Table]
    faults: list[Fault]
    workdir: Path
    notes: list[str]

    @property
    def failures(self) -> list[str]:
        return [c.name for c in self.checks if not c.ok and not c.warn_only]

    def check(self, name_start: str) -> Check:
        return next(c for c in self.checks if c.name.startswith(name_start))


def _duration(env: dict[str, str], name: str, default: str) -> float:
    from kala_celery.schedule import parse_plain_duration

    raw = env.get(name) or os.environ.get(name) or default
    return parse_plain_duration(raw).total_seconds()


class Api:
    def __init__(self, base: str) -> None:
        import httpx

        self.client = httpx.Client(base_url=base, timeout=30)

    def call(self, method: str, path: str, body: Any = None, ok: Iterable[int] = (200,)) -> Any:
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                response = self.client.request(method, path, json=body)
                if response.status_code in ok:
                    return response
                if response.status_code < 500 or time.monotonic() > deadline:
                    raise RuntimeError(f"{method} {path}: {response.status_code} {response.text}")
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
            time.sleep(0.5)


def create_jobs(api: Api, specs: Sequence[JobSpec], record: Path, lead: float = 4) -> dict:
    """POST every job; returns key -> id. Schedules start `lead` seconds ahead."""
    start = kala_time(datetime.now(UTC) + timedelta(seconds=lead))
    ids: dict[str, str] = {}
    for spec in specs:
        body: dict[str, Any] = {"name": f"chaos {spec.key} ({spec.kind})",
                                "command": record_command(spec, record)}
        if spec.every:
            body["schedule"] = f"R/{start}/PT{spec.every}S"
        elif spec.manual:
            body["schedule"] = "R/2099-01-01T00:00:00Z/P1D"  # never due while we run
        if spec.parent:
            body["parent_jobs"] = [ids[spec.parent]]
        if spec.overlap:
            body["allow_overlap"] = True
        if spec.retries:
            body["retries"] = spec.retries
        ids[spec.key] = api.call("POST", "/job/", body, ok=(201,)).json()["id"]
    return ids


def run_chaos(pg: Any, db_url: str, plan: Plan, workdir: Path | None = None,
              on_fault: Callable[[Fault], None] | None = None) -> Outcome:
    """Start the topology on `db_url` (a database of the PostgreSQL server `pg`), run the plan,
    settle, check. Stops every process it started."""
    from sqlalchemy import create_engine

    workdir = workdir or Path(tempfile.mkdtemp(prefix="kala-chaos-", dir="/tmp"))
    workdir.mkdir(parents=True, exist_ok=True)
    record = workdir / "executions.log"
    records = Records(record)
    redeliver = _duration(plan.env, "KALA_REDELIVER_AFTER", DEFAULT_REDELIVER_AFTER)
    worker_timeout = _duration(plan.env, "KALA_WORKER_TIMEOUT", DEFAULT_WORKER_TIMEOUT)
    drain = plan.drain if plan.drain is not None else redeliver + worker_timeout + 90
    top = Topology(pg, db_url, workdir, plan.env, plan.concurrency)
    faults: list[Fault] = []
    notes = [f"KALA_REDELIVER_AFTER={redeliver:g}s, KALA_WORKER_TIMEOUT={worker_timeout:g}s "
             f"({'shortened' if plan.env else 'defaults'}); {plan.beats} beats, {plan.workers} "
             f"workers x -c {plan.concurrency}; logs in {workdir}"]
    prober = None
    durable_commits(pg, db_url)
    engine = create_engine(db_url, pool_pre_ping=True)
    stamps: dict[str, float] = {}
    try:
        log(f"chaos: starting the topology in {workdir}")
        top.start(plan.beats, plan.workers)
        api = Api(top.api_base)
        ids = create_jobs(api, plan.jobs, record)
        job_keys = {v: k for k, v in ids.items()}
        all_jobs = set(ids.values())
        stamps["created"] = time.time()
        manual = next((ids[j.key] for j in plan.jobs if j.manual), None)
        prober = Prober(top.api_base, next(iter(ids.values())), manual)
        prober.starting.set()
        prober.start()

        def every_job_started_after(moment: float) -> bool:
            records.refresh()
            return records.started_after(moment) >= all_jobs

        def wait_all_fired(moment: float, bound: float, what: str) -> bool:
            try:
                top.wait(lambda: every_job_started_after(moment), bound, what)
                return True
            except OutOfTime:
                records.refresh()
                missing = sorted(job_keys[j] for j in all_jobs - records.started_after(moment))
                log(f"chaos: {what}: not every job started within {bound:.0f} s "
                    f"(missing {missing})")
                return False

        log(f"chaos: {len(ids)} jobs created; warming up")
        wait_all_fired(stamps["created"], plan.warmup, "warm-up")
        counts: Counter[str] = Counter()
        for i, kind in enumerate(plan.faults):
            if faults:  # `every` apart at least, and after the last one's recovery
                top.sleep(faults[-1].at + plan.every - time.time())
            counts[kind] += 1
            log(f"chaos: fault {i + 1}/{len(plan.faults)}: {kind} #{counts[kind]}")
            if kind == "worker":  # odd: the machine dies; even: the worker process only
                fault = top.kill_worker(records, commands_too=counts[kind] % 2 == 1)
            elif kind == "redis":
                fault = top.kill_redis(plan.redis_down)
            elif kind == "beat":
                fault = top.kill_beat()
            elif kind == "postgres":
                fault = top.restart_postgres()
            elif kind == "postgres-down":
                fault = top.postgres_outage(POSTGRES_DOWN)
            elif kind == "api":
                fault = top.kill_api()
            else:
                raise ValueError(f"unknown fault {kind!r}")
            fault.number = counts[kind]
            faults.append(fault)
            assert fault.back is not None
            log(f"chaos:   {fault.detail}; back after {fault.back - fault.at:.1f} s")
            if on_fault:
                on_fault(fault)
            # the next fault only after every job started again (bounded): clean lateness
            wait_all_fired(fault.back, plan.recover, f"recovery from {kind} #{fault.number}")
        stamps["plan_end"] = time.time()
        last_back = faults[-1].back if faults else stamps["created"]

        def fired_since() -> bool:  # a run scheduled after the last recovery succeeded
            from sqlalchemy import text

            since = datetime.fromtimestamp(last_back or 0, UTC).replace(tzinfo=None)
            try:
                with engine.connect() as conn:
                    done = {row[0] for row in conn.execute(text(
                        "SELECT DISTINCT job_id FROM runs WHERE state = 'success' "
                        "AND scheduled_for >= :t"), {"t": since})}
            except Exception:
                return False
            return done >= all_jobs

        log("chaos: plan done; waiting until every job fired again")
        with contextlib.suppress(OutOfTime):
            top.wait(fired_since, plan.recover, "every job fired after the last fault", 0.5)
        log(f"chaos: settling for {plan.settle:g} s with every part up")
        top.sleep(plan.settle)
        records.refresh()
        prober.starting.clear()  # no more manual starts
        log("chaos: disabling every job")
        for job_id in ids.values():
            api.call("POST", f"/job/disable/{job_id}/", ok=(204,))
        stamps["disabled"] = time.time()

        def open_runs() -> int:
            from sqlalchemy import text

            try:
                with engine.connect() as conn:
                    return int(conn.execute(text(
                        "SELECT count(*) FROM runs WHERE state IN ('pending','sent','started')"
                    )).scalar() or 0)
            except Exception:
                return -1

        log(f"chaos: waiting (≤ {drain:.0f} s) until no run is open")
        try:
            top.wait(lambda: open_runs() == 0, drain, "no open run", 0.5)
            stamps["drained"] = time.time()
        except OutOfTime:
            log(f"chaos: {open_runs()} runs still open after {drain:.0f} s")
        top.sleep(1.5)  # the last end lines
        records.refresh()
        prober.stop()
        exits = top.unexpected_exits()
        runs = read_runs(engine)
        dump_runs(runs, workdir / "runs.csv")
        return check(runs, records, faults, top, ids, plan, stamps, prober, exits, notes,
                     workdir, read_jobs(engine))
    finally:
        if prober is not None and prober.is_alive():
            prober.stop()
        top.close()
        engine.dispose()


def durable_commits(pg: Any, db_url: str) -> None:
    """The test servers run with `synchronous_commit = off` (fast, and fine until the server
    crashes): a commit is acknowledged before its WAL is flushed, so `pg_ctl restart -m
    immediate` forgets the last acknowledged transactions — runs that were claimed, published and
    executed vanish. Production runs with the default (on); so does this database."""
    import psycopg
    from psycopg import sql

    name = db_url.rsplit("/", 1)[1].split("?", 1)[0]
    with psycopg.connect(pg.dsn("postgres"), autocommit=True, connect_timeout=10) as conn:
        conn.execute(sql.SQL("ALTER DATABASE {} SET synchronous_commit = on").format(
            sql.Identifier(name)))


def read_runs(engine: Any) -> list[dict[str, Any]]:
    from sqlalchemy import text

    with engine.connect() as conn:
        rows = conn.execute(text(
            "SELECT id, job_id, trigger, scheduled_for, state, attempts, worker, created_at, "
            "started_at, attempt_at, finished_at, error, root_run_id, parent_run_id FROM runs "
            "ORDER BY created_at")).mappings().all()
    return [dict(r) for r in rows]


def read_jobs(engine: Any) -> dict[str, dict[str, Any]]:
    """Every job row (all columns, whatever the engine's version has), by id."""
    from sqlalchemy import text

    with engine.connect() as conn:
        return {r["id"]: dict(r) for r in conn.execute(text("SELECT * FROM jobs")).mappings()}


def dump_runs(runs: list[dict[str, Any]], path: Path) -> None:
    if not runs:
        return
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(runs[0]))
        writer.writeheader()
        writer.writerows(runs)


def epoch(t: datetime | None) -> float | None:
    if t is None:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).timestamp()


# ---------------------------------------------------------------- the checker


def check(runs: list[dict[str, Any]], records: Records, faults: list[Fault], top: Topology,
          ids: dict[str, str], plan: Plan, stamps: dict[str, float], prober: Prober,
          exits: list[str], notes: list[str], workdir: Path,
          job_rows: dict[str, dict[str, Any]] | None = None) -> Outcome:
    key_of = {v: k for k, v in ids.items()}
    spec_of = {s.key: s for s in plan.jobs}
    by_id = {r["id"]: r for r in runs}
    execs: dict[str, list[Execution]] = defaultdict(list)
    for ex in records.executions:
        execs[ex.run_id].append(ex)
    checks: list[Check] = []

    # -- 1. at most once ------------------------------------------------------------------
    no_id = [ex for ex in records.executions if not ex.run_id]
    unknown = sorted({ex.run_id for ex in records.executions if ex.run_id
                      and ex.run_id not in by_id})
    occurrences = Counter((r["job_id"], r["scheduled_for"]) for r in runs
                          if r["trigger"] == "schedule")
    twice = [(key_of.get(j, j), str(t)) for (j, t), n in occurrences.items() if n > 1]
    reruns, duplicates = [], []
    for run_id, exs in execs.items():
        if len(exs) < 2 or run_id not in by_id:
            continue
        run = by_id[run_id]
        earlier = sorted(exs, key=lambda e: e.start)[:-1]
        if run["attempts"] > 1 and all(e.ppid in top.dead_pools for e in earlier):
            reruns.append(run_id)
        else:
            duplicates.append(run_id)
    ok = not (no_id or unknown or twice or duplicates)
    detail = (f"{len(runs)} runs ({sum(1 for r in runs if r['trigger'] == 'schedule')} "
              f"scheduled), {len(records.executions)} executions; {len(duplicates)} duplicate "
              f"executions, {len(twice)} occurrences recorded twice; {len(reruns)} re-run after a "
              f"worker death")
    if no_id:
        detail += (f"; {len(no_id)} executions without KALA_RUN_ID (does the engine pass "
                   f"KALA_RUN_ID to commands?)")
    if unknown:
        detail += f"; {len(unknown)} executions of runs not in the table"
    checks.append(Check("every (job, scheduled_for) ran at most once", ok, detail))

    # -- 2. nothing open ------------------------------------------------------------------
    open_runs = [r for r in runs if r["state"] in OPEN_STATES]
    states = Counter(r["state"] for r in open_runs)
    checks.append(Check("no run open after settling", not open_runs,
                        f"{len(open_runs)} of {len(runs)} open"
                        + (f" ({dict(states)})" if open_runs else "")))

    # -- 3. every job fired again after the last fault ------------------------------------
    last_back = max((f.back or 0 for f in faults), default=stamps.get("created", 0))
    fired = {r["job_id"] for r in runs if r["state"] == "success"
             and (epoch(r["scheduled_for"]) or 0) >= last_back}
    missing = sorted(key_of[j] for j in set(ids.values()) - fired)
    checks.append(Check("every job fired again after the last fault", not missing,
                        f"{len(ids) - len(missing)}/{len(ids)} jobs had a run scheduled after "
                        f"the last recovery that succeeded"
                        + (f"; not: {', '.join(missing)}" if missing else "")))

    # -- 4. lateness after each recovery ---------------------------------------------------
    fault_table = Table("chaos: faults and recovery", [
        "#", "fault", "at", "back after", "every job started again after", "slowest job",
        "longest wait of a run created around it", "runs in flight on it (now)", "what"])
    first_exec = {run_id: min(e.start for e in exs) for run_id, exs in execs.items()}
    worst: tuple[float, str] = (0.0, "")
    late_ok = True
    t0 = stamps.get("created", 0)
    for i, f in enumerate(faults, 1):
        assert f.back is not None
        firsts = {key_of[j]: records.first_after(j, f.back) for j in ids.values()}
        never = [k for k, t in firsts.items() if t is None]
        if never:
            lateness, slowest = float("inf"), ", ".join(sorted(never)) + " (never)"
        else:
            slowest, first = max(firsts.items(), key=lambda kv: kv[1] or 0)
            lateness = (first or 0) - f.back
        if lateness > LATENESS_BOUND:
            late_ok = False
        if lateness > worst[0]:
            worst = (lateness, f"{f.kind} #{f.number}")
        around = [(first_exec[r["id"]] - (epoch(r["created_at"]) or 0), r) for r in runs
                  if r["id"] in first_exec
                  and f.at - 5 <= (epoch(r["created_at"]) or 0) <= f.back + 30]
        wait, waited = max(around, key=lambda x: x[0], default=(None, None))
        longest = (f"{secs(wait)} ({key_of.get(waited['job_id'], '?')} {waited['trigger']} "
                   f"{waited['id'][:8]})" if waited else "—")
        killed = f.killed_runs
        fates = Counter(by_id[r]["state"] if r in by_id else "?" for r in killed)
        fate = ", ".join(f"{n} {s}" for s, n in sorted(fates.items()))
        fault_table.add(i, f"{f.kind} #{f.number}", f"+{f.at - t0:.0f} s",
                        secs(f.back - f.at),
                        "never" if lateness == float("inf") else secs(lateness), slowest,
                        longest,
                        f"{len(killed)} ({fate})" if killed else "—", f.detail)
    kinds = Counter(f.kind for f in faults)
    checks.append(Check(f"every job fired within {LATENESS_BOUND:.0f} s of each recovery",
                        late_ok and bool(faults),
                        f"worst {secs(worst[0]) if worst[0] != float('inf') else 'never'} "
                        f"({worst[1] or '—'}); faults: "
                        + ", ".join(f"{k} x{n}" for k, n in kinds.items())))

    # -- 5. at least once: every success executed; no run taken from a live worker --------
    unexecuted = [r["id"] for r in runs if r["state"] == "success" and not execs.get(r["id"])]
    checks.append(Check("every successful run executed its command", not unexecuted,
                        f"{len(unexecuted)} success runs without an execution"))
    taken = [r["id"] for r in runs if r["state"] == "lost"
             and any(e.end is not None and e.ppid not in top.dead_pools
                     for e in execs.get(r["id"], []))]
    checks.append(Check("no run taken from a live worker", not taken,
                        f"{len(taken)} runs ended lost though their command finished on a live "
                        f"worker"))

    # -- 6. the parts ----------------------------------------------------------------------
    answers = dict(prober.answers)
    bad = prober.bad_answers()
    checks.append(Check("the API never answered 500", bad == 0,
                        ", ".join(f"{c}: {n}" for c, n in sorted(answers.items()))))
    said: dict[str, list[str]] = defaultdict(list)  # the error line -> "w3 06:38:21", ...
    for line in exits:
        stamp, name, _pid, _, _exited, _code, *rest = line.split(" ")
        said[" ".join(rest)].append(f"{name} at {stamp}")
    checks.append(Check("no part exited on its own", not exits,
                        "; ".join(f"{len(who)} exited ({', '.join(who)}) with {what}"
                                  for what, who in said.items()) or "none", warn_only=True))
    rerun_runs = [by_id[r] for r in reruns]
    checks.append(Check("re-run after a worker death (allowed)", True,
                        f"{len(reruns)} runs executed more than once, each after its worker died "
                        f"({sum(len(execs[r]) for r in reruns)} executions; attempts "
                        f"{sorted(r['attempts'] for r in rerun_runs)})", info=True))

    # -- tables ------------------------------------------------------------------------------
    check_table = Table("chaos: checks", ["check", "result", "detail"])
    for c in checks:
        check_table.add(c.name, c.result, c.detail)
    job_table = Table("chaos: jobs", ["job", "what", "runs", "success", "failed", "lost",
                                      "skipped", "open", "executions", "re-run after a worker "
                                      "death", "longest wait to start",
                                      "missed occurrences"])
    rerun_set = set(reruns)
    for key, job_id in ids.items():
        mine = [r for r in runs if r["job_id"] == job_id]
        st = Counter(r["state"] for r in mine)
        job_table.add(key, spec_of[key].kind, len(mine), st["success"], st["failed"], st["lost"],
                      st["skipped"], sum(st[s] for s in OPEN_STATES),
                      sum(len(execs.get(r["id"], [])) for r in mine),
                      sum(1 for r in mine if r["id"] in rerun_set),
                      secs(max((min(e.start for e in execs[r["id"]]) - (epoch(r["created_at"]) or 0)
                                for r in mine if execs.get(r["id"])), default=None)),
                      (job_rows or {}).get(job_id, {}).get("missed_occurrences", "—"))
    timeline = Table("chaos: timeline", ["phase", "seconds"])
    for a, b, what in (("created", "plan_end", "warm-up and fault plan"),
                       ("plan_end", "disabled", "settle (every part up)"),
                       ("disabled", "drained", "jobs disabled until no run open")):
        if a in stamps and b in stamps:
            timeline.add(what, secs(stamps[b] - stamps[a]))
        elif a in stamps:
            timeline.add(what, "did not finish")
    if records.bad_lines:
        notes.append(f"{records.bad_lines} unreadable lines in the record file")
    if prober.errors:
        notes.append("API 5xx: " + " | ".join(prober.errors[:5]))
    return Outcome(checks, [check_table, fault_table, job_table, timeline], faults, workdir,
                   notes)


def findings(outcome: Outcome, runs_csv: Path | None = None) -> str:
    """A plain-text summary of the failed checks (for /tmp/chaos-findings.md)."""
    lines = [f"## chaos run {datetime.now(UTC):%Y-%m-%d %H:%M} UTC — logs in {outcome.workdir}"]
    for c in outcome.checks:
        if not c.ok:
            lines.append(f"- {c.result} {c.name}: {c.detail}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- python -m bench chaos


class ChaosReport(Report):
    failures: list[str]


def run(args: Any, servers: Any) -> ChaosReport:
    smoke = bool(getattr(args, "smoke", False))
    seconds = args.seconds or (40 if smoke else 300)
    workers = getattr(args, "workers", None) or (2 if smoke else 3)
    beats = getattr(args, "beats", None) or 2
    concurrency = args.concurrency or 2
    chosen = list(getattr(args, "faults", None) or KINDS)
    if smoke:
        env = {"KALA_REDELIVER_AFTER": "PT5S", "KALA_WORKER_TIMEOUT": "PT5S"}
        kinds = chosen
        plan = Plan(kinds, every=seconds / len(kinds), warmup=45, recover=45, settle=5,
                    redis_down=2, jobs=SMOKE_JOBS, beats=beats, workers=workers,
                    concurrency=concurrency, env=env)
    else:
        kinds = full_plan(seconds, chosen)
        plan = Plan(kinds, every=seconds / len(kinds), jobs=FULL_JOBS, beats=beats,
                    workers=workers, concurrency=concurrency)
    pg = servers.postgres
    db_url = servers.database("postgresql", "chaos")
    workdir = Path(tempfile.mkdtemp(prefix="kala-chaos-", dir="/tmp"))
    report = ChaosReport("chaos", smoke)
    report.failures = []
    try:
        outcome = run_chaos(pg, db_url, plan, workdir)
    finally:
        with contextlib.suppress(Exception):
            servers.drop(db_url)
    report.tables.extend(outcome.tables)
    for n in outcome.notes:
        report.note(n)
    report.failures = outcome.failures
    if outcome.failures:
        report.note(f"FAILED: {', '.join(outcome.failures)} (logs and runs.csv kept in "
                    f"{workdir})")
    elif getattr(args, "keep", False):
        report.note(f"logs and runs.csv kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    return report


__all__ = ["FULL_JOBS", "KINDS", "SMOKE_JOBS", "JobSpec", "Outcome", "Plan",
           "run", "run_chaos"]
