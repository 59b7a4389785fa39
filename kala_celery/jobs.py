"""Domain rules on top of the models: create, replace, delete (with Kala's cascade), enable,
disable, start, links and app stats. Used by the API, the CLI and the beat.

Every function works inside the caller's session and leaves the commit to the caller, so one
request is one transaction: a refused request changes nothing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx
from sqlalchemy import case, delete, func, insert, select, update
from sqlalchemy.orm import Session, make_transient_to_detached

from kala_celery import dispatch, limits, schedule, wire
from kala_celery.errors import Conflict, Forbidden, InvalidJob, NotFound
from kala_celery.models import ID_LENGTH, JOB_LOCAL, JOB_REMOTE, Job, JobLink, Run

# Ids that would collide with Kala's routes under /job/ (`/job/all/`, `/job/stats/{id}/`...).
RESERVED_IDS = frozenset({"all", "stats", "start", "enable", "disable"})
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~:@-]*")
_TOKEN_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_QUEUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}")
MAX_DEPTH = 32  # levels of dependent jobs below any job
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_METADATA_FIELDS = (
    "success_count",
    "last_success",
    "error_count",
    "last_error",
    "last_attempted_run",
    "number_of_finished_runs",
)


@dataclass(frozen=True)
class Rules:
    """The server settings that shape job rules."""

    allow_shell: bool = True
    default_timezone: str = "UTC"
    default_owner: str = ""


# ---------------------------------------------------------------- validation


def _check_id(job_id: str) -> None:
    if len(job_id) > ID_LENGTH or not _ID_RE.fullmatch(job_id):
        raise InvalidJob(
            f"id {job_id!r} is not valid: use up to {ID_LENGTH} letters, digits and ._~:@- "
            "starting with a letter or digit"
        )
    if job_id in RESERVED_IDS:
        raise InvalidJob(f"id {job_id!r} is reserved by the API's routes")


def _check_remote(remote: dict[str, Any], templated: bool) -> None:
    url = remote.get("url", "")
    if not url:
        raise InvalidJob("a remote job (type 1) needs remote_properties.url")
    if templated:
        if not url.lower().startswith(("http://", "https://")):
            raise InvalidJob("remote_properties.url must start with http:// or https://")
    else:
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, TypeError, ValueError) as exc:
            raise InvalidJob(f"remote_properties.url is not a valid URL: {exc}") from None
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise InvalidJob("remote_properties.url must be an http:// or https:// URL with a host")
    method = remote.get("method", "")
    if method and method.upper() not in _METHODS:
        raise InvalidJob(f"remote_properties.method {method!r} is not an HTTP method")
    if remote.get("timeout", 0) < 0:
        raise InvalidJob("remote_properties.timeout must not be negative (0 means 30 seconds)")
    for name, values in (remote.get("headers") or {}).items():
        if not _TOKEN_RE.fullmatch(name):
            raise InvalidJob(f"remote_properties.headers: {name!r} is not a valid header name")
        for value in values:
            if any(c in value for c in "\r\n\0"):
                raise InvalidJob(f"remote_properties.headers: value of {name!r} has a line break")
    for code in remote.get("expected_response_codes") or []:
        if not 100 <= code <= 599:
            raise InvalidJob(f"remote_properties.expected_response_codes: {code} is not a status")


def _check_delimiters(delimiters: str) -> None:
    if delimiters and (len(parts := delimiters.split(" ")) != 2 or "" in parts):
        raise InvalidJob(
            'TemplateDelimiters must be two tokens separated by one space, e.g. "{{ }}"'
        )


def _check_extensions(data: dict[str, Any], rules: Rules) -> None:
    try:
        schedule.resolve_zone(data.get("timezone"), rules.default_timezone)
    except schedule.ScheduleError as exc:
        raise InvalidJob(str(exc)) from None
    for key in ("retry_delay", "run_timeout"):
        try:
            if data.get(key):
                limits.check_duration(key, schedule.parse_plain_duration(data[key]))
        except schedule.ScheduleError as exc:
            raise InvalidJob(f"{key}: {exc}") from None
    queue = data.get("queue")
    if queue is not None and not _QUEUE_RE.fullmatch(queue):
        raise InvalidJob(
            "queue must be 1-200 letters, digits and ._:@- starting with one of the first two"
        )


def _validate(data: dict[str, Any], rules: Rules) -> None:
    limits.check_job(data)  # Decision 25
    job_type = data.get("type", JOB_LOCAL)
    if job_type not in (JOB_LOCAL, JOB_REMOTE):
        raise InvalidJob(f"type must be 0 (local command) or 1 (remote HTTP call), not {job_type}")
    if not data.get("name"):
        raise InvalidJob("name is required")
    if job_type == JOB_LOCAL:
        if not data.get("command", "").strip():
            raise InvalidJob("command is required for a local job (type 0)")
        if not rules.allow_shell:
            raise Forbidden("local jobs are disabled")
    else:
        _check_remote(data.get("remote_properties") or {}, bool(data.get("template_delimiters")))
    _check_delimiters(data.get("template_delimiters", ""))
    if data.get("epsilon"):
        try:
            schedule.parse_epsilon(data["epsilon"])
        except schedule.ScheduleError as exc:
            raise InvalidJob(f"epsilon {data['epsilon']!r}: {exc}") from None
    _check_extensions(data, rules)


def parse_job_schedule(job: Job, default_timezone: str) -> schedule.Schedule:
    """The parsed schedule of a scheduled (non-child, non-one-off) job."""
    zone = schedule.resolve_zone(job.timezone, default_timezone)
    return schedule.parse_schedule(job.schedule, zone)


# ---------------------------------------------------------------- links


def parent_ids(session: Session, job_id: str) -> list[str]:
    rows = session.scalars(
        select(JobLink.parent_id).where(JobLink.child_id == job_id).order_by(JobLink.id)
    )
    return list(rows)


def child_ids(session: Session, job_id: str) -> list[str]:
    rows = session.scalars(
        select(JobLink.child_id).where(JobLink.parent_id == job_id).order_by(JobLink.position)
    )
    return list(rows)


def links_of(session: Session, job_ids: Iterable[str] | None = None) -> tuple[dict, dict]:
    """(parents by child, in link order; children by parent, in FIFO position order) for the
    given jobs (all jobs when None)."""
    query = select(JobLink.parent_id, JobLink.child_id, JobLink.position).order_by(JobLink.id)
    if job_ids is not None:
        ids = list(job_ids)
        query = query.where(JobLink.parent_id.in_(ids) | JobLink.child_id.in_(ids))
    parents: dict[str, list[str]] = {}
    ranked: dict[str, list[tuple[int, str]]] = {}
    for parent, child, position in session.execute(query):
        parents.setdefault(child, []).append(parent)
        ranked.setdefault(parent, []).append((position, child))
    children = {parent: [child for _, child in sorted(edges)] for parent, edges in ranked.items()}
    return parents, children


def _unique(ids: list[str]) -> list[str]:
    return list(dict.fromkeys(ids))


def _existing(session: Session, ids: list[str], what: str) -> None:
    found = set(session.scalars(select(Job.id).where(Job.id.in_(ids)))) if ids else set()
    for job_id in ids:
        if job_id not in found:
            raise InvalidJob(f"{what} {job_id!r} does not exist")


def _descendants(session: Session, roots: list[str]) -> set[str]:
    seen: set[str] = set()
    frontier = list(roots)
    while frontier:
        seen.update(frontier)
        nxt = session.scalars(select(JobLink.child_id).where(JobLink.parent_id.in_(frontier)))
        frontier = [c for c in set(nxt) if c not in seen]
    return seen


def _set_links(
    session: Session, job_id: str, parents: list[str] | None, children: list[str] | None
) -> None:
    """Replace the job's parent and/or child edges (None keeps that side), refusing cycles."""
    if parents is not None:
        if job_id in parents:
            raise InvalidJob("a job cannot be its own parent")
        _existing(session, parents, "parent job")
    if children is not None:
        if job_id in children:
            raise InvalidJob("a job cannot depend on itself")
        _existing(session, children, "dependent job")
    new_parents = parents if parents is not None else parent_ids(session, job_id)
    new_children = children if children is not None else child_ids(session, job_id)
    # A cycle exists iff a (new) parent is reachable from the job through its (new) children.
    below = _descendants(session, new_children) if new_children else set()
    if job_id in below or below.intersection(new_parents):
        raise InvalidJob("the dependency would create a cycle")
    if parents is not None:
        session.execute(delete(JobLink).where(JobLink.child_id == job_id))
        for parent in parents:
            _append_child(session, parent, job_id)
    if children is not None:
        session.execute(delete(JobLink).where(JobLink.parent_id == job_id))
        for position, child in enumerate(children):
            session.add(JobLink(parent_id=job_id, child_id=child, position=position))
    session.flush()
    _check_tree_size(session, job_id)


