"""The Flask side put together: `init_kala` mounts the API (api/), the dashboard (web/) and
/metrics and /health on any Flask app; `create_app` is the standalone server's app. It sits
above api/ and web/ so that neither imports the other's way up; `kala_celery.api.init_kala`
and `kala_celery.api.create_app` still name these.
The Decisions cited are those of docs/design.md."""

from __future__ import annotations

import logging

from flask import Flask, Response
from werkzeug.exceptions import HTTPException

from kala_celery import web
from kala_celery.api import http, ops
from kala_celery.api.routes import build_blueprint
from kala_celery.api.state import KalaState, Publisher
from kala_celery.celery_app import make_celery
from kala_celery.config import Settings
from kala_celery.runs.publish import CeleryPublisher
from kala_celery.store.db import DatabaseAway, make_engine, make_sessionmaker

DEFAULT_PREFIX = "/api/v1"
log = logging.getLogger(__name__)


def init_kala(
    app: Flask,
    settings: Settings | None = None,
    *,
    url_prefix: str = DEFAULT_PREFIX,
    publish: Publisher | None = None,
    webui: bool | str = True,
    metrics_path: str | None = None,
    health_path: str | None = None,
) -> KalaState:
    """Connect the job store and register the Kala API blueprint under `url_prefix`, and the
    dashboard next to it (`webui`: True = kala_celery.web.webui_prefix, a str = that prefix,
    False = no dashboard); with `metrics_path` / `health_path`, also Prometheus metrics and a
    health check there (kala_celery/api/ops.py; create_app uses /metrics and /health)."""
    settings = settings or Settings.from_env()
    engine = make_engine(settings.db_url)
    sessions = make_sessionmaker(engine)
    if publish is None:
        publish = CeleryPublisher(make_celery(settings), sessions)
    state = KalaState(
        settings=settings,
        engine=engine,
        sessions=sessions,
        publish=publish,
        url_prefix=url_prefix.rstrip("/") or "/",
    )
    try:
        state.ensure_schema()
    except DatabaseAway as exc:  # serve 503s until it is back (routes.py tries again)
        log.warning("the job store is unavailable (%s); answering 503 until it is back", exc)
    app.extensions["kala"] = state
    app.register_blueprint(build_blueprint(), url_prefix=state.url_prefix)
    if webui is not False:
        web.init_webui(app, state, None if webui is True else webui)
    if metrics_path or health_path:
        ops.mount(app, settings, engine, metrics_path=metrics_path, health_path=health_path)
    return state


def create_app(settings: Settings | None = None, **kwargs: object) -> Flask:
    """The standalone API: Kala's routes under /api/v1, the dashboard, /metrics and /health."""
    app = Flask("kala_celery")
    kwargs = {"metrics_path": "/metrics", "health_path": "/health", **kwargs}
    state = init_kala(app, settings, **kwargs)  # type: ignore[arg-type]
    pages = None
    if kwargs.get("webui", True) is not False:
        web.redirect_root(app)  # `/` shows the dashboard
        webui = kwargs.get("webui", True)
        pages = web.webui_prefix(state.url_prefix) if webui is True else str(webui)
    _json_errors(app, pages)
    return app


def _json_errors(app: Flask, pages: str | None) -> None:
    """Decision 26: the standalone server answers every error as JSON (the dashboard's pages,
    under `pages`, keep their HTML), and a bug as a JSON 500 with an error id."""

    def dashboard() -> bool:
        return pages is not None and http.under(pages)

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException) -> Response | HTTPException:
        return exc if dashboard() else http.http_error(exc)

    @app.errorhandler(Exception)
    def bug(exc: Exception) -> Response:
        if isinstance(exc, HTTPException):
            return http_error(exc)  # type: ignore[return-value]
        return http.unexpected(exc)
