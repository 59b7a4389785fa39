"""The dashboard's pages. Reads use kala_celery.web.queries; every change goes through
kala_celery/store/jobs.py (starts: runs/start.py) in one transaction and its runs through the
app's publisher, as the API does."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from flask import (
    Response,
    abort,
    flash,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    url_for,
)
from sqlalchemy.orm import Session

from kala_celery import wire
from kala_celery.api import auth as api_auth
from kala_celery.api.state import KalaState, kala
from kala_celery.errors import INIT_ERROR, Conflict, JobError, NotFound
from kala_celery.runs import start
from kala_celery.store import activity, jobs, links, totals
from kala_celery.store import audit as audit_log
from kala_celery.store.clock import now as db_now
from kala_celery.store.db import DatabaseAway
from kala_celery.store.tables import JOB_CELERY_TASK, JOB_REMOTE, Run
from kala_celery.web import auth, charts, describe, forms, queries

log = logging.getLogger(__name__)
JOBS_PER_PAGE = 50
RUNS_PER_PAGE = 20
TYPE_WORDS = {JOB_REMOTE: "HTTP", JOB_CELERY_TASK: "Celery task"}  # else "Command"


@contextmanager
def _transaction() -> Iterator[Session]:
    with kala().sessions.begin() as session:
        yield session


def _actor() -> audit_log.Actor:
    return audit_log.Actor(token=g.kala_principal.name, address=request.remote_addr, via="webui")


def _publish(state: KalaState, *runs: Run | None) -> None:
    ready = [run for run in runs if run is not None]
    if ready:
        state.publish(ready)


def _page_number(name: str = "page") -> int:
    raw = request.args.get(name, "1")
    if not raw.isascii() or not raw.isdigit() or len(raw) > 7:  # past any real page
        return 1
    return max(int(raw), 1)


# ---------------------------------------------------------------- sign in


def login() -> Response | str | tuple[str, int, dict[str, str]]:
    """The sign-in page; after auth.FAILURES wrong tokens from one address within
    auth.WINDOW, a 429 until the oldest of them is that old (checked before the token)."""
    state = kala()
    with state.sessions.begin() as db:
        if not auth.token_required(state.settings, db):
            return redirect(url_for(".jobs"))
        error, status, headers = "", 200, {}
        if request.method == "POST":
            wait = auth.wait_seconds(db)
            if wait:
                minutes = max(round(wait / 60), 1)
                error = (f"Too many wrong tokens from this address: try again in about "
                         f"{minutes} minute{'s' if minutes != 1 else ''}.")
                status, headers = 429, {"Retry-After": str(wait)}
            elif auth.sign_in(state.settings, db, request.form.get("token", "")):
                target = request.args.get("next", "")
                if not target.startswith(url_for(".jobs")):
                    target = url_for(".jobs")
                return redirect(target)
            else:
                error, status = "That is not a token of this server.", 401
    return render_template("kala_webui/login.html", error=error), status, headers


def logout() -> Response:
    auth.sign_out()
    return redirect(url_for(".login"))


# ---------------------------------------------------------------- jobs list


def jobs_list() -> str:
    state = kala()
    search = request.args.get("q", "").replace("\x00", "").strip()
    shown = request.args.get("state", "all")
    if shown not in queries.FILTERS:
        shown = "all"
    page = _page_number()
    with _transaction() as session:
        result = queries.job_page(
            session,
            search=search,
            state=shown,
            offset=(page - 1) * JOBS_PER_PAGE,
            limit=JOBS_PER_PAGE,
        )
    now = db_now()
    rows = [_list_row(row, result.last_runs.get(row.id), state, now) for row in result.rows]
    pages = max(math.ceil(result.total / JOBS_PER_PAGE), 1)
    return render_template(
        "kala_webui/jobs.html",
        rows=rows,
        total=result.total,
        page=page,
        pages=pages,
        first=(page - 1) * JOBS_PER_PAGE + 1,
        search=search,
        shown=shown,
        filters=queries.FILTERS,
    )


def _list_row(row: Any, last: Any, state: KalaState, now: Any) -> dict[str, Any]:
    zone = state.settings.timezone
    words = describe.schedule_words(
        row.schedule, row.timezone, zone, runs_used=row.runs_used, is_child=row.has_parent,
        now=now, cron=row.cron,
    )
    if last is not None:
        last_state, last_at = last.state, last.finished_at or last.started_at or last.created_at
    else:  # no run left in the history (pruned, or counters seeded): Kala's metadata says
        last_state, last_at = _from_metadata(row)
    return {
        "id": row.id,
        "name": row.name,
        "owner": row.owner,
        "type": TYPE_WORDS.get(row.job_type, "Command"),
        "schedule": words.words,
        "schedule_error": words.error,
        "next": describe.when(row.next_run_at, now=now),
        "next_in": describe.ago(row.next_run_at, now),
        "last_state": last_state,
        "last_when": describe.ago(last_at, now),
        "last_at": describe.when(last_at, now=now),
        "successes": row.success_count,
        "errors": row.error_count,
        "enabled": not row.disabled,
        "done": row.is_done,
    }


def _from_metadata(row: Any) -> tuple[str, Any]:
    success, error = row.last_success, row.last_error
    if success is None and error is None:
        return "", None
    if error is None or (success is not None and success >= error):
        return "success", success
    return "failed", error


# ---------------------------------------------------------------- one job


def job_page(job_id: str) -> str:
    state = kala()
    page = _page_number("runs")
    now = db_now()
    with _transaction() as session:
        job = jobs.get_job(session, job_id)
        parents = links.parent_ids(session, job_id)
        children = links.child_ids(session, job_id)
        runs, total = queries.runs_newest_first(
            session, job_id, offset=(page - 1) * RUNS_PER_PAGE, limit=RUNS_PER_PAGE
        )
        linked = [*parents, *children, *([job.on_failure_job] if job.on_failure_job else [])]
        names = queries.names_of(session, linked)
        occurrences, note = describe.job_occurrences(
            job, state.settings.timezone, is_child=bool(parents), now=now
        )
        words = describe.schedule_words(
            job.schedule, job.timezone, state.settings.timezone, runs_used=job.runs_used,
            is_child=bool(parents), now=now, cron=job.cron,
        )
        in_flight = any(run.state in queries.IN_FLIGHT for run in runs)
        zone = describe.zone_or_utc(job.timezone, state.settings.timezone)
        recent = [charts.StripRun(*row) for row in queries.chart_runs(session, job_id)]
        session.expunge_all()
    return render_template(
        "kala_webui/job.html",
        job=job,
        words=words,
        parents=parents,
        children=children,
        names=names,
        occurrences=[describe.when(t, zone, now=now) for t in occurrences],
        occurrence_note=note,
        strip=charts.run_strip(recent, occurrences, now, zone),
        recent=recent,
        zone=zone,
        seconds_words=charts.seconds_words,
        runs=runs,
        runs_total=total,
        runs_page=page,
        runs_pages=max(math.ceil(total / RUNS_PER_PAGE), 1),
        in_flight=in_flight,
        now=now,
        api_url=f"{state.url_prefix.rstrip('/')}/job/{job.id}/",
    )


# ---------------------------------------------------------------- new / edit


def _form_page(values: dict[str, str], *, job_id: str | None, error: str = "",
               status: int = 200) -> tuple[str, int]:
    shown = describe.preview(
        values.get("schedule", ""), values.get("timezone", ""), kala().settings.timezone,
        now=db_now(), cron=values.get("cron", ""),
    )
    return render_template(
        "kala_webui/form.html",
        values=values,
        preview=shown,
        job_id=job_id,
        error=error,
        fields=forms.FIELDS,
        error_field=forms.field_of(error, values) if error else None,
        field_error=error.removeprefix(f"{INIT_ERROR}: "),
        new_only=forms.NEW_ONLY if job_id is None else (),
        types=forms.TYPES,
    ), status


def _store(job_id: str | None) -> Response | tuple[str, int]:
    """Create (job_id None) or replace a job from the posted form; on a refusal, the form
    again with the domain's message and nothing stored (the transaction rolls back)."""
    state = kala()
    values = request.form.to_dict()
    try:
        data = wire.decode_job(forms.body_from_form(values, new=job_id is None))
        with _transaction() as session:
            if job_id is None:
                before: dict[str, Any] = {}
                job, run = start.create(session, data, state.rules, db_now())
            else:
                before = audit_log.snapshot(jobs.get_job(session, job_id, lock=True))
                job, run = start.replace(session, job_id, data, state.rules, db_now())
            audit_log.job_changed(session, _actor(), "create" if job_id is None else "replace",
                              before, job)
            saved_id = job.id
    except NotFound:
        abort(404)
    except (JobError, wire.WireError, forms.FormError) as exc:
        return _form_page(values, job_id=job_id, error=str(exc), status=400)
    _publish(state, run)
    flash("Job created." if job_id is None else "Job saved.")
    return redirect(url_for(".job", job_id=saved_id))