def _check_tree_size(session: Session, job_id: str) -> None:
    """Every run dispatches its whole dependency tree as one chain: keep trees bounded."""
    tops, frontier, seen = [], [job_id], {job_id}
    while frontier:  # the top-most ancestors of the job
        rows = session.execute(
            select(JobLink.child_id, JobLink.parent_id).where(JobLink.child_id.in_(frontier))
        ).all()
        has_parent = {child for child, _ in rows}
        tops += [j for j in frontier if j not in has_parent]
        frontier = [p for _, p in rows if p not in seen]
        seen.update(frontier)
    children = dispatch.children_by_parent(session, tops)
    sizes: dict[str, int] = {}

    def size(job: str, depth: int) -> int:
        if depth > MAX_DEPTH:
            raise InvalidJob(f"dependent jobs may nest at most {MAX_DEPTH} levels deep")
        if job not in sizes:
            sizes[job] = 1 + sum(size(c, depth + 1) for c in children.get(job, []))
        return sizes[job]

    for top in tops:
        if size(top, 0) > dispatch.MAX_TREE_RUNS:
            raise InvalidJob(
                f"job {top!r} would start more than {dispatch.MAX_TREE_RUNS} runs per run "
                "with its dependent jobs"
            )


def _append_child(session: Session, parent: str, child: str) -> None:
    last = session.scalar(select(func.max(JobLink.position)).where(JobLink.parent_id == parent))
    session.add(JobLink(parent_id=parent, child_id=child, position=(last or 0) + 1))
    session.flush()


