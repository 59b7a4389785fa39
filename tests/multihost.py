"""Several machines on this one, for tests/test_multihost.py and `python -m bench partitions`:
Linux network namespaces on a private bridge, each host with its own address and hostname.

- The network: a bridge in the root namespace holding 10.213.X.1/24 (X random, one no route
  here uses), so the test process reaches every host; host `name` is the namespace
  `kcmh-<tag>-<name>`, joined to the bridge by a veth whose bridge end is `kcmh-<tag>-<name>`
  too and whose inside end is `eth0`. Nothing is sent anywhere but loopback and that /24.
- The hosts: "db" runs PostgreSQL and Redis on its address; the others run `celery beat -S
  kala`, `celery worker` and the API, each process under `unshare --uts` with the hostname
  `kcmh-<name>`, so heartbeats and `runs.worker` name different machines.
- Faults: a host's link down (its bridge port, as a pulled cable: packets vanish, connections
  hang), a host cut from one port of another by nftables rules inside its namespace (both
  directions dropped), and a process whose wall clock is off by N seconds (libfaketime plus a
  shim, see `Clocks`).

Everything made here is undone by `close()` (namespaces, bridge, processes), also at
interpreter exit. `unavailable()` says what is missing (not root, no `ip netns`, no `nft`...)
so that tests skip with the reason.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import ipaddress
import json
import os
import pwd
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import httpx

from tests import history, servers
from tests.processes import Command, wait_for

PREFIX = "kcmh-"
SUBNET = "10.213.{}.0/24"
PG_PORT = 5432
REDIS_PORT = 6379
API_PORT = 8000
CLOCK_CLAIM = re.compile(r"clock is ([+-]?\d+(?:\.\d+)?) s off the database")
TOOLS = ("ip", "unshare", "nft", "setpriv", "hostname", "redis-server")


class MultihostUnavailable(RuntimeError):
    """This machine cannot run the multi-host harness (the message says why)."""


# ---------------------------------------------------------------- what is needed


def _run(args: Sequence[str], *, stdin: str | None = None, check: bool = True,
         timeout: float = 30) -> subprocess.CompletedProcess:
    """A short command; a failure raises with its output."""
    done = subprocess.run(list(args), input=stdin, capture_output=True, text=True,
                          timeout=timeout)
    if check and done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): "
                           f"{done.stdout}{done.stderr}")
    return done


def unavailable() -> str | None:
    """Why the harness cannot run here, or None: root, the tools, and a namespace we may
    make (a container without CAP_SYS_ADMIN/CAP_NET_ADMIN refuses it)."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing {', '.join(missing)} (apt-get install iproute2 nftables redis-server)"
    try:
        servers.find_pg_binary("postgres")
    except servers.ServerUnavailable as exc:
        return str(exc)
    probe = f"{PREFIX}probe-{os.getpid()}"
    made = _run(["ip", "netns", "add", probe], check=False)
    if made.returncode:
        return f"`ip netns add` is not permitted here: {made.stderr.strip()}"
    try:
        inside = _run(["ip", "netns", "exec", probe, "unshare", "--uts", "--", "hostname",
                       "kcmh-probe"], check=False)
        if inside.returncode:
            return f"`unshare --uts` inside a namespace failed: {inside.stderr.strip()}"
        rules = _run(["ip", "netns", "exec", probe, "nft", "add", "table", "inet", "kcmh"],
                     check=False)
        if rules.returncode:
            return f"`nft` cannot make rules in a namespace: {rules.stderr.strip()}"
    finally:
        _run(["ip", "netns", "del", probe], check=False)
    return None


# ---------------------------------------------------------------- the network


