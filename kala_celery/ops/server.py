"""Serve the API with gunicorn: N worker processes (the GIL makes one process one core), each
with threads (`start` holds a request open while it waits)."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from flask import Flask
from gunicorn.app.base import BaseApplication


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


class _Gunicorn(BaseApplication):
    def __init__(self, app: Flask, options: dict[str, Any]) -> None:
        self.application = app
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Flask:
        return self.application


def default_workers() -> int:
    """One worker process per CPU this process may run on (at least 1, at most 8)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 8))


def _post_fork(app: Flask) -> Any:
    """A gunicorn post_fork hook: each worker opens its own database connections; one
    inherited from the master (which created the schema) must not be shared by processes."""

    def hook(_arbiter: Any, _worker: Any) -> None:
        state = app.extensions.get("kala")
        if state is not None:
            state.engine.dispose(close=False)

    return hook


def serve_api(
    app: Flask,
    host: str,
    port: int,
    *,
    workers: int | None = None,
    threads: int = 16,
    access_log: bool = False,
) -> None:
    """Run `app` under gunicorn until stopped: `workers` gthread processes (default: one per
    CPU), `threads` each; one access-log line per request on stdout when `access_log`."""
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    state = app.extensions.get("kala")
    if state is not None:
        state.engine.dispose()  # the master serves nothing: close what creating the app opened
    _Gunicorn(
        app,
        {
            "bind": bind,
            "workers": workers or default_workers(),
            "worker_class": "gthread",
            "threads": threads,
            "accesslog": "-" if access_log else None,
            "post_fork": _post_fork(app),
            "errorlog": "-",
            "loglevel": "info",
            "timeout": 120,
            "control_socket_disable": True,
            "graceful_timeout": 10,
        },
    ).run()