# ---------------------------------------------------------------- create / replace


def _apply_fields(job: Job, data: dict[str, Any], rules: Rules) -> None:
    remote = data.get("remote_properties") or {}
    job.name = data.get("name", "")
    job.command = data.get("command", "")
    job.owner = data.get("owner") or rules.default_owner
    job.disabled = data.get("disabled", False)
    job.on_failure_job = data.get("on_failure_job", "")
    job.schedule = data.get("schedule", "")
    job.retries = data.get("retries", 0)
    job.epsilon = data.get("epsilon", "")
    job.template_delimiters = data.get("template_delimiters", "")
    job.resume_at_next_scheduled_time = data.get("resume_at_next_scheduled_time", False)
    job.job_type = data.get("type", JOB_LOCAL)
    job.remote_url = remote.get("url", "")
    job.remote_method = remote.get("method", "")
    job.remote_body = remote.get("body", "")
    job.remote_headers = remote.get("headers")
    job.remote_timeout = remote.get("timeout", 0)
    job.remote_expected_codes = remote.get("expected_response_codes")
    job.timezone = data.get("timezone") or None
    job.retry_delay = data.get("retry_delay") or None
    job.retry_backoff = data.get("retry_backoff", False)
    job.run_timeout = data.get("run_timeout") or None
    job.allow_overlap = data.get("allow_overlap", False)
    job.queue = data.get("queue") or None