@dataclass(frozen=True)
class Host:
    name: str  # "db", "h1", ...
    netns: str  # the namespace
    port: str  # the veth end on the bridge (its link)
    address: str  # on the bridge's /24

    @property
    def hostname(self) -> str:
        return f"kcmh-{self.name}"

    def argv(self, args: Sequence[str]) -> list[str]:
        """`args` run inside this host: its namespace and a UTS namespace of its own with
        its hostname (`ip netns exec`, `unshare` and `sh` exec, so the pid is the program)."""
        return ["ip", "netns", "exec", self.netns, "unshare", "--uts", "--", "sh", "-c",
                'hostname "$0" && exec "$@"', self.hostname, *args]

    def run(self, args: Sequence[str], stdin: str | None = None) -> None:
        """A short command in this host's namespace (no UTS namespace of its own)."""
        _run(["ip", "netns", "exec", self.netns, *args], stdin=stdin)


def _free_subnet() -> ipaddress.IPv4Network:
    """A 10.213.X.0/24 that no address or route of this machine's root namespace touches."""
    used = _run(["ip", "-4", "-o", "addr", "show"]).stdout + _run(["ip", "-4", "route"]).stdout
    choices = list(range(16, 250))
    random.shuffle(choices)
    for third in choices:
        net = ipaddress.ip_network(SUBNET.format(third))
        prefix = ".".join(str(net.network_address).split(".")[:3]) + "."
        if prefix not in used:
            return net
    raise MultihostUnavailable("no free 10.213.X.0/24 on this machine")


OWNERS = Path("/tmp/kcmh-owners")  # <tag> holds the pid of the process that made it


def remove_stale() -> None:
    """Remove what an earlier run left when it was killed before it could clean up: the
    namespaces (with their processes) and bridge of every tag whose owner is gone."""
    listed = _run(["ip", "netns", "list"], check=False).stdout.split()
    tags = {name.split("-")[1] for name in listed if name.startswith(PREFIX)
            and name.count("-") >= 2}
    for tag in tags - {"probe"}:
        owner = OWNERS / tag
        with contextlib.suppress(OSError, ValueError):
            if Path(f"/proc/{int(owner.read_text())}").exists():
                continue  # alive: another run's
        for name in (n for n in listed if n.startswith(f"{PREFIX}{tag}-")):
            for pid in _run(["ip", "netns", "pids", name], check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid), signal.SIGKILL)
            _run(["ip", "netns", "del", name], check=False)
        _run(["ip", "link", "del", f"{PREFIX}{tag}-br"], check=False)
        owner.unlink(missing_ok=True)


class Network:
    """A bridge, and a namespace per host on it; `close()` removes them all."""

    def __init__(self, names: Iterable[str]) -> None:
        remove_stale()
        self.tag = uuid.uuid4().hex[:4]
        OWNERS.mkdir(exist_ok=True)
        (OWNERS / self.tag).write_text(str(os.getpid()))
        self.subnet = _free_subnet()
        addresses = list(self.subnet.hosts())
        self.gateway = str(addresses[0])
        self.bridge = f"{PREFIX}{self.tag}-br"
        self.hosts: dict[str, Host] = {}
        self._closed = False
        atexit.register(self.close)
        try:
            self._make_bridge()
            for n, name in enumerate(names):
                self.hosts[name] = self._make_host(name, str(addresses[1 + n]))
        except BaseException:
            self.close()
            raise

    def _make_bridge(self) -> None:
        _run(["ip", "link", "add", self.bridge, "type", "bridge"])
        _run(["ip", "addr", "add", f"{self.gateway}/{self.subnet.prefixlen}", "dev",
              self.bridge])
        _run(["ip", "link", "set", self.bridge, "up"])

    def _make_host(self, name: str, address: str) -> Host:
        host = Host(name, f"{PREFIX}{self.tag}-{name}", f"{PREFIX}{self.tag}-{name}", address)
        _run(["ip", "netns", "add", host.netns])
        self.hosts[name] = host  # from here on, close() removes it
        _run(["ip", "link", "add", host.port, "type", "veth", "peer", "name", "eth0",
              "netns", host.netns])
        _run(["ip", "link", "set", host.port, "master", self.bridge, "up"])
        host.run(["ip", "addr", "add", f"{address}/{self.subnet.prefixlen}", "dev", "eth0"])
        host.run(["ip", "link", "set", "eth0", "up"])
        host.run(["ip", "link", "set", "lo", "up"])
        host.run(["nft", "-f", "-"], stdin=_NFT_TABLE)
        return host

    # -- faults ---------------------------------------------------------------------

    def link(self, name: str, up: bool) -> None:
        """Plug or pull `name`'s cable: its bridge port up or down."""
        _run(["ip", "link", "set", self.hosts[name].port, "up" if up else "down"])

    def cut(self, name: str, peer: str, port: int) -> None:
        """Drop every packet between host `name` and `peer`'s TCP `port` (in `name`'s
        namespace, both ways: nothing is refused, it all just vanishes)."""
        address = self.hosts[peer].address
        self.hosts[name].run(["nft", "-f", "-"], stdin=(
            f"add rule inet kcmh out ip daddr {address} tcp dport {port} drop\n"
            f"add rule inet kcmh in ip saddr {address} tcp sport {port} drop\n"))

    def heal(self, name: str) -> None:
        """Remove every cut of host `name`."""
        self.hosts[name].run(["nft", "flush", "table", "inet", "kcmh"])

    # -- the end --------------------------------------------------------------------

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for host in self.hosts.values():
            _run(["ip", "netns", "del", host.netns], check=False)  # its veth goes with it
        _run(["ip", "link", "del", self.bridge], check=False)
        (OWNERS / self.tag).unlink(missing_ok=True)
        with contextlib.suppress(ValueError):
            atexit.unregister(self.close)


