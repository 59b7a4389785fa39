"""Real PostgreSQL and Redis servers for the test suite (no fakes).

Each server runs in its own directory under a caller-given base directory, listens on
127.0.0.1 on a free port, and is stopped by ``.stop()`` or, as a safety net, at interpreter
exit. A missing binary raises :class:`ServerUnavailable` with what to install.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

INSTALL_HINT = (
    "install it with: apt-get install redis-server postgresql "
    "(on Debian/Ubuntu; PostgreSQL's binaries live in /usr/lib/postgresql/<version>/bin)"
)
PG_USER = "postgres"
START_TIMEOUT = 60.0
INITDB_ARGS = [
    *("--auth=trust", "-U", PG_USER, "--encoding=UTF8", "--locale=C"),
    *("--no-sync", "--no-instructions"),
]
PG_STOP_ARGS = ["-m", "immediate", "-w", "-t", "30"]
REDIS_ARGS = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--daemonize", "no"]
_PORT_ATTEMPTS = 5


class ServerUnavailable(RuntimeError):
    """A server binary is missing, so the server cannot be started."""


class ServerStartError(RuntimeError):
    """The binary exists but the server did not start."""


# ---------------------------------------------------------------------------- helpers

_live: list[PostgresServer | RedisServer] = []
_OWNER_PID = os.getpid()  # a forked child must not stop the parent's servers


@atexit.register
def _stop_all() -> None:
    if os.getpid() != _OWNER_PID:
        return
    for server in list(_live):
        with contextlib.suppress(Exception):
            server.stop()


def _on_sigterm(signum: int, frame: object) -> None:
    _stop_all()
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _register(server: PostgresServer | RedisServer) -> None:
    """Track a server for the atexit/SIGTERM safety net (pg_ctl daemonizes postgres, so a
    killed test run would otherwise leave it running)."""
    _live.append(server)
    if (
        os.getpid() == _OWNER_PID
        and threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    ):
        signal.signal(signal.SIGTERM, _on_sigterm)


def make_base_dir(prefix: str = "kala-test-servers-") -> Path:
    """A fresh directory under /tmp that the ``postgres`` user can traverse (mode 0755)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    return path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path))


def find_pg_binary(name: str) -> str:
    """``name`` on PATH, else from the newest /usr/lib/postgresql/*/bin."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version_key)
    if candidates:
        return candidates[-1]
    raise ServerUnavailable(
        f"PostgreSQL's `{name}` was not found on PATH or in "
        f"/usr/lib/postgresql/*/bin; {INSTALL_HINT}"
    )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _pdeathsig() -> None:  # runs in the child before exec: die with the test process
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# ---------------------------------------------------------------------------- PostgreSQL


def _ensure_pg_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", PG_USER], check=True)
        return pwd.getpwnam(PG_USER)


@dataclass
class PostgresServer:
    directory: Path
    data_dir: Path
    socket_dir: Path
    log_file: Path
    port: int
    database: str
    as_root: bool
    host: str = "127.0.0.1"
    user: str = PG_USER
    _stopped: bool = field(default=False, repr=False)
    _watchdog: subprocess.Popen | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        """SQLAlchemy URL of the database created at start."""
        return self.url_for(self.database)

    def url_for(self, name: str) -> str:
        return f"postgresql+psycopg://{self.user}@{self.host}:{self.port}/{name}"

    def dsn(self, name: str | None = None) -> str:
        """libpq/psycopg connection string (no SQLAlchemy driver suffix)."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{name or self.database}"

    def _admin(self):
        import psycopg

        return psycopg.connect(self.dsn("postgres"), autocommit=True, connect_timeout=10)

    def create_database(self, name: str) -> str:
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url_for(name)

    def drop_database(self, name: str) -> None:
        from psycopg import sql

        with self._admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def _run(self, args: list[str], **kw) -> subprocess.CompletedProcess:
        return _pg_run(args, self.as_root, **kw)

    def crash(self) -> None:
        """Stop the server as a crash would (`-m immediate`: no checkpoint, clients cut)."""
        res = self._run(
            [find_pg_binary("pg_ctl"), "stop", "-D", str(self.data_dir), *PG_STOP_ARGS],
            timeout=60,
        )
        if res.returncode:
            raise ServerStartError(f"pg_ctl stop failed: {res.stdout}{res.stderr}")

    def start_again(self) -> None:
        """Start it again on the same port and data (after `crash`); returns once it answers."""
        start = [find_pg_binary("pg_ctl"), "start", "-D", str(self.data_dir), "-l",
                 str(self.log_file), "-w", "-t", "60", "-o", f"-p {self.port}"]
        res = self._run(start, timeout=90)
        if res.returncode:
            raise ServerStartError(f"pg_ctl start failed: {res.stdout}{res.stderr}\n"
                                   f"{_tail(self.log_file)}")
        _wait_for_postgres(self)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
            self._watchdog.stdin.close()
        with contextlib.suppress(Exception):
            self._run(
                [find_pg_binary("pg_ctl"), "stop", "-D", str(self.data_dir), *PG_STOP_ARGS],
                timeout=60,
            )
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _live.remove(self)