def _apply_metadata(job: Job, metadata: dict[str, Any] | None) -> None:
    """Kala lets a client seed the counters; absent ones start at zero."""
    for field in _METADATA_FIELDS:
        default = None if field.startswith("last_") else 0
        value = (metadata or {}).get(field, default)
        if isinstance(value, datetime) and wire.is_zero_time(value):
            value = None  # Go clients send the zero time for "never"
        setattr(job, field, value)


def _arm(job: Job, rules: Rules, now: datetime, *, fresh: bool) -> bool:
    """Set next_run_at from the schedule. Returns True when a one-off run is due now.

    fresh: the schedule was just given (create, or replaced with a new one): its start must
    not be in the past. Otherwise the next occurrence at or after now is used (enable).
    """
    job.next_run_at = None
    if job.disabled or job.is_done:
        return False
    if not job.schedule:
        return fresh  # one-off: runs once right away
    try:
        parsed = parse_job_schedule(job, rules.default_timezone)
    except schedule.ScheduleError as exc:
        raise InvalidJob(f"schedule {job.schedule!r}: {exc}") from None
    total = parsed.total_runs
    if total is not None and job.runs_used >= total:
        job.is_done = True
        return False
    if fresh:
        if parsed.start < now:
            raise InvalidJob(f"schedule {job.schedule!r}: the start time is in the past")
        job.next_run_at = parsed.start
    elif parsed.interval is None:
        job.next_run_at = parsed.start  # R0 that never ran: its one run is still owed
    else:
        try:
            job.next_run_at = parsed.occurrence(parsed.index_at_or_after(now))
        except schedule.ScheduleOverflowError:
            job.next_run_at = None  # no occurrence left before year 9999: nothing more to do
            job.is_done = True
    return False


def _validate_schedule(data: dict[str, Any], rules: Rules, is_child: bool) -> None:
    """A child's schedule is stored as given and not used (Decision 9)."""
    if is_child or not data.get("schedule"):
        return
    try:
        zone = schedule.resolve_zone(data.get("timezone"), rules.default_timezone)
        schedule.parse_schedule(data["schedule"], zone)
    except schedule.ScheduleError as exc:
        raise InvalidJob(f"schedule {data['schedule']!r}: {exc}") from None


_JOB_COLUMNS = tuple(column.key for column in Job.__table__.columns)
_INSERT_JOB = insert(Job.__table__)


def _insert(session: Session, job: Job) -> None:
    """INSERT a new job whose every column is set, as one Core statement, and attach it to
    the session as loaded (persistent, nothing pending): what add + flush would leave, without
    the unit of work's bookkeeping (most of a create's database time)."""
    values = {key: getattr(job, key) for key in _JOB_COLUMNS}
    session.connection().execute(_INSERT_JOB, values)  # Core: no ORM statement handling
    make_transient_to_detached(job)
    session.add(job)


def create_job(
    session: Session, data: dict[str, Any], rules: Rules, now: datetime
) -> tuple[Job, Run | None]:
    """Create a job from a decoded body. Returns the job and the run of a one-off job."""
    _validate(data, rules)
    parents = _unique(data.get("parent_jobs") or [])
    _validate_schedule(data, rules, bool(parents))
    job_id = data.get("id") or str(uuid.uuid4())
    if data.get("id"):
        _check_id(job_id)
        if session.get(Job, job_id) is not None:
            raise Conflict(f"a job with id {job_id!r} already exists")
    job = Job(id=job_id, created_at=now, runs_used=0, missed_occurrences=0, is_done=False)
    _apply_fields(job, data, rules)
    _apply_metadata(job, data.get("metadata"))
    children = data.get("dependent_jobs")
    if not (parents or children):
        # No links to check first: arm before the INSERT, so a create is one statement
        # (not an INSERT and then an UPDATE of next_run_at).
        due_now = _arm(job, rules, now, fresh=True)
        _insert(session, job)
        if due_now:
            return job, dispatch.record_tree(
                session, job, trigger="schedule", scheduled_for=now, now=now
            )
        return job, None
    session.add(job)
    session.flush()
    _set_links(session, job_id, parents or None, _unique(children) if children else None)
    return job, _start_if_due(session, job, rules, now, fresh=not parents)