def new_job() -> Response | tuple[str, int]:
    if request.method == "POST":
        return _store(None)
    return _form_page({"type": request.args.get("type", "0")}, job_id=None)


def _read_only(exc: Conflict, job_id: str) -> Response:
    """A job made from a beat_schedule entry is changed in code (Decision 30 of
    docs/design.md): back to its page, saying so."""
    flash(str(exc), "error")
    return redirect(url_for(".job", job_id=job_id))


def edit_job(job_id: str) -> Response | tuple[str, int]:
    if request.method == "POST":
        return _store(job_id)
    with _transaction() as session:
        job = jobs.get_job(session, job_id)
        try:
            jobs.guard_config(job, "change")
        except Conflict as exc:
            return _read_only(exc, job_id)
        values = forms.values_of(job, links.parent_ids(session, job_id),
                                 links.child_ids(session, job_id))
    return _form_page(values, job_id=job_id)


def preview() -> Response:
    """The form's live preview: the schedule in words and its first occurrences."""
    result = describe.preview(
        request.args.get("schedule", ""),
        request.args.get("timezone", ""),
        kala().settings.timezone,
        now=db_now(),
        cron=request.args.get("cron", ""),
    )
    return jsonify(result)


# ---------------------------------------------------------------- actions


def _act(job_id: str, action: str) -> Response:
    state = kala()
    run = None
    try:
        with _transaction() as session:
            before = audit_log.snapshot(jobs.get_job(session, job_id, lock=True))
            if action == "start":
                run = start.manual(session, job_id, state.rules, db_now())
                job = jobs.get_job(session, job_id)
                audit_log.job_changed(session, _actor(), "start", before, job, run=[None, run.id])
            else:
                if action == "enable":
                    job, run = start.enable(session, job_id, state.rules, db_now())
                else:
                    job = jobs.disable_job(session, job_id)
                audit_log.job_changed(session, _actor(), action, before, job)
    except NotFound:
        abort(404)
    except JobError as exc:
        flash(str(exc), "error")
        return redirect(url_for(".job", job_id=job_id))
    _publish(state, run)
    flash({"start": "Started a run.", "enable": "Enabled.", "disable": "Disabled."}[action])
    return redirect(url_for(".job", job_id=job_id))


