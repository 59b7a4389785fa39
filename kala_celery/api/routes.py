"""Every API route in one table (Kala's, then NextKala's), and the blueprint built from it."""

from __future__ import annotations

import logging
import time

from flask import Blueprint, Response, request
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm.exc import StaleDataError
from werkzeug.exceptions import HTTPException

from kala_celery.api import admin, auth, http, openapi, preview, views
from kala_celery.api.state import KalaState, kala
from kala_celery.errors import JobError, NotFound
from kala_celery.store.db import DatabaseAway
from kala_celery.store.schema import SchemaError
from kala_celery.wire import WireError, limits

log = logging.getLogger(__name__)

CONFLICT_STATES = frozenset({"40001", "40P01"})  # PostgreSQL: serialization failure, deadlock
RETRY_AFTER = 5  # seconds a client is told to wait while the job store is unavailable

def openapi_document() -> Response:
    """GET <prefix>/openapi.json: the document of this API, made from ROUTES below."""
    return openapi.serve(ROUTES)


# (path under the prefix, methods, view). Every path ends with "/" (Kala's StrictSlash).
ROUTES = [
    # Kala
    ("/job/", ["POST"], views.create_job),
    ("/job/", ["GET"], views.list_jobs),
    ("/job/all/", ["DELETE"], views.delete_all),
    ("/job/<job_id>/", ["GET"], views.get_job),
    ("/job/<job_id>/", ["DELETE"], views.delete_job),
    ("/job/stats/<job_id>/", ["GET"], views.job_stats),
    ("/job/start/<job_id>/", ["POST"], views.start_job),
    ("/job/enable/<job_id>/", ["POST"], views.enable_job),
    ("/job/disable/<job_id>/", ["POST"], views.disable_job),
    ("/stats/", ["GET"], views.app_stats),
    # NextKala
    ("/job/<job_id>/", ["PUT"], views.replace_job),
    ("/job/<job_id>/params/", ["GET"], views.get_params),
    ("/job/<job_id>/params/", ["PUT"], views.put_params),
    ("/job/<job_id>/executions/", ["GET"], views.list_executions),
    ("/job/<job_id>/executions/<run_id>/", ["GET"], views.get_execution),
    ("/job/<job_id>/executions/<run_id>/", ["PUT"], views.put_execution_status),
    # Ours: previews (docs/design.md Decision 24)
    ("/job/<job_id>/next/", ["GET"], preview.job_next),
    ("/schedule/preview/", ["POST"], preview.schedule_preview),
    # kala-celery
    ("/openapi.json", ["GET"], openapi_document),
    # Who may do what (Decisions 31, 32)
    ("/token/", ["GET"], admin.list_tokens),
    ("/token/", ["POST"], admin.create_token),
    ("/token/<name>/", ["DELETE"], admin.revoke_token),
    ("/audit/", ["GET"], admin.list_audit),
]