def _start_if_due(
    session: Session, job: Job, rules: Rules, now: datetime, *, fresh: bool
) -> Run | None:
    if not fresh:
        job.next_run_at = None
        return None
    if _arm(job, rules, now, fresh=True):
        return dispatch.record_tree(session, job, trigger="schedule", scheduled_for=now, now=now)
    return None


def replace_job(
    session: Session, job_id: str, data: dict[str, Any], rules: Rules, now: datetime
) -> tuple[Job, Run | None]:
    """PUT: replace every field of an existing job (NextKala). A refused body changes nothing.

    An unchanged schedule keeps the job's progress (runs used, next occurrence); a new one
    starts over and its start must be in the future. Metadata counters are kept unless the
    body gives them; children are kept unless the body lists `dependent_jobs`.
    """
    job = get_job(session, job_id, lock=True)
    _validate(data, rules)
    parents = _unique(data.get("parent_jobs") or [])
    _validate_schedule(data, rules, bool(parents))
    old_schedule = (job.schedule, job.timezone, bool(parent_ids(session, job_id)))
    was_disabled = job.disabled
    _apply_fields(job, data, rules)
    if "metadata" in data:
        _apply_metadata(job, data["metadata"])
    children = data.get("dependent_jobs")
    _set_links(session, job_id, parents, _unique(children) if children is not None else None)
    if parents:
        job.next_run_at = None
        return job, None
    if (job.schedule, job.timezone, False) != old_schedule:
        job.runs_used = 0
        job.is_done = False
        return job, _start_if_due(session, job, rules, now, fresh=True)
    if job.disabled:
        job.next_run_at = None
    elif was_disabled or job.next_run_at is None:
        _arm(job, rules, now, fresh=False)
    return job, None


def rearm(job: Job, rules: Rules, now: datetime) -> None:
    """Give an enabled scheduled job whose next_run_at was cleared outside the API (bulk SQL)
    its next occurrence; a schedule that no longer parses disables the job instead."""
    try:
        _arm(job, rules, now, fresh=False)
    except InvalidJob as exc:
        job.disabled = True
        job.next_run_at = None
        raise schedule.ScheduleError(exc.reason) from None


# ---------------------------------------------------------------- read


def get_job(session: Session, job_id: str, *, lock: bool = False) -> Job:
    """The job (NotFound if none). lock: take its row lock first (FOR UPDATE on PostgreSQL),
    so concurrent changes of one job queue up instead of deadlocking."""
    job = session.get(Job, job_id, with_for_update=lock or None)
    if job is None:
        raise NotFound(job_id)
    return job


# ---------------------------------------------------------------- delete


def delete_job(session: Session, job_id: str) -> list[str]:
    """Delete a job with Kala's cascade, atomically: each child whose every parent is being
    deleted goes too (recursively); children with another parent just lose the link.
    Returns the ids deleted."""
    get_job(session, job_id, lock=True)
    doomed = {job_id}
    frontier = [job_id]
    while frontier:
        children = set(
            session.scalars(select(JobLink.child_id).where(JobLink.parent_id.in_(frontier)))
        )
        frontier = []
        for child in children - doomed:
            parents = set(
                session.scalars(select(JobLink.parent_id).where(JobLink.child_id == child))
            )
            if parents <= doomed:
                doomed.add(child)
                frontier.append(child)
    ids = sorted(doomed)
    session.execute(delete(JobLink).where(JobLink.parent_id.in_(ids) | JobLink.child_id.in_(ids)))
    # Dependent runs of surviving jobs, in chains started by a deleted job's runs, will not run.
    session.execute(
        update(Run)
        .where(
            Run.root_run_id.in_(select(Run.id).where(Run.job_id.in_(ids))),
            Run.state.in_(("pending", "sent")),
        )
        .values(state="skipped", error="the job that started this chain was deleted")
    )
    session.execute(delete(Run).where(Run.job_id.in_(ids)))
    session.execute(delete(Job).where(Job.id.in_(ids)))
    return ids


