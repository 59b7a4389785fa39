"""Route handlers: parse with `wire`, act with `jobs`/`history`, answer with `wire`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager

from flask import Response, request, url_for
from sqlalchemy.orm import Session

from kala_celery import wire
from kala_celery.api import auth, listing
from kala_celery.api.http import (
    JSON_TYPE,
    decode_first_mib,
    empty_response,
    error_response,
    json_response,
    read_body,
)
from kala_celery.api.state import kala
from kala_celery.errors import Forbidden
from kala_celery.runs import start
from kala_celery.store import audit, history, jobs, links, totals
from kala_celery.store import version as store_version
from kala_celery.store.clock import now as db_now
from kala_celery.store.tables import JOB_REMOTE, TERMINAL_STATES, Job, Run
from kala_celery.wire import limits

PAGE_LIMIT = 1000


@contextmanager
def _transaction() -> Iterator[Session]:
    with kala().sessions.begin() as session:
        yield session


def _publish(*runs: Run | None) -> bool:
    """Send the runs recorded by this request; False if the broker took none of them (they
    stay pending, and the beat sends them when the broker is back)."""
    ready = [run for run in runs if run is not None]
    return not ready or bool(kala().publish(ready))


def _job_response(session: Session, job: Job) -> Response:
    """Kala's `{"job": {...}}` for one job, written by the list's formatter (wire.job_json)."""
    parents, children = links.links_of(session, [job.id])
    stats = history.recent_stats(session, [job.id], kala().settings.stats_in_job)
    text = wire.job_json(
        wire.job_values(job),
        parent_ids=parents.get(job.id),
        child_ids=children.get(job.id),
        stats=stats.get(job.id),
    )
    return Response(wire.finish_json('{"job":' + text + "}"), status=200, content_type=JSON_TYPE)


# ---------------------------------------------------------------- jobs


def create_job() -> Response:
    data = decode_first_mib(wire.decode_job)
    with _transaction() as session:  # its audit row too (on PostgreSQL often alone)
        job, run = start.create(session, data, kala().rules, db_now(),
                                only_change_by=auth.actor())
    _publish(run)
    return json_response({"id": job.id}, 201)


def _entity_tag(session: Session) -> tuple[str, Response | None]:
    """The store version's entity tag, and 304 when the client's If-None-Match has it
    (docs/design.md Decision 34: nothing a job document shows changed since)."""
    version = str(store_version.read(session))
    tag = f'"{version}"'
    if request.if_none_match.contains_weak(version):
        unchanged = Response(status=304)
        unchanged.headers["ETag"] = tag
        return tag, unchanged
    return tag, None


def list_jobs() -> Response:
    """Every job (Kala has no paging): plain rows written straight to JSON (api/listing.py);
    304 when nothing changed since the client's list, and the last list's document again
    (gzipped once) when nothing changed since this process wrote it."""
    with _transaction() as session:
        tag, unchanged = _entity_tag(session)
        if unchanged is not None:
            return unchanged
        store = str(kala().engine.url)  # one process may serve several stores (tests do)
        kept = listing.kept_document(store, tag)
        if kept is None:
            rows = listing.job_rows(session)
            parents, children = links.links_of(session)
            stats = history.recent_stats(session, None, kala().settings.stats_in_job)
            kept = listing.keep_document(
                store, tag, listing.list_document(rows, parents, children, stats))
    response = Response(kept.body, status=200, content_type=JSON_TYPE)
    if "gzip" in request.headers.get("Accept-Encoding", "").lower():
        response.set_data(kept.gzipped())
        response.headers["Content-Encoding"] = "gzip"
        response.headers.add("Vary", "Accept-Encoding")
    response.headers["ETag"] = tag
    return response


def get_job(job_id: str) -> Response:
    with _transaction() as session:
        tag, unchanged = _entity_tag(session)
        job = jobs.get_job(session, job_id)  # 404 first: an unknown id is never "unchanged"
        if unchanged is not None:
            return unchanged
        response = _job_response(session, job)
    response.headers["ETag"] = tag
    return response


def replace_job(job_id: str) -> Response:
    data = decode_first_mib(wire.decode_job)
    with _transaction() as session:
        before = audit.snapshot(jobs.get_job(session, job_id, lock=True))
        job, run = start.replace(session, job_id, data, kala().rules, db_now())
        audit.job_changed(session, auth.actor(), "replace", before, job)
        session.flush()
        response = _job_response(session, job)
    _publish(run)
    return response


def delete_job(job_id: str) -> Response:
    with _transaction() as session:
        audit.deleted(session, auth.actor(), jobs.delete_job(session, job_id), job_id)
    return empty_response(204)


def delete_all() -> Response:
    with _transaction() as session:
        audit.deleted(session, auth.actor(), jobs.delete_all(session), None)
    return empty_response(204)


def enable_job(job_id: str) -> Response:
    with _transaction() as session:
        before = audit.snapshot(jobs.get_job(session, job_id, lock=True))
        job, run = start.enable(session, job_id, kala().rules, db_now())
        audit.job_changed(session, auth.actor(), "enable", before, job)
    _publish(run)
    return empty_response(204)


def disable_job(job_id: str) -> Response:
    with _transaction() as session:
        before = audit.snapshot(jobs.get_job(session, job_id, lock=True))
        job = jobs.disable_job(session, job_id)
        audit.job_changed(session, auth.actor(), "disable", before, job)
    return empty_response(204)


def start_job(job_id: str) -> Response:
    """docs/design.md Decision 10: wait for the run (up to KALA_START_WAIT), 204; else 202 +
    Location."""
    wait = request.args.get("wait", "true").strip().lower() not in ("false", "0", "no")
    with _transaction() as session:
        run = start.manual(session, job_id, kala().rules, db_now())
        job = jobs.get_job(session, job_id)
        audit.record(session, auth.actor(), "start", job_id=job_id, job_name=job.name,
                     changes={"run": [None, run.id]})
    sent = _publish(run)  # not sent (broker down): recorded, it goes out later; answer now
    if sent and wait and _wait_until_finished(run.id, kala().settings.start_wait):
        return empty_response(204)
    response = json_response({"id": run.id}, 202)
    response.headers["Location"] = url_for(".get_execution", job_id=job_id, run_id=run.id)
    return response


def _wait_until_finished(run_id: str, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    pause = 0.02
    while True:
        with kala().sessions() as session:
            run = session.get(Run, run_id)
        if run is None or run.state in TERMINAL_STATES:  # None: deleted meanwhile
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(pause, left))
        pause = min(pause * 1.5, 0.25)


# ---------------------------------------------------------------- remote body (NextKala)


def _remote_job(session: Session, job_id: str) -> Job:
    job = jobs.get_job(session, job_id, lock=True)
    if job.job_type != JOB_REMOTE:
        raise Forbidden("Job is not a remote job")
    return job


def get_params(job_id: str) -> Response:
    with _transaction() as session:
        body = _remote_job(session, job_id).remote_body
    try:  # NextKala says JSON whatever it is; a body that is not JSON is said to be text
        json.loads(body)
        kind = JSON_TYPE
    except ValueError:
        kind = "text/plain; charset=utf-8"
    return Response(body.encode(), status=200, content_type=kind)


def put_params(job_id: str) -> Response:
    body = read_body()
    try:
        text = body.decode()
    except UnicodeDecodeError:
        return error_response("the body must be UTF-8 text", 400)
    limits.check_text("the body", text)
    with _transaction() as session:
        job = _remote_job(session, job_id)
        before = audit.snapshot(job)
        job.remote_body = text
        audit.job_changed(session, auth.actor(), "params", before, job)
    return empty_response(204)


# ---------------------------------------------------------------- runs


def _page_args() -> tuple[int | None, int]:
    def number(name: str) -> int | None:
        raw = request.args.get(name)
        return None if raw is None else limits.query_int(name, raw)

    limit = number("limit")
    return number("offset"), min(limit if limit else PAGE_LIMIT, PAGE_LIMIT)


def _runs_page(job_id: str, *, finished_only: bool) -> tuple[list[Run], int]:
    offset, limit = _page_args()
    with _transaction() as session:
        jobs.get_job(session, job_id)
        return history.page_runs(
            session, job_id, finished_only=finished_only, offset=offset, limit=limit
        )


def job_stats(job_id: str) -> Response:
    """Kala: finished runs as JobStats, oldest first; null before the first one."""
    runs, total = _runs_page(job_id, finished_only=True)
    response = json_response({"job_stats": [wire.kala_stat(r) for r in runs] or None})
    response.headers["X-Total-Count"] = str(total)
    return response


def list_executions(job_id: str) -> Response:
    """NextKala: every run of this job (not of all jobs), oldest first."""
    runs, total = _runs_page(job_id, finished_only=False)
    response = json_response({"job_stats": [wire.execution(r) for r in runs]})
    response.headers["X-Total-Count"] = str(total)
    return response


def get_execution(job_id: str, run_id: str) -> Response:
    with _transaction() as session:
        run = history.get_run(session, run_id)
        if run.job_id != job_id:
            return empty_response(404)
        return json_response({"job_run": wire.execution(run)})


def put_execution_status(job_id: str, run_id: str) -> Response:
    status = wire.decode_status(read_body())
    if status.lower() not in history.STATUS_STATES:
        names = ", ".join(s.capitalize() for s in history.STATUS_STATES)
        return error_response(f"unknown status {status!r}; use one of {names}", 400)
    with _transaction() as session:
        run = history.get_run(session, run_id)
        if run.job_id != job_id:
            return empty_response(404)
        history.set_status(session, run_id, status, db_now())
        audit.record(session, auth.actor(), "status", job_id=job_id,
                     changes={"run": [None, run_id], "status": [None, status]})
    return empty_response(204)


# ---------------------------------------------------------------- app stats


def app_stats() -> Response:
    with _transaction() as session:
        stats = totals.app_stats(session)
    return json_response(
        wire.app_stats_document(
            active_jobs=stats.active_jobs,
            disabled_jobs=stats.disabled_jobs,
            jobs=stats.jobs,
            error_count=stats.error_count,
            success_count=stats.success_count,
            next_run_at=stats.next_run_at,
            last_attempted_run=stats.last_attempted_run,
            created=db_now(),
        )
    )
