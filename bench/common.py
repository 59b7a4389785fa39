"""What every suite shares: machine facts, statistics, tables/markdown, servers, processes,
bulk job inserts and time budgets."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, insert, text

from kala_celery.store.tables import Job

REPO = Path(__file__).resolve().parent.parent

# ---------------------------------------------------------------- machine and command


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _ram_gib() -> float:
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 1024 / 1024
    return 0.0


def _version(args: list[str]) -> str:
    try:
        out = subprocess.run(args, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.strip().splitlines()[0] if out.strip() else "?"


def machine() -> str:
    """`uname -m`, CPU model, cores, RAM (one line)."""
    return (
        f"{platform.machine()}, {_cpu_model()}, {os.cpu_count()} cores, "
        f"{_ram_gib():.1f} GiB RAM, Linux {platform.release()}"
    )


def software() -> str:
    import celery
    import sqlalchemy

    from tests.servers import find_pg_binary

    try:
        pg = _version([find_pg_binary("postgres"), "--version"])
    except Exception:
        pg = "?"
    redis_bin = shutil.which("redis-server")
    redis = _version([redis_bin, "--version"]) if redis_bin else "?"
    return (
        f"Python {platform.python_version()}, celery {celery.__version__}, "
        f"SQLAlchemy {sqlalchemy.__version__}, {pg}, {redis.split(' sha=')[0]}"
    )


def source_digest() -> str:
    """sha256 of kala_celery/**/*.py (names and contents): which code a result is for (the
    package is being worked on while the bench runs)."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted((REPO / "kala_celery").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def command_line() -> str:
    return "python -m bench " + shlex.join(sys.argv[1:])


def utcnow() -> datetime:
    return datetime.now(UTC)