def _pg_cmd(args: list[str], as_root: bool) -> list[str]:
    return ["runuser", "-u", PG_USER, "--", *args] if as_root else args


def _pg_run(args: list[str], as_root: bool, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(_pg_cmd(args, as_root), capture_output=True, text=True, **kw)


def _start_watchdog(server: PostgresServer, pg_ctl: str) -> subprocess.Popen:
    """pg_ctl daemonizes postgres, so it would outlive a killed test run (SIGKILL skips atexit).
    This shell waits for EOF on a pipe only we hold, then stops the server and removes its
    directory; its own session keeps it out of process-group kills."""
    stop = _pg_cmd([pg_ctl, "stop", "-D", str(server.data_dir), *PG_STOP_ARGS], server.as_root)
    script = (
        f"read _; {shlex.join(stop)} >/dev/null 2>&1; rm -rf {shlex.quote(str(server.directory))}"
    )
    return subprocess.Popen(
        ["sh", "-c", script],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def _check_traversable(path: Path) -> None:
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & 0o001:
            raise ServerStartError(
                f"{parent} is not traversable by the {PG_USER} user (mode {oct(mode & 0o777)}); "
                "use a base directory under /tmp with 0755 parents (see make_base_dir())"
            )


def start_postgres(
    base_dir: Path, database: str = "kala", *, durable: bool = False
) -> PostgresServer:
    """initdb + pg_ctl start a throwaway cluster under ``base_dir``; create ``database``.
    ``durable``: a commit survives a crash of the server (synchronous_commit on), for tests
    that crash it; otherwise the last commits before a crash may be lost (faster)."""
    initdb = find_pg_binary("initdb")
    pg_ctl = find_pg_binary("pg_ctl")
    as_root = os.geteuid() == 0
    base_dir = Path(base_dir).resolve()
    directory = Path(tempfile.mkdtemp(prefix="postgres-", dir=base_dir))
    data_dir, socket_dir, log_file = directory / "data", directory / "sock", directory / "log"
    socket_dir.mkdir()
    if as_root:
        _check_traversable(base_dir)
        user = _ensure_pg_user()
        directory.chmod(0o755)
        os.chown(directory, user.pw_uid, user.pw_gid)
        os.chown(socket_dir, user.pw_uid, user.pw_gid)

    server = PostgresServer(directory, data_dir, socket_dir, log_file, 0, database, as_root)
    _register(server)
    try:
        res = _pg_run([initdb, "-D", str(data_dir), *INITDB_ARGS], as_root, timeout=120)
        if res.returncode:
            raise ServerStartError(f"initdb failed ({res.returncode}):\n{res.stdout}{res.stderr}")
        with (data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# kala-celery test server\n"
                "listen_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{socket_dir}'\n"
                "fsync = off\nfull_page_writes = off\n"
                f"synchronous_commit = {'on' if durable else 'off'}\n"
                "max_connections = 200\n"
            )
        server._watchdog = _start_watchdog(server, pg_ctl)
        for _ in range(_PORT_ATTEMPTS):
            server.port = free_port()
            start = [pg_ctl, "start", "-D", str(data_dir), "-l", str(log_file), "-w", "-t", "60"]
            res = _pg_run([*start, "-o", f"-p {server.port}"], as_root, timeout=90)
            if res.returncode == 0:
                break
            if "already in use" not in _tail(log_file, 200):
                raise ServerStartError(
                    f"pg_ctl start failed ({res.returncode}):\n{res.stdout}{res.stderr}\n"
                    f"--- {log_file} ---\n{_tail(log_file)}"
                )
        else:
            raise ServerStartError(f"PostgreSQL: no free port after {_PORT_ATTEMPTS} tries")
        _wait_for_postgres(server)
        server.create_database(database)
    except BaseException:
        server.stop()
        raise
    return server


def _wait_for_postgres(server: PostgresServer) -> None:
    import psycopg

    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            with psycopg.connect(server.dsn("postgres"), connect_timeout=2) as conn:
                conn.execute("SELECT 1")
            return
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"PostgreSQL on port {server.port} did not accept connections within "
                    f"{START_TIMEOUT}s: {exc}\n--- log ---\n{_tail(server.log_file)}"
                ) from exc
            time.sleep(0.05)


# ---------------------------------------------------------------------------- Redis


@dataclass
class RedisServer:
    directory: Path
    log_file: Path
    port: int
    process: subprocess.Popen | None = None
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        shutil.rmtree(self.directory, ignore_errors=True)
        with contextlib.suppress(ValueError):
            _live.remove(self)


def redis_ping(port: int) -> bool:
    """A Redis server on 127.0.0.1:`port` answers PING."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _redis_pid(port: int) -> int | None:
    """process_id from INFO server, to be sure the PONG came from our process."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"INFO server\r\n")
            data = b""
            while b"process_id:" not in data or not data.endswith(b"\r\n"):
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    match = re.search(rb"process_id:(\d+)", data)
    return int(match.group(1)) if match else None


def start_redis(base_dir: Path) -> RedisServer:
    """``redis-server`` on 127.0.0.1, no persistence; returns once PING answers."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ServerUnavailable(f"`redis-server` was not found on PATH; {INSTALL_HINT}")
    directory = Path(tempfile.mkdtemp(prefix="redis-", dir=Path(base_dir)))
    log_file = directory / "redis.log"
    server = RedisServer(directory, log_file, 0)
    _register(server)
    try:
        for _ in range(_PORT_ATTEMPTS):
            server.port = free_port()
            with log_file.open("ab") as log:
                server.process = subprocess.Popen(
                    [binary, "--port", str(server.port), "--dir", str(directory), *REDIS_ARGS],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    preexec_fn=_pdeathsig,
                )
            deadline = time.monotonic() + START_TIMEOUT
            while server.process.poll() is None and not redis_ping(server.port):
                if time.monotonic() > deadline:
                    raise ServerStartError(
                        f"redis-server on port {server.port} did not answer PING within "
                        f"{START_TIMEOUT}s\n--- log ---\n{_tail(log_file)}"
                    )
                time.sleep(0.02)
            if server.process.poll() is None:
                if _redis_pid(server.port) == server.process.pid:
                    return server
                # Another server answered on this port (lost the free-port race): retry.
                server.process.kill()
                server.process.wait(timeout=10)
                continue
            if "already in use" not in _tail(log_file, 200):
                raise ServerStartError(
                    f"redis-server exited with {server.process.returncode}\n"
                    f"--- log ---\n{_tail(log_file)}"
                )
        raise ServerStartError(f"redis-server: no free port after {_PORT_ATTEMPTS} tries")
    except BaseException:
        server.stop()
        raise
