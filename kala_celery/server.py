"""Serve the API with gunicorn (threads: `start` holds a request open while it waits)."""

from __future__ import annotations

import ipaddress
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


def check_bind(host: str, token: str | None, insecure: bool) -> None:
    """Decision 16: a non-loopback address needs a token unless --insecure."""
    if not is_loopback(host) and not token and not insecure:
        raise BindError(
            f"refusing to serve on {host} without KALA_API_TOKEN; set a token or pass --insecure"
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


def serve_api(app: Flask, host: str, port: int, threads: int = 16) -> None:
    bind = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    _Gunicorn(
        app,
        {
            "bind": bind,
            "workers": 1,
            "worker_class": "gthread",
            "threads": threads,
            "accesslog": "-",
            "errorlog": "-",
            "loglevel": "info",
            "timeout": 120,
            "control_socket_disable": True,
            "graceful_timeout": 10,
        },
    ).run()