# ---------------------------------------------------------------- statistics


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear between closest ranks."""
    if not values:
        return float("nan")
    data = sorted(values)
    if len(data) == 1:
        return data[0]
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def spread(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "min": min(values) if values else float("nan"),
        "p50": pct(values, 50),
        "p95": pct(values, 95),
        "p99": pct(values, 99),
        "max": max(values) if values else float("nan"),
    }


def ms(seconds: float | None, digits: int = 2) -> str:
    if seconds is None or seconds != seconds:
        return "—"
    return f"{seconds * 1000:.{digits}f} ms"


def secs(seconds: float | None) -> str:
    if seconds is None or seconds != seconds:
        return "—"
    return f"{seconds:.2f} s"


def mib(kib: float | None) -> str:
    return "—" if kib is None else f"{kib / 1024:.0f} MiB"


def ratio(ours: float | None, theirs: float | None, *, higher_is_better: bool = False) -> str:
    """How many times better we are (>1 = we win), e.g. '3.1x better' / '0.4x (worse)'."""
    if not ours or not theirs or ours != ours or theirs != theirs:
        return "—"
    r = ours / theirs if higher_is_better else theirs / ours
    return f"{r:.2f}x better" if r >= 1 else f"{r:.2f}x (worse)"


# ---------------------------------------------------------------- report


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)

    def add(self, *cells: object) -> None:
        self.rows.append([str(c) for c in cells])

    def text(self) -> str:
        widths = [len(c) for c in self.columns]
        for row in self.rows:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=False)]
        line = "  ".join(c.ljust(w) for c, w in zip(self.columns, widths, strict=True))
        out = [self.title, line, "  ".join("-" * w for w in widths)]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False))
                for row in self.rows]
        return "\n".join(out)

    def markdown(self) -> str:
        out = [f"**{self.title}**", "", "| " + " | ".join(self.columns) + " |"]
        out.append("|" + "|".join(" --- " for _ in self.columns) + "|")
        out += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in self.rows]
        return "\n".join(out)


@dataclass
class Report:
    suite: str
    smoke: bool = False
    tables: list[Table] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extras: list[tuple[str, str]] = field(default_factory=list)
    started: datetime = field(default_factory=utcnow)
    load: tuple[float, float, float] = field(default_factory=os.getloadavg)

    def table(self, title: str, columns: list[str]) -> Table:
        t = Table(title, columns)
        self.tables.append(t)
        return t

    def note(self, text_: str) -> None:
        self.notes.append(text_)
        print(f"  note: {text_}", flush=True)

    def extra(self, title: str, body: str) -> None:
        """A preformatted block (a profile) shown after the tables."""
        self.extras.append((title, body))

    def header(self) -> list[str]:
        return [
            f"- command: `{command_line()}`",
            f"- machine: {machine()}",
            f"- software: {software()}; kala_celery source sha256 {source_digest()}",
            f"- date: {self.started:%Y-%m-%d %H:%M} UTC, took "
            f"{secs((utcnow() - self.started).total_seconds())}; load average at start "
            f"{self.load[0]:.2f}, at end {os.getloadavg()[0]:.2f}",
        ]

    def text(self) -> str:
        parts = [f"== {self.suite}{' (smoke)' if self.smoke else ''} =="]
        parts += [t.text() for t in self.tables]
        parts += [f"-- {title} --\n{body}" for title, body in self.extras]
        return "\n\n".join(parts)

    def markdown(self) -> str:
        parts = [f"### {self.suite}{' (smoke, tiny N)' if self.smoke else ''}", ""]
        parts += self.header()
        for t in self.tables:
            parts += ["", t.markdown()]
        if self.notes:
            parts += ["", *[f"- {n}" for n in self.notes]]
        for title, body in self.extras:
            parts += ["", f"<details><summary>{title}</summary>", "", "```", body, "```", "",
                      "</details>"]
        return "\n".join(parts) + "\n"


def log(message: str) -> None:
    print(f"[{utcnow():%H:%M:%S}] {message}", flush=True)


# ---------------------------------------------------------------- time budgets


class OutOfTime(Exception):
    pass


@dataclass
class Budget:
    """A deadline for one step: `check()` raises OutOfTime once it has passed."""

    seconds: float
    what: str
    start: float = field(default_factory=time.monotonic)

    @property
    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.start)

    @property
    def over(self) -> bool:
        return self.left <= 0

    def check(self) -> None:
        if self.over:
            raise OutOfTime(f"{self.what}: did not finish in {self.seconds:.0f} s")


def wait_until(check: Callable[[], object], timeout: float, what: str, pause: float = 0.02):
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise OutOfTime(f"gave up waiting for {what} after {timeout:.0f} s")
        time.sleep(pause)


# ---------------------------------------------------------------- servers


class Servers:
    """PostgreSQL and Redis on 127.0.0.1, started on first use, shared by the suites of one
    `python -m bench` run, stopped by close()."""

    def __init__(self) -> None:
        from tests.servers import make_base_dir

        self.base = make_base_dir("kala-bench-")
        self._pg = None
        self._redis = None
        self._dbs = 0

    @property
    def postgres(self):
        if self._pg is None:
            from tests.servers import start_postgres

            log("starting PostgreSQL")
            self._pg = start_postgres(self.base)
        return self._pg

    @property
    def redis(self):
        if self._redis is None:
            from tests.servers import start_redis

            log("starting Redis")
            self._redis = start_redis(self.base)
        return self._redis

    def fresh_redis(self) -> str:
        import redis

        url = self.redis.url
        redis.Redis.from_url(url).flushall()
        return url

    def database(self, kind: str, label: str) -> str:
        """A new empty database: 'postgresql' (a new database in the shared cluster) or
        'sqlite' (a new file)."""
        self._dbs += 1
        name = f"bench_{label}_{self._dbs}".replace("-", "_").lower()
        if kind == "postgresql":
            return self.postgres.create_database(name)
        if kind == "sqlite":
            directory = self.base / name
            directory.mkdir()
            return f"sqlite:///{directory / 'kala.db'}"
        raise ValueError(f"unknown database kind {kind!r}")

    def drop(self, url: str) -> None:
        if url.startswith("postgresql"):
            with contextlib.suppress(Exception):
                self.postgres.drop_database(url.rsplit("/", 1)[1])
        elif url.startswith("sqlite:///"):
            shutil.rmtree(Path(url.removeprefix("sqlite:///")).parent, ignore_errors=True)

    def dir(self, name: str) -> Path:
        path = self.base / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def close(self) -> None:
        for server in (self._redis, self._pg):
            if server is not None:
                with contextlib.suppress(Exception):
                    server.stop()
        self._pg = self._redis = None
        shutil.rmtree(self.base, ignore_errors=True)


# ---------------------------------------------------------------- processes


def _die_with_parent() -> None:  # in the child before exec: SIGTERM when the bench dies
    import ctypes

    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Proc:
    """A subprocess we started, in its own session, with its output in a log file."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None,
                 *, inherit: bool = True):
        """`env` is added to this process's environment, or replaces it if not `inherit`."""
        self.args = args
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            args,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**(os.environ if inherit else {}), **(env or {})},
            cwd=REPO,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_for_output(self, needle: str, timeout: float) -> None:
        wait_until(
            lambda: needle in self.output() or not self.alive(), timeout, f"{needle!r}", 0.05
        )
        if not self.alive():
            raise RuntimeError(f"{self.args[:4]} exited:\n{self.output()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)  # our own session only
                self.proc.wait(10)
        # children left in the session we created (e.g. prefork pool processes)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def kala_env(db_url: str, broker_url: str, data_dir: Path) -> dict[str, str]:
    return {
        "KALA_DATABASE_URL": db_url,
        "KALA_BROKER_URL": broker_url,
        "KALA_DATA_DIR": str(data_dir),
        "PYTHONPATH": str(REPO),
    }


def celery_worker(env: dict[str, str], log_path: Path, concurrency: int,
                  pool: str = "prefork") -> Proc:
    proc = Proc(
        [sys.executable, "-m", "celery", "-A", "kala_celery", "worker", "-l", "warning",
         "-c", str(concurrency), "-P", pool, "-n", f"bench-{os.getpid()}@%h",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        log_path,
        env,
    )
    return proc


def wait_worker_ready(broker_url: str, proc: Proc, timeout: float = 60) -> None:
    """Ping until the worker answers (its log level hides the 'ready' line)."""
    from celery import Celery

    app = Celery("bench-ping", broker=broker_url)
    try:
        def answered() -> bool:
            if not proc.alive():
                raise RuntimeError(f"worker exited:\n{proc.output()[-3000:]}")
            return bool(app.control.ping(timeout=0.5))

        wait_until(answered, timeout, "celery worker", 0.1)
    finally:
        app.close()


# ---------------------------------------------------------------- bulk job inserts

# Columns the generators fill themselves; every other column gets its model default (or
# NULL / zero), so columns added to the model later do not break the bench.
_OWN = ("id", "name", "command", "schedule", "next_run_at", "created_at", "disabled")


def _column_defaults() -> dict[str, Any]:
    values: dict[str, Any] = {}
    for col in Job.__table__.columns:
        if col.name in _OWN:
            continue
        default = col.default
        if default is not None and getattr(default, "is_scalar", False):
            values[col.name] = default.arg
        elif col.nullable or col.server_default is not None:
            continue
        else:
            try:
                kind = col.type.python_type
            except NotImplementedError:
                kind = str
            values[col.name] = {bool: False, int: 0, str: ""}.get(kind, "")
    return values


def kala_time(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def insert_jobs(
    engine: Engine,
    n: int,
    *,
    first_due: datetime,
    spread_seconds: int,
    prefix: str = "bench-",
    command: str = "true",
    interval: str = "PT1H",
    offset: int = 0,
) -> float:
    """Insert n enabled shell jobs whose next_run_at is first_due + (i % spread_seconds) s
    (spread_seconds=1: all due at the same instant), each with a matching `R/<start>/interval`
    schedule. PostgreSQL: one INSERT ... SELECT generate_series; SQLite: executemany in chunks.
    Returns the seconds it took."""
    first_due = first_due.astimezone(UTC).replace(microsecond=0)
    consts = _column_defaults()
    began = time.perf_counter()
    if engine.dialect.name == "postgresql":
        cols = [*_OWN, *consts]
        exprs = [
            "CAST(:prefix AS text) || lpad(CAST(g.i AS text), 8, '0')",
            "'bench job ' || g.i",
            ":command",
            "'R/' || to_char(g.due, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') || '/' || :interval",
            "g.due",
            ":created",
            "false",
            *[f":c_{name}" for name in consts],
        ]
        sql = (
            f"INSERT INTO jobs ({', '.join(cols)}) SELECT {', '.join(exprs)} FROM ("
            "SELECT i, CAST(:base AS timestamp) + (i % CAST(:spread AS bigint)) "
            "* interval '1 second' AS due "
            "FROM generate_series(CAST(:lo AS bigint), CAST(:hi AS bigint)) AS i) AS g"
        )
        params = {
            "prefix": prefix,
            "command": command,
            "interval": interval,
            "created": utcnow().replace(tzinfo=None),
            "base": first_due.replace(tzinfo=None),
            "spread": max(1, spread_seconds),
            "lo": offset + 1,
            "hi": offset + n,
            **{f"c_{k}": v for k, v in consts.items()},
        }
        with engine.begin() as conn:
            conn.execute(text(sql), params)
        with engine.connect() as conn:
            conn.execution_options(isolation_level="AUTOCOMMIT").execute(text("ANALYZE jobs"))
    else:
        created = utcnow()
        stmt = insert(Job.__table__)
        chunk = 20_000
        with engine.begin() as conn:
            for lo in range(offset + 1, offset + n + 1, chunk):
                rows = []
                for i in range(lo, min(lo + chunk, offset + n + 1)):
                    due = first_due + timedelta(seconds=i % max(1, spread_seconds))
                    rows.append({
                        **consts,
                        "id": f"{prefix}{i:08d}",
                        "name": f"bench job {i}",
                        "command": command,
                        "schedule": f"R/{kala_time(due)}/{interval}",
                        "next_run_at": due,
                        "created_at": created,
                        "disabled": False,
                    })
                conn.execute(stmt, rows)
        with engine.connect() as conn:
            conn.execute(text("ANALYZE"))
            conn.commit()
    return time.perf_counter() - began


def count(engine: Engine, sql: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text(sql), params).scalar() or 0)


def chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


# ---------------------------------------------------------------- sampling profiles


def pyspy_available() -> bool:
    return shutil.which("py-spy") is not None


def pyspy_record(pid: int, seconds: float, out: Path, log_path: Path) -> Proc:
    """Sample `pid` and its children (prefork pool processes) with py-spy, as collapsed
    stacks, for `seconds`."""
    return Proc(
        ["py-spy", "record", "--pid", str(pid), "--subprocesses", "--nonblocking",
         "--rate", "200", "--duration", str(max(1, int(seconds))), "--format", "raw",
         "--output", str(out)],
        log_path,
    )


def _frame_name(frame: str) -> str:
    """'func (path/to/file.py:12)' -> 'func (file.py)'."""
    name, _, where = frame.partition(" (")
    path = where.rstrip(")").rsplit(":", 1)[0]
    parts = Path(path).parts
    short = "/".join(parts[-2:]) if parts else path
    return f"{name} ({short})"


def summarize_collapsed(path: Path, top: int = 25) -> str:
    """Inclusive and self sample shares of a py-spy collapsed-stack file."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    ours: dict[str, int] = {}  # kala_celery's own functions, inclusive
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, num = line.rpartition(" ")
        if not stack or not num.isdigit():
            continue
        n = int(num)
        total += n
        frames = [_frame_name(f) for f in stack.split(";") if f and not f.startswith("process ")]
        for name in set(frames):
            inclusive[name] = inclusive.get(name, 0) + n
        for frame in {f for f in stack.split(";") if "kala_celery/" in f}:
            name = _frame_name(frame)
            ours[name] = ours.get(name, 0) + n
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
    if not total:
        return "(no samples)"
    lines = [f"{total} samples of busy threads (py-spy leaves idle ones out)", "",
             "inclusive (frames in ≥ 90 % of the samples — the process's main loop — left out):"]
    ranked = [kv for kv in sorted(inclusive.items(), key=lambda kv: -kv[1]) if kv[1] < 0.9 * total]
    for name, n in ranked[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    lines += ["", "kala_celery functions (inclusive):"]
    for name, n in sorted(ours.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    lines += ["", "self (leaf frame):"]
    for name, n in sorted(own.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {100 * n / total:5.1f}%  {name}")
    return "\n".join(lines)