_NFT_TABLE = """\
table inet kcmh {
    chain out { type filter hook output priority 0; policy accept; }
    chain in { type filter hook input priority 0; policy accept; }
}
"""


# ---------------------------------------------------------------- clocks


SHIM_SOURCE = textwrap.dedent("""\
    /* Preloaded before libfaketime: sleeps on any clock but the wall clock go straight to
       the kernel. libfaketime 0.9.10 with FAKETIME_DONT_FAKE_MONOTONIC=1 turns Python's
       time.sleep (clock_nanosleep on CLOCK_MONOTONIC, absolute) into EINVAL. */
    #define _GNU_SOURCE
    #include <dlfcn.h>
    #include <errno.h>
    #include <sys/syscall.h>
    #include <time.h>
    #include <unistd.h>

    int clock_nanosleep(clockid_t clock, int flags, const struct timespec *request,
                        struct timespec *remain) {
        static int (*next)(clockid_t, int, const struct timespec *, struct timespec *);
        if (clock != CLOCK_REALTIME) {
            int saved = errno;
            long result = syscall(SYS_clock_nanosleep, clock, flags, request, remain);
            int error = result == -1 ? errno : 0;
            errno = saved;
            return error;
        }
        if (!next) next = dlsym(RTLD_NEXT, "clock_nanosleep");
        return next(clock, flags, request, remain);
    }
    """)

# Run inside a skewed process's environment: sleep, Event.wait and a subprocess must work,
# and time.time() must be off by the skew (the real time from `date` without the preload).
PROBE = textwrap.dedent("""\
    import json, subprocess, threading, time
    def real():
        out = subprocess.run(["env", "-u", "LD_PRELOAD", "date", "+%s.%N"],
                             capture_output=True, text=True, check=True).stdout
        return float(out)
    began = time.monotonic(); time.sleep(0.2); slept = time.monotonic() - began
    began = time.monotonic(); threading.Event().wait(0.2); waited = time.monotonic() - began
    offset = time.time() - real()
    print(json.dumps({"slept": slept, "waited": waited, "offset": offset}))
    """)


def _faketime_library() -> str | None:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    return found[0] if found else None