def build_blueprint(name: str = "kala") -> Blueprint:
    bp = Blueprint(name, __name__)
    outage: dict[str, float | None] = {"since": None}  # logged once per outage, not per request
    for path, methods, view in ROUTES:
        bp.add_url_rule(
            path,
            endpoint=view.__name__,
            view_func=view,
            methods=methods,
            provide_automatic_options=False,
        )

    @bp.before_app_request
    def kala_conventions() -> Response | None:
        state = kala()
        if not http.under(state.url_prefix):
            return None
        try:
            return conventions(state)
        except Exception as exc:  # a bug here must not become the host app's HTML 500
            return unexpected(exc)

    def conventions(state: KalaState) -> Response | None:
        given = auth.bearer()
        principal = auth.identify_fast(state.settings, given)
        if principal is None and not given and auth.known_open(state.settings, state.engine):
            principal = auth.OPEN  # no token anywhere a moment ago: no read per request
        if principal is None and state.settings.api_token and not given:
            return auth.unauthorized()
        if principal is None or http.routing_response() is None:
            ready = schema_ready(state)
            if ready is not None:
                return ready
        if principal is None:  # a named token, or none configured at all: ask the store
            try:
                with state.sessions() as session:
                    principal = auth.identify(state.settings, session, given)
                if principal is auth.OPEN:
                    auth.seen_open(state.engine)
            except SQLAlchemyError as exc:
                return database_down(exc)
            if principal is None:
                return auth.unauthorized()
        refused = http.routing_response()
        if refused is not None:
            return refused
        if not all(limits.path_id_possible(str(v)) for v in (request.view_args or {}).values()):
            return http.empty_response(404)  # no job or run has such an id (Decision 25)
        auth.remember(principal)
        view = (request.endpoint or "").rpartition(".")[2]
        scope = openapi.OPERATIONS[view][openapi.SCOPE_KEY]
        if not principal.may(scope):
            return auth.forbidden(principal, scope, f"{request.method} {request.path}")
        return None

    def schema_ready(state: KalaState) -> Response | None:
        if state.schema_ready:
            return None
        try:
            state.ensure_schema()
        except DatabaseAway as exc:
            return database_down(exc)
        except SchemaError as exc:  # came back behind head: `kala-celery db upgrade`
            log.error("%s", exc)
            response = http.error_response(str(exc), 503)
            response.headers["Retry-After"] = str(RETRY_AFTER)
            return response
        return None

    @bp.after_app_request
    def compress(response: Response) -> Response:
        if not http.under(kala().url_prefix):
            return response
        since = outage["since"]
        if since is not None and response.status_code != 503:
            outage["since"] = None
            log.warning("the job store is back after %.0f s", time.monotonic() - since)
        return http.gzip_if_asked(response)

    @bp.errorhandler(NotFound)
    def not_found(_exc: NotFound) -> Response:
        return http.empty_response(404)  # Kala: unknown id -> 404 with an empty body

    @bp.errorhandler(JobError)
    def refused(exc: JobError) -> Response:
        return http.error_response(str(exc), exc.status)

    @bp.errorhandler(WireError)
    def bad_json(exc: WireError) -> Response:
        return http.error_response(str(exc), 400)

    @bp.errorhandler(http.BodyTooLarge)
    def too_large(_exc: http.BodyTooLarge) -> Response:
        return http.error_response("request body is larger than 1 MiB", 413)

    @bp.errorhandler(ValueError)
    def bad_query(exc: ValueError) -> Response:
        return http.error_response(str(exc), 400)

    @bp.errorhandler(StaleDataError)
    def vanished(_exc: StaleDataError) -> Response:
        """The job was deleted by a concurrent request between reading and writing it: as if
        the delete came first, Kala's empty 404; nothing was stored."""
        return http.empty_response(404)

    @bp.errorhandler(IntegrityError)
    def raced(exc: IntegrityError) -> Response:
        """A concurrent request changed the same jobs first (a link to a job deleted
        meanwhile, the same new id twice): nothing was stored; 409, as for any conflict."""
        log.info("conflicting concurrent change: %s", exc.orig)
        return http.error_response("the job was changed by another request; try again", 409)

    @bp.errorhandler(DataError)
    def refused_value(exc: DataError) -> Response:
        """A value the database refused that the limits (Decision 25) let through: a bug in
        the limits, but the client's value: 400, nothing stored."""
        log.warning("the job store refused a value: %s", exc.orig)
        first = str(exc.orig).splitlines()[0] if exc.orig else type(exc).__name__
        return http.error_response(f"the job store refused a value: {first}", 400)

    @bp.errorhandler(SQLAlchemyError)
    def database_down(exc: SQLAlchemyError) -> Response:
        """The database is away (or refused the statement): 503 with Retry-After, never a
        500 page; nothing was stored."""
        if getattr(getattr(exc, "orig", None), "sqlstate", None) in CONFLICT_STATES:
            log.info("concurrent change refused by the job store: %s", exc.orig)
            return http.error_response("the job was changed by another request; try again", 409)
        if isinstance(exc, DatabaseAway):
            if outage["since"] is None:
                outage["since"] = time.monotonic()
                log.warning("database unavailable (answering 503 until it is back): %s", exc)
            else:
                log.debug("database still unavailable: %s", exc)
        else:
            log.exception("database error")
        response = http.error_response(
            f"the job store is unavailable ({type(exc).__name__}); try again", 503
        )
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response

    @bp.errorhandler(Exception)
    def unexpected(exc: Exception) -> Response:
        """A bug: logged with its traceback, answered as a JSON 500 with an error id."""
        if isinstance(exc, HTTPException):
            return http.http_error(exc)
        return http.unexpected(exc)

    return bp