def delete_all(session: Session) -> None:
    session.execute(delete(JobLink))
    session.execute(delete(Run))
    session.execute(delete(Job))


# ---------------------------------------------------------------- enable / disable / start


def disable_job(session: Session, job_id: str) -> Job:
    job = get_job(session, job_id, lock=True)
    job.disabled = True
    job.next_run_at = None
    return job


def enable_job(
    session: Session, job_id: str, rules: Rules, now: datetime
) -> tuple[Job, Run | None]:
    """Enable: a scheduled job gets its next occurrence at or after now (Decision 8); a one-off
    that never ran runs now."""
    job = get_job(session, job_id, lock=True)
    if not job.disabled:
        return job, None
    job.disabled = False
    if parent_ids(session, job_id):
        return job, None
    if not job.schedule:
        ran = session.scalar(select(func.count()).select_from(Run).where(Run.job_id == job_id))
        if ran or job.is_done:
            return job, None
        return job, dispatch.record_tree(
            session, job, trigger="schedule", scheduled_for=now, now=now
        )
    _arm(job, rules, now, fresh=False)
    return job, None


def start_job(session: Session, job_id: str, rules: Rules, now: datetime) -> Run:
    """A manual start: record a run now. It counts as one of the schedule's runs (Decision 4)."""
    job = get_job(session, job_id, lock=True)
    if job.disabled:
        raise Conflict("the job is disabled; enable it to start it")
    run = dispatch.record_tree(session, job, trigger="manual", scheduled_for=now, now=now)
    session.flush()
    session.refresh(job, ["runs_used"])
    if job.schedule and job.next_run_at is not None:
        total = parse_job_schedule(job, rules.default_timezone).total_runs
        if total is not None and job.runs_used >= total:
            job.next_run_at = None
    return run


# ---------------------------------------------------------------- stats


@dataclass(frozen=True)
class AppStats:
    jobs: int
    disabled_jobs: int
    active_jobs: int
    success_count: int
    error_count: int
    next_run_at: datetime | None
    last_attempted_run: datetime | None


def _sum64(column: Any) -> tuple[Any, Any]:
    """SUM of a 64-bit counter as (high, low) 32-bit halves, so that counters near the limit
    (Decision 25) do not overflow SQLite's 64-bit SUM; the total is high << 32 + low."""
    high = func.coalesce(func.sum(column.op("/")(1 << 32)), 0)
    return high, func.coalesce(func.sum(column.op("%")(1 << 32)), 0)


def app_stats(session: Session) -> AppStats:
    """Kala's /stats/ over all jobs in one aggregate query (docs/kala.md §12)."""
    row = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(case((Job.disabled, 1), else_=0)), 0),
            *_sum64(Job.success_count),
            *_sum64(Job.error_count),
            func.min(Job.next_run_at),
            func.max(Job.last_attempted_run),
        )
    ).one()
    total, disabled, success_high, success_low, error_high, error_low, *times = row
    next_run, last_attempt = times
    return AppStats(
        jobs=total,
        disabled_jobs=int(disabled),
        active_jobs=total - int(disabled),
        success_count=(int(success_high) << 32) + int(success_low),
        error_count=(int(error_high) << 32) + int(error_low),
        next_run_at=next_run,
        last_attempted_run=last_attempt,
    )