def start_job(job_id: str) -> Response:
    return _act(job_id, "start")


def enable_job(job_id: str) -> Response:
    return _act(job_id, "enable")


def disable_job(job_id: str) -> Response:
    return _act(job_id, "disable")


def delete_job(job_id: str) -> Response | str:
    if request.method == "POST":
        try:
            with _transaction() as session:
                deleted = jobs.delete_job(session, job_id)
                audit_log.deleted(session, _actor(), deleted, job_id)
        except NotFound:
            abort(404)
        except Conflict as exc:
            return _read_only(exc, job_id)
        flash(f"Deleted {len(deleted)} job{'s' if len(deleted) != 1 else ''}.")
        return redirect(url_for(".jobs"))
    session = kala().sessions()
    try:  # what the delete would remove, by the delete itself, rolled back
        name = jobs.get_job(session, job_id).name
        doomed = [i for i in jobs.delete_job(session, job_id) if i != job_id]
        session.rollback()
        names = queries.names_of(session, doomed)
    except Conflict as exc:
        return _read_only(exc, job_id)
    finally:
        session.close()
    return render_template("kala_webui/delete.html", job_id=job_id, name=name,
                           children=doomed, names=names)


# ---------------------------------------------------------------- stats


def _overview(session: Session, now: Any) -> dict[str, Any]:
    """What the overview shows (on its page and on Stats): the last 24 h of runs as charts,
    runs in flight, the jobs failing most, the beats and workers."""
    settings = kala().settings
    zone = describe.zone_or_utc(None, settings.timezone)
    window = activity.Window.ending(now)
    seen = activity.activity(session, window)
    hours = seen.hours()
    whole = [sum(h[b] for h in seen.lateness) for b in range(len(activity.LATENESS_BUCKETS) + 1)]
    return {
        "window": window,
        "activity": seen,
        "zone": zone,
        "runs_chart": charts.runs_per_minute(seen, zone, now, hours),
        "late_chart": charts.lateness_per_minute(seen, zone, now, hours),
        "states": [s for s in charts.STATES if any(seen.by_state.get(s, ()))],
        "hours": hours,
        "due_24h": sum(hour.total for hour in hours),
        "failed_due_24h": sum(sum(seen.by_state.get(s, ())) for s in activity.FAILED),
        "p50_24h": activity.histogram_quantile(0.5, whole),
        "p99_24h": activity.histogram_quantile(0.99, whole),
        "in_flight": activity.in_flight(session),
        "failing": activity.failing_most(session, window),
        "heartbeats": activity.heartbeats(session),
        "silence": settings.worker_silence,
        "state_words": charts.STATE_WORDS,
        "seconds_words": charts.seconds_words,
        "share": charts.share,
    }


