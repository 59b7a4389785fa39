"""Serve the API with granian (a Rust HTTP server, WSGI interface): N worker processes (the GIL
makes one process one core), each with threads (`start` holds a request open while it waits)."""

from __future__ import annotations

import ipaddress
import logging
import os

from flask import Flask
from granian import Granian
from granian.constants import Interfaces
from granian.log import LogLevels

# One line per request, as the combined log format has it (gunicorn's default): who, when,
# the request line, the status, the referer and the user agent; then the time it took.
ACCESS_FORMAT = ('%(addr)s - - [%(time)s] "%(method)s %(path)s %(protocol)s" %(status)d '
                 '"%(header{referer})s" "%(header{user-agent})s" %(dt_ms).1fms')


class BindError(ValueError):
    pass


def parse_port(port: str) -> int:
    """Kala's -p accepts "8000" or ":8000"."""
    text = port.lstrip(":")
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise BindError(f"port must be a number from 1 to 65535, not {port!r}")
    return int(text)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_bind(host: str, token: str | None, insecure: bool, *, named: bool = False) -> None:
    """docs/design.md Decision 16: a non-loopback address needs a token (KALA_API_TOKEN, or
    `named`: a named token in the store, Decision 31) unless --insecure."""
    if not is_loopback(host) and not token and not named and not insecure:
        raise BindError(
            f"refusing to serve on {host} without a token (KALA_API_TOKEN, or one made by "
            "`kala-celery token create`); make one or pass --insecure"
        )


def default_workers() -> int:
    """One worker process per CPU this process may run on (at least 1, at most 8)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


class _NoThreadsAdvice(logging.Filter):
    """granian advises fewer request threads than ours on a machine of few cores; ours mostly
    wait (a `start` holds its request while its run is due), so the advice does not apply."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Python threads" not in record.getMessage()


def _in_worker(app: Flask) -> Flask:
    """A server worker's app: the worker process was forked from the one that created the
    app (and checked the schema), so it opens database connections of its own instead of
    sharing the inherited ones."""
    state = app.extensions.get("kala")
    if state is not None:
        state.engine.dispose(close=False)
    return app


def serve_api(
    app: Flask,
    host: str,
    port: int,
    *,
    workers: int | None = None,
    threads: int = 16,
    access_log: bool = False,
) -> None:
    """Run `app` under granian's WSGI interface until stopped (SIGINT or SIGTERM): `workers`
    processes (default: one per CPU), each running requests on up to `threads` threads; one
    access-log line per request on stdout when `access_log` (docs/design.md, "The API's server")."""
    state = app.extensions.get("kala")
    if state is not None:
        state.engine.dispose()  # the master serves nothing: close what creating the app opened
    logging.getLogger("_granian").addFilter(_NoThreadsAdvice())
    server = Granian(
        "kala_celery.wsgi:app",  # a name for the logs: every worker gets `app` itself below
        address=host,
        port=port,
        interface=Interfaces.WSGI,
        workers=workers or default_workers(),
        blocking_threads=threads,
        backpressure=threads,
        websockets=False,
        log_access=access_log,
        log_access_format=ACCESS_FORMAT,
        log_level=LogLevels.info,
        workers_kill_timeout=10,
    )
    server.serve(target_loader=lambda _target: _in_worker(app))
