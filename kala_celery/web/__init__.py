"""The dashboard: Kala's /webui/, server-rendered (Jinja) with a little JavaScript of our own.

`init_webui` mounts it next to the API: the API's prefix with its trailing `/api/v1` replaced
by `/webui` (`/api/v1` -> `/webui/`, `/kala/api/v1` -> `/kala/webui/`); a prefix that does not
end in `/api/v1` gets `/webui` appended (`/scheduler` -> `/scheduler/webui/`). The API must not
be mounted at `/` itself then: its conventions (token, route misses) cover every path under its
prefix.

Modules: views (the pages' handlers), queries (their reads), charts (SVG drawn on the server),
forms (a form is a Kala JSON body), describe (schedules in words), auth (token login and its
scopes, the sign-in's slowing down, CSRF); the routes are ROUTES below, the scope each needs
SCOPES.
May import everything below it (api's state and previews included); never webapp or ops.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, g, redirect, request, url_for
from sqlalchemy.exc import SQLAlchemyError
from werkzeug.exceptions import BadRequest, NotFound

from kala_celery.api.state import KalaState, kala
from kala_celery.errors import NotFound as JobNotFound
from kala_celery.store.db import DatabaseAway
from kala_celery.web import auth, describe, views

__all__ = ["build_blueprint", "init_webui", "webui_prefix"]

API_TAIL = "/api/v1"
NAME = "kala_webui"

# (path under the dashboard prefix, methods, endpoint, view)
ROUTES = [
    ("/", ["GET"], "jobs", views.jobs_list),
    ("/login", ["GET", "POST"], "login", views.login),
    ("/logout", ["POST"], "logout", views.logout),
    ("/new", ["GET", "POST"], "new", views.new_job),
    ("/preview", ["GET"], "preview", views.preview),
    ("/overview", ["GET"], "overview", views.overview),
    ("/stats", ["GET"], "stats", views.stats),
    ("/job/<job_id>/", ["GET"], "job", views.job_page),
    ("/job/<job_id>/edit", ["GET", "POST"], "edit", views.edit_job),
    ("/job/<job_id>/start", ["POST"], "start", views.start_job),
    ("/job/<job_id>/enable", ["POST"], "enable", views.enable_job),
    ("/job/<job_id>/disable", ["POST"], "disable", views.disable_job),
    ("/job/<job_id>/delete", ["GET", "POST"], "delete", views.delete_job),
    ("/audit", ["GET"], "audit", views.audit),
]
OPEN = frozenset({"login", "static"})  # endpoints that need no token
# The scope each page needs (Decision 31 of docs/design.md), as the API's operations:
# reading is `read`, start/enable/disable `run`, the form and delete `write`, the audit
# trail `admin`.
SCOPES = {"jobs": "read", "logout": "any", "new": "write", "preview": "read", "stats": "read",
          "overview": "read",
          "job": "read", "edit": "write", "start": "run", "enable": "run", "disable": "run",
          "delete": "write", "audit": "admin"}


def webui_prefix(api_prefix: str) -> str:
    """Where the dashboard goes for an API mounted at `api_prefix` (see the module doc)."""
    base = api_prefix.rstrip("/")
    if base.endswith(API_TAIL):
        base = base[: -len(API_TAIL)]
    return f"{base}/webui"


def _page_url(param: str, number: int) -> str:
    """This page's URL with one query argument (a page number) changed."""
    values = {**request.args.to_dict(), param: str(number), **(request.view_args or {})}
    return url_for(request.endpoint or ".jobs", **values)


def build_blueprint() -> Blueprint:
    bp = Blueprint(NAME, __name__, template_folder="templates", static_folder="static")
    for path, methods, endpoint, view in ROUTES:
        bp.add_url_rule(path, endpoint=endpoint, view_func=view, methods=methods)

    @bp.before_request
    def guard() -> Response | None:
        endpoint = (request.endpoint or "").rpartition(".")[2]
        if endpoint == "static":
            return None
        state = kala()
        if not state.schema_ready:  # the job store was away when the app started
            try:
                state.ensure_schema()
            except DatabaseAway as exc:
                return views.database_down(exc)
        with state.sessions() as db:
            principal = auth.signed_in(state.settings, db)
        g.kala_principal = principal or auth.OPEN
        g.kala_signed_in = principal is not None
        if endpoint in OPEN:
            auth.check_csrf()
            return None
        if principal is None:
            if endpoint == "preview":
                return Response('{"error":"sign in first"}', 401, mimetype="application/json")
            return redirect(url_for(".login", next=request.full_path.rstrip("?")))
        auth.check_csrf()
        scope = SCOPES.get(endpoint, "admin")  # a page not in the table: the most guarded
        if not principal.may(scope):
            if endpoint == "preview":
                return Response('{"error":"the token has not got the read scope"}', 403,
                                mimetype="application/json")
            return views.forbidden(principal, scope)
        return None

    @bp.after_request
    def headers(response: Response) -> Response:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        if response.mimetype == "text/html":
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
            )
            response.headers.setdefault("Cache-Control", "no-store")
        return response

    @bp.context_processor
    def helpers() -> dict:
        principal = g.get("kala_principal", auth.OPEN)
        return {
            "csrf_token": auth.csrf_token,
            "when": describe.when,
            "ago": describe.ago,
            "duration": describe.duration,
            "size": describe.size,
            "readable": describe.readable,
            "page_url": _page_url,
            "token_required": principal.name is not None,
            "signed_in": g.get("kala_signed_in", False),
            "can": principal.may,
        }

    bp.register_error_handler(JobNotFound, views.not_found)
    bp.register_error_handler(NotFound, views.not_found)
    bp.register_error_handler(BadRequest, views.bad_request)
    bp.register_error_handler(SQLAlchemyError, views.database_down)
    return bp


def init_webui(app: Flask, state: KalaState, url_prefix: str | None = None) -> str:
    """Register the dashboard on `app` (next to the API by default); returns its prefix."""
    prefix = url_prefix.rstrip("/") if url_prefix is not None else webui_prefix(state.url_prefix)
    auth.configure(app, state.settings)
    app.register_blueprint(build_blueprint(), url_prefix=prefix)
    return prefix


def redirect_root(app: Flask) -> None:
    """The standalone server: `/` shows the dashboard."""

    def root() -> Response:
        return redirect(url_for(f"{NAME}.jobs"))

    app.add_url_rule("/", "kala_root", root, methods=["GET"])