class Clocks:
    """Environments that put one process's wall clock `seconds` off, checked before use.

    libfaketime (Debian's `faketime`) with FAKETIME_DONT_FAKE_MONOTONIC=1 (without it
    threading.Event.wait hangs: it waits on a faked monotonic deadline) and the shim above
    preloaded before it (with it, time.sleep fails with EINVAL). Children inherit the preload
    (a job's command that records the real time must drop it: `env -u LD_PRELOAD`)."""

    def __init__(self, directory: Path) -> None:
        library = _faketime_library()
        if library is None:
            raise MultihostUnavailable("libfaketime is missing (apt-get install faketime)")
        compiler = shutil.which("cc") or shutil.which("gcc")
        if compiler is None:
            raise MultihostUnavailable("a C compiler is missing for the sleep shim "
                                       "(apt-get install gcc libc6-dev)")
        source, self.shim = directory / "kcmh-shim.c", directory / "kcmh-shim.so"
        source.write_text(SHIM_SOURCE)
        _run([compiler, "-shared", "-fPIC", "-O2", "-o", str(self.shim), str(source), "-ldl"])
        self.library = library

    def env(self, seconds: int) -> dict[str, str]:
        return {"LD_PRELOAD": f"{self.shim} {self.library}", "FAKETIME": f"{seconds:+d}s",
                "FAKETIME_DONT_FAKE_MONOTONIC": "1"}

    def check(self, host: Host, seconds: int) -> None:
        """Run the probe on `host` with the skew: it must finish, sleep and wait for their
        time, and see the wall clock `seconds` (±1) off; raise with what it saw otherwise."""
        argv = host.argv([sys.executable, "-c", PROBE])
        try:
            done = subprocess.run(argv, env={**os.environ, **self.env(seconds)},
                                  capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired as exc:
            raise RuntimeError(f"a process {seconds:+d} s off hangs (sleep or Event.wait "
                               f"under libfaketime): {exc}") from exc
        if done.returncode:
            raise RuntimeError(f"a process {seconds:+d} s off failed: {done.stderr[-2000:]}")
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        ok = (0.19 <= seen["slept"] < 2 and 0.19 <= seen["waited"] < 2
              and abs(seen["offset"] - seconds) < 1)
        if not ok:
            raise RuntimeError(f"a process meant to be {seconds:+d} s off is not: {seen}")


# ---------------------------------------------------------------- the database host


@dataclass
class Database:
    """PostgreSQL and Redis on the db host's address (fixed ports: the namespace is ours)."""

    host: Host
    directory: Path
    processes: list[Command] = field(default_factory=list)

    @property
    def address(self) -> str:
        return self.host.address

    def url(self, name: str) -> str:
        return f"postgresql+psycopg://{servers.PG_USER}@{self.address}:{PG_PORT}/{name}"

    def dsn(self, name: str = "postgres") -> str:
        return f"postgresql://{servers.PG_USER}@{self.address}:{PG_PORT}/{name}"

    def broker_url(self, number: int = 0) -> str:
        return f"redis://{self.address}:{REDIS_PORT}/{number}"

    def start(self, subnet: str) -> None:
        self._start_postgres(subnet)
        self._start_redis()

    def _start_postgres(self, subnet: str) -> None:
        data = self.directory / "pg"
        sockets = self.directory / "pg-sock"
        user = _postgres_user()
        for path in (self.directory, sockets):
            path.mkdir(exist_ok=True)
            os.chown(path, user.pw_uid, user.pw_gid)
        as_postgres = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                       "--init-groups", "--"]
        _run([*as_postgres, servers.find_pg_binary("initdb"), "-D", str(data),
              *servers.INITDB_ARGS], timeout=120)
        with (data / "pg_hba.conf").open("a") as hba:
            hba.write(f"host all all {subnet} trust\n")
        postgres = [servers.find_pg_binary("postgres"), "-D", str(data), "-p", str(PG_PORT),
                    "-c", f"listen_addresses={self.address}",
                    "-c", f"unix_socket_directories={sockets}", "-c", "fsync=off",
                    "-c", "full_page_writes=off", "-c", "max_connections=300"]
        self._spawn("postgres", [*as_postgres, *postgres])
        wait_for(self._postgres_answers, 60, "PostgreSQL on the db host")

    def _postgres_answers(self) -> bool:
        import psycopg

        self._alive()
        try:
            with psycopg.connect(self.dsn(), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return True
        except psycopg.OperationalError:
            return False

    def _start_redis(self) -> None:
        self._spawn("redis", ["redis-server", "--bind", self.address, "--port",
                              str(REDIS_PORT), "--save", "", "--appendonly", "no",
                              "--protected-mode", "no", "--dir", str(self.directory)])
        wait_for(self._redis_answers, 30, "Redis on the db host")

    def _redis_answers(self) -> bool:
        self._alive()
        try:
            with socket.create_connection((self.address, REDIS_PORT), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def _spawn(self, name: str, args: list[str]) -> None:
        argv = ["ip", "netns", "exec", self.host.netns, *args]
        self.processes.append(Command(argv, self.directory / f"{name}.log"))

    def _alive(self) -> None:
        for process in self.processes:
            if process.proc.poll() is not None:
                raise RuntimeError(f"{process.proc.args[3]} exited:\n{process.output()[-3000:]}")

    def create_database(self, name: str) -> str:
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def flush_redis(self) -> None:
        with socket.create_connection((self.address, REDIS_PORT), timeout=5) as s:
            s.sendall(b"FLUSHALL\r\n")
            s.recv(64)

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.stop(signal.SIGINT, timeout=15)  # postgres: a fast shutdown
        self.processes.clear()


def _postgres_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(servers.PG_USER)
    except KeyError:
        _run(["useradd", "--system", "--no-create-home", servers.PG_USER])
        return pwd.getpwnam(servers.PG_USER)


# ---------------------------------------------------------------- the whole layout


class Machines:
    """The network, the db host's servers, and the processes started on the other hosts:
    `beat`, `worker`, `api`. `stop_processes()` ends the latter (between tests); `close()`
    ends everything, also at interpreter exit and when the start fails."""

    def __init__(self, names: Sequence[str], directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o755)  # the postgres user traverses it
        self.processes: list[Command] = []
        self._spawned = 0
        self.db: Database | None = None
        self.network = Network(["db", *names])
        atexit.register(self.close)
        servers._register(self)  # type: ignore[arg-type]  # closed on SIGTERM too
        self._clocks: Clocks | None = None
        try:
            self.db = Database(self.network.hosts["db"], directory / "db")
            self.db.start(str(self.network.subnet))
        except BaseException:
            self.close()
            raise

    @property
    def hosts(self) -> dict[str, Host]:
        return self.network.hosts

    @property
    def clocks(self) -> Clocks:
        """Skewed clocks, made on first use: MultihostUnavailable without libfaketime or a
        C compiler (only the tests that skew a clock need them)."""
        if self._clocks is None:
            self._clocks = Clocks(self.directory)
        return self._clocks

    # -- processes --------------------------------------------------------------------

    def spawn(self, host: str, label: str, args: list[str], env: dict[str, str],
              skew: int = 0) -> Command:
        """`args` on `host`, with `env` over ours; `skew` seconds off its wall clock (checked
        first)."""
        extra = dict(env)
        if skew:
            self.clocks.check(self.hosts[host], skew)
            extra |= self.clocks.env(skew)
        self._spawned += 1  # never reused: each test's logs stay
        log = self.directory / f"{host}-{label}-{self._spawned}.log"
        command = Command(self.hosts[host].argv(args), log, extra)
        self.processes.append(command)
        return command

    def worker(self, host: str, env: dict[str, str], skew: int = 0,
               concurrency: int = 2) -> Command:
        return self.spawn(host, "worker", [
            sys.executable, "-m", "celery", "-A", "kala_celery", "worker", "-l", "info",
            "-n", "w@%h", "-c", str(concurrency), "--without-gossip", "--without-mingle"],
            env, skew)

    def beat(self, host: str, env: dict[str, str], skew: int = 0) -> Command:
        schedule = self.directory / f"celerybeat-{host}-{self._spawned + 1}"
        return self.spawn(host, "beat", [
            sys.executable, "-m", "celery", "-A", "kala_celery", "beat", "-S", "kala", "-l",
            "info", "--pidfile=", "-s", str(schedule)], env, skew)

    def api(self, host: str, env: dict[str, str]) -> Command:
        return self.spawn(host, "api", [
            sys.executable, "-m", "kala_celery", "api", "-i", self.hosts[host].address,
            "-p", str(API_PORT), "-w", "1", "--insecure"], env)

    def api_url(self, host: str) -> str:
        return f"http://{self.hosts[host].address}:{API_PORT}/api/v1"

    def wait_started(self, timeout: float = 90) -> None:
        """Every process started so far says it is ready (workers `ready.`, beats
        `beat: Starting`, the API answers); fail with its log when one exits instead."""
        for command in self.processes:
            wait_for(lambda c=command: _ready(c), timeout, f"{_label(command)} ready")

    def stop_processes(self) -> None:
        for command in reversed(self.processes):
            command.kill()
        self.processes.clear()

    # -- the end ----------------------------------------------------------------------

    def stop(self) -> None:  # what servers' SIGTERM safety net calls
        self.close()

    def close(self) -> None:
        with contextlib.suppress(ValueError):
            servers._live.remove(self)  # type: ignore[arg-type]
        self.stop_processes()
        if self.db is not None:
            with contextlib.suppress(Exception):
                self.db.stop()
            shutil.rmtree(self.db.directory, ignore_errors=True)  # the logs stay
        self.network.close()
        with contextlib.suppress(ValueError):
            atexit.unregister(self.close)


def _label(command: Command) -> str:
    return command.log_path.stem


def _ready(command: Command) -> bool:
    output = command.output()
    if command.proc.poll() is not None:
        raise RuntimeError(f"{_label(command)} exited ({command.proc.returncode}):\n"
                           f"{output[-4000:]}")
    if "-worker-" in command.log_path.name:
        return " ready." in output
    if "-beat-" in command.log_path.name:
        return "beat: Starting" in output
    return _api_answers(command)


def _api_answers(command: Command) -> bool:
    address = command.proc.args[command.proc.args.index("-i") + 1]
    try:
        return httpx.get(f"http://{address}:{API_PORT}/api/v1/stats/",
                         timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def deadline_passed(since: float, seconds: float) -> bool:
    """For wait_for conditions that include a minimum length (a partition longer than a
    bound): `seconds` have passed on the monotonic clock since `since`."""
    return time.monotonic() - since >= seconds


# ---------------------------------------------------------------- a cluster on the machines


@dataclass(frozen=True)
class JobSpec:
    name: str
    every: int  # seconds between occurrences
    sleep: float = 0  # how long its command runs
    retries: int = 0


class Cluster:
    """One deployment on the machines: a fresh database, Redis emptied, the beats, workers
    and API started on the hosts, jobs created over HTTP whose commands append to
    `record`, faults with their real start and end (history.Fault), and at the end the
    history of what ran (`finish`)."""

    def __init__(self, machines: Machines, env: dict[str, str]) -> None:
        from sqlalchemy import create_engine

        assert machines.db is not None
        self.machines = machines
        machines.db.flush_redis()
        database_url = machines.db.create_database(f"kala_{uuid.uuid4().hex[:10]}")
        self.env = {"KALA_DATABASE_URL": database_url,
                    "KALA_BROKER_URL": machines.db.broker_url(),
                    "KALA_DATA_DIR": str(machines.directory / "data"), **env}
        self.worker_timeout = _seconds(self.env.get("KALA_WORKER_TIMEOUT", "PT30S"))
        self.engine = create_engine(database_url, pool_pre_ping=True)
        self.record = machines.directory / f"record-{uuid.uuid4().hex[:6]}.log"
        self.record.touch()
        self.record.chmod(0o666)
        self.jobs: dict[str, str] = {}  # id -> name
        self.faults: list[history.Fault] = []
        self._open_faults: dict[str, list[tuple[str, float]]] = {}
        self._api_host: str | None = None

    # -- processes ----------------------------------------------------------------------

    def start(self, layout: dict[str, Sequence[str]], skews: dict[str, int] | None = None,
              api: str = "h1", concurrency: int = 2) -> None:
        """Start `layout` ({"h1": ["beat", "worker"], ...}) and the API on `api`; `skews`
        puts a process's clock off: {"h1 beat": 30, "h2 worker": -45}; workers run
        `concurrency` pool processes. Returns when every process is ready."""
        skews = skews or {}
        for host, kinds in layout.items():
            for kind in kinds:
                skew = skews.get(f"{host} {kind}", 0)
                if kind == "beat":
                    self.machines.beat(host, self.env, skew)
                else:
                    self.machines.worker(host, self.env, skew, concurrency)
        self.machines.api(api, self.env)
        self._api_host = api
        self.machines.wait_started()

    def http(self) -> httpx.Client:
        assert self._api_host is not None
        return httpx.Client(base_url=self.machines.api_url(self._api_host), timeout=30)

    # -- jobs ---------------------------------------------------------------------------

    def create(self, specs: Sequence[JobSpec], first_in: float = 3) -> list[str]:
        """The jobs, each repeating from `first_in` seconds from now (a whole second)."""
        start = datetime.fromtimestamp(int(time.time() + first_in), UTC)
        ids = []
        with self.http() as client:
            for spec in specs:
                body = {"name": spec.name, "retries": spec.retries,
                        "command": history.record_command(self.record, spec.sleep),
                        "schedule": f"R/{start:%Y-%m-%dT%H:%M:%SZ}/PT{spec.every}S"}
                response = client.post("/job/", json=body)
                assert response.status_code == 201, response.text
                ids.append(response.json()["id"])
                self.jobs[ids[-1]] = spec.name
        return ids

    def disable_all(self) -> None:
        with self.http() as client:
            for job_id in self.jobs:
                response = client.post(f"/job/disable/{job_id}/")
                assert response.status_code == 204, response.text

    def executions(self) -> list[history.Execution]:
        return history.read_record(self.record)

    def wait_runs(self, count: int, *, after: float, timeout: float) -> None:
        """Every job started at least `count` commands after `after` (real time)."""
        def enough() -> bool:
            seen = Counter(e.job_id for e in self.executions() if e.start >= after)
            return all(seen[job_id] >= count for job_id in self.jobs)

        wait_for(enough, timeout, f"{count} runs of every job after {after:.0f}")

    def wait_host_runs(self, host: str, *, after: float, timeout: float) -> None:
        """`host`'s worker started a command after `after` (real time): it takes part again.
        Which jobs it gets is the broker's choice (whichever worker process is free takes the
        next message), so no particular job is asked of it."""
        def started() -> bool:
            return any(e.start >= after and e.host == f"kcmh-{host}" for e in self.executions())

        wait_for(started, timeout, f"a command started on {host} after {after:.0f}")

    def running_on(self, host: str, jobs: Iterable[str], fresh: float = 1.0) -> list[str]:
        """Run ids of `jobs` whose command started on `host` in the last `fresh` seconds and
        is running (no end line yet)."""
        wanted, now = set(jobs), time.time()
        return [e.run_id for e in self.executions() if e.host == f"kcmh-{host}"
                and e.job_id in wanted and e.end is None and now - e.start < fresh]

    def wait_worker_done(self, host: str, run_ids: Iterable[str], timeout: float) -> None:
        """The worker on `host` has logged its line for each of `run_ids` (`job '<name>'
        (<id>) run <run id>: <what became of it>`): a late outcome was tried."""
        workers = [c for c in self.machines.processes
                   if c.log_path.name.startswith(f"{host}-worker-")]

        def logged() -> bool:
            output = "".join(c.output() for c in workers)
            return all(f"run {run_id}: " in output for run_id in run_ids)

        wait_for(logged, timeout, f"{host}'s worker to log what became of {list(run_ids)}")

    # -- faults -------------------------------------------------------------------------

    def fault(self, kind: str, host: str) -> None:
        """Begin a fault of `host`: history.LINK_DOWN, CUT_POSTGRES or CUT_REDIS."""
        network = self.machines.network
        if kind == history.LINK_DOWN:
            network.link(host, up=False)
        elif kind == history.CUT_POSTGRES:
            network.cut(host, "db", PG_PORT)
        elif kind == history.CUT_REDIS:
            network.cut(host, "db", REDIS_PORT)
        else:
            raise ValueError(kind)
        self._open_faults.setdefault(host, []).append((kind, time.time()))

    def heal(self, host: str) -> None:
        """End every fault of `host`."""
        self.machines.network.link(host, up=True)
        self.machines.network.heal(host)
        now = time.time()
        for kind, began in self._open_faults.pop(host, []):
            self.faults.append(history.Fault(kind, host, began, now))

    def heal_all(self) -> None:
        for host in list(self._open_faults):
            self.heal(host)

    def taken_back(self, run_ids: Sequence[str]) -> bool:
        """The sweep took each of `run_ids` from its worker (its attempt moved on, or it
        ended lost)."""
        from sqlalchemy import bindparam, text

        query = text("SELECT count(*) FROM runs WHERE id IN :ids AND (attempts > 1 OR state "
                     "IN ('lost', 'pending', 'sent'))").bindparams(
                         bindparam("ids", expanding=True))
        with self.engine.connect() as conn:
            return conn.execute(query, {"ids": list(run_ids)}).scalar() == len(run_ids)

    # -- the end ------------------------------------------------------------------------

    def open_runs(self) -> int:
        from sqlalchemy import bindparam, text

        query = text("SELECT count(*) FROM runs WHERE job_id IN :ids AND state IN "
                     "('pending', 'sent', 'started')").bindparams(
                         bindparam("ids", expanding=True))
        with self.engine.connect() as conn:
            return conn.execute(query, {"ids": list(self.jobs)}).scalar()

    def finish(self, drain: float = 60) -> history.History:
        """Heal every fault, disable the jobs, wait (≤ `drain` s) until no run is open and
        every late outcome is kept, and return the history."""
        self.heal_all()
        self.disable_all()
        until = time.time()
        with contextlib.suppress(TimeoutError):
            wait_for(lambda: self.open_runs() == 0, drain, "no run open")
        wait_for(lambda: not self._commands_running(), 30, "the last commands to end")
        with contextlib.suppress(TimeoutError):  # a cut-off worker retries with back-off
            wait_for(lambda: self.read_history(until).late_outcomes_kept().ok, drain,
                     "every late outcome kept")
        return self.read_history(until)

    def read_history(self, until: float) -> history.History:
        runs = history.read_runs(self.engine, self.jobs)
        superseded = history.read_superseded(self.engine, self.jobs)
        return history.History(self.executions(), runs, self.faults, jobs=self.jobs,
                                    worker_timeout=self.worker_timeout, until=until,
                                    superseded=superseded)

    def _commands_running(self) -> bool:
        return any(e.end is None and time.time() - e.start < 60 for e in self.executions())

    def clock_claims(self) -> dict[str, list[float]]:
        """What each process said of its own clock ({"h1 beat": [30.0], ...}): a process
        logs once when its clock is more than a few seconds off the database's (Decision
        27), each pool process of a worker for itself."""
        claims: dict[str, list[float]] = {}
        for command in self.machines.processes:
            host, kind, _n = command.log_path.stem.split("-")
            for found in CLOCK_CLAIM.finditer(command.output()):
                claims.setdefault(f"{host} {kind}", []).append(float(found[1]))
        return claims

    def logs(self, lines: int = 40) -> str:
        """The tails of every process's log, for a failure's message."""
        return "\n".join(f"--- {_label(c)} ---\n" + "\n".join(c.output().splitlines()[-lines:])
                         for c in self.machines.processes)

    def close(self) -> None:
        self.heal_all()
        self.machines.stop_processes()
        self.engine.dispose()


def _seconds(duration: str) -> float:
    from kala_celery.schedule import parse_plain_duration

    return parse_plain_duration(duration).total_seconds()