def overview() -> str:
    now = db_now()
    with _transaction() as session:
        shown = _overview(session, now)
    return render_template("kala_webui/overview.html", now=now, **shown)


def stats() -> str:
    now = db_now()
    with _transaction() as session:
        figures = totals.app_stats(session)
        failures = queries.recent_failures(session, now)
        shown = _overview(session, now)
        session.expunge_all()
    return render_template(
        "kala_webui/stats.html",
        figures=figures,
        failures=failures,
        next_run=describe.when(figures.next_run_at, now=now),
        next_in=describe.ago(figures.next_run_at, now),
        last_attempt=describe.when(figures.last_attempted_run, now=now),
        last_ago=describe.ago(figures.last_attempted_run, now),
        now=now,
        api_stats_url=f"{kala().url_prefix.rstrip('/')}/stats/",
        **shown,
    )


# ---------------------------------------------------------------- audit


AUDIT_ROWS = 200


def audit() -> str:
    """The audit trail's newest rows (Decision 32), of one job with ?job=."""
    job_id = request.args.get("job", "").replace("\x00", "").strip() or None
    with _transaction() as session:
        rows = audit_log.entries(session, job_id=job_id, limit=AUDIT_ROWS)
        session.expunge_all()
    return render_template("kala_webui/audit.html", rows=rows[::-1], job_id=job_id,
                           retention=kala().settings.audit_retention)


def forbidden(principal: api_auth.Principal, scope: str) -> tuple[str, int]:
    message = f"The token {principal.name} has not got the {scope} scope this page needs."
    return render_template("kala_webui/missing.html", message=message), 403


def not_found(_exc: Exception) -> tuple[str, int]:
    return render_template("kala_webui/missing.html"), 404


def bad_request(exc: Any) -> tuple[str, int]:
    return render_template("kala_webui/missing.html", message=exc.description), 400


def database_down(exc: Exception) -> Response:
    """The job store is away (or refused the statement): a 503 page; nothing was stored."""
    if isinstance(exc, DatabaseAway):
        log.warning("database unavailable: %s", exc)
    else:
        log.exception("database error")
    message = f"The job store is unavailable ({type(exc).__name__}). Try again in a moment."
    response = make_response(render_template("kala_webui/missing.html", message=message), 503)
    response.headers["Retry-After"] = "5"
    return response
