"""`GET /metrics` (Prometheus text, kala_celery/api/metrics.py) and `GET /health` (is the job
store reachable, is the broker), mounted by `init_kala(app, metrics_path=..., health_path=...)`;
create_app mounts them at /metrics and /health.

/health needs no token (it tells only "ok" or "unavailable"); /metrics needs a token with the
`read` scope once a token is configured, like the API's GET routes (Decision 31 of
docs/design.md; Prometheus:
`authorization: {credentials: <token>}`).
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field

from flask import Flask, Response
from kombu import Connection
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry
from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from kala_celery.api import auth, http
from kala_celery.api.metrics import registry_for, render
from kala_celery.config import Settings
from kala_celery.store.db import DatabaseAway, probe_engine

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 3.0  # seconds each check may take; /health answers within about this


@dataclass
class Health:
    settings: Settings
    engine: Engine = field(init=False)
    _threads: ThreadPoolExecutor = field(init=False)

    def __post_init__(self) -> None:
        self.engine = probe_engine(self.settings.db_url, HEALTH_TIMEOUT)
        self._down: set[str] = set()  # parts found unavailable: logged once per outage
        self._threads = ThreadPoolExecutor(8, thread_name_prefix="kala-health")

    def _database(self) -> None:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))

    def _broker(self) -> None:
        options = {"socket_connect_timeout": HEALTH_TIMEOUT, "socket_timeout": HEALTH_TIMEOUT,
                   "max_retries": 1}
        with Connection(self.settings.broker, connect_timeout=HEALTH_TIMEOUT,
                        transport_options=options) as conn:
            conn.ensure_connection(max_retries=1, interval_start=0, timeout=HEALTH_TIMEOUT)
            conn.default_channel  # noqa: B018 - the transport's first real round trip

    def check(self) -> dict[str, str]:
        """{"database": ..., "broker": ...}: "ok" or "unavailable (<error type>)", both checks
        at once, each given HEALTH_TIMEOUT seconds."""
        futures = {name: self._threads.submit(fn)
                   for name, fn in (("database", self._database), ("broker", self._broker))}
        report = {}
        for name, future in futures.items():
            error: str | None = None
            try:
                future.result(timeout=HEALTH_TIMEOUT + 0.5)
            except FutureTimeout:
                error = f"no answer in {HEALTH_TIMEOUT:.0f} s"
            except Exception as exc:
                error = f"{type(exc).__name__}: {exc}"
            report[name] = "ok" if error is None else f"unavailable ({error.split(':')[0]})"
            if error is not None and name not in self._down:
                self._down.add(name)
                log.warning("health: the %s is unavailable: %s", name, error)
            elif error is None and name in self._down:
                self._down.discard(name)
                log.warning("health: the %s is back", name)
        return report


def mount(app: Flask, settings: Settings, engine: Engine, *, metrics_path: str | None,
          health_path: str | None) -> None:
    """Add GET `metrics_path` and GET `health_path` (each when given) to `app`."""
    registry: CollectorRegistry = registry_for(engine, settings.worker_silence)
    health = Health(settings)

    def metrics() -> Response:
        try:
            given = auth.bearer()
            principal = auth.identify_fast(settings, given)
            if principal is None:
                with Session(engine) as session:
                    principal = auth.identify(settings, session, given)
            if principal is None:
                return auth.unauthorized()
            if not principal.may("read"):
                return auth.forbidden(principal, "read", "GET /metrics")
            body = render(registry)
        except (*DatabaseAway, SQLAlchemyError) as exc:
            log.warning("metrics: the job store is unavailable: %s", exc)
            response = Response(f"# the job store is unavailable ({type(exc).__name__})\n",
                                status=503, mimetype="text/plain")
            response.headers["Retry-After"] = "5"
            return response
        return Response(body, status=200, headers={"Content-Type": CONTENT_TYPE_LATEST})

    def healthz() -> Response:
        report = health.check()
        ok = all(value == "ok" for value in report.values())
        response = http.json_response({"status": "ok" if ok else "unavailable", **report},
                                      200 if ok else 503)
        response.headers["Cache-Control"] = "no-store"
        return response

    if metrics_path:
        app.add_url_rule(metrics_path, "kala_metrics", metrics, methods=["GET"])
    if health_path:
        app.add_url_rule(health_path, "kala_health", healthz, methods=["GET"])
        app.extensions["kala_health"] = health
