"""Domain rules on top of the models: create, replace, delete (with Kala's cascade), enable,
disable, start, links and app stats. Used by the API, the CLI and the beat.

Every function works inside the caller's session and leaves the commit to the caller, so one
request is one transaction: a refused request changes nothing.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, make_transient_to_detached

from kala_celery import schedule, wire
from kala_celery.config import RemotePolicy
from kala_celery.errors import Conflict, Forbidden, InvalidJob, NotFound
from kala_celery.schedule import cron, occurrences
from kala_celery.store import audit, links
from kala_celery.store.driver import driven, insert_of
from kala_celery.store.tables import (
    JOB_CELERY_TASK,
    JOB_LOCAL,
    JOB_REMOTE,
    PARENTS_ALL,
    SOURCE_APPLY,
    SOURCE_CONFIG,
    Job,
    JobLink,
    Run,
)
from kala_celery.wire import limits
from kala_celery.wire.limits import ID_LENGTH

# Ids that would collide with Kala's routes under /job/ (`/job/all/`, `/job/stats/{id}/`...).
RESERVED_IDS = frozenset({"all", "stats", "start", "enable", "disable"})
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._~:@-]*")
_QUEUE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}")
_TASK_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.:-]{0,199}")
PARENTS_MODES = ("any", PARENTS_ALL)  # "any" is Kala's (the default, stored as NULL)
OVERLAP_POLICIES = ("buffer", "skip", "allow")  # Decision 21
SOURCES = (SOURCE_CONFIG, SOURCE_APPLY)  # Decision 30


_DEFAULT_POLICY = RemotePolicy()


@dataclass(frozen=True)
class Rules:
    """The server settings that shape job rules."""

    allow_shell: bool = True
    default_timezone: str = "UTC"
    default_owner: str = ""
    remote_policy: RemotePolicy = _DEFAULT_POLICY


# ---------------------------------------------------------------- validation


def _valid_id(job_id: str) -> bool:
    return len(job_id) <= ID_LENGTH and bool(_ID_RE.fullmatch(job_id)) and (
        job_id not in RESERVED_IDS
    )


def check_id(job_id: str) -> None:
    """An id that must be kept as given (an imported job's) must be one we can serve."""
    if not _valid_id(job_id):
        raise InvalidJob(
            f"id {job_id!r} is not valid: use up to {ID_LENGTH} letters, digits and ._~:@- "
            "starting with a letter or digit, not one of " + ", ".join(sorted(RESERVED_IDS))
        )


def _client_id(session: Session, job_id: str | None) -> str:
    """The id of a new job: the client's when it is a valid, fresh id (NextKala), else a new
    uuid4 (Kala ignores client ids, so an invalid or reserved one is ignored: Decision 14).
    An id that exists already is a 409: the client means that job (Decision 14)."""
    if job_id and _valid_id(job_id):
        existing = session.get(Job, job_id)
        if existing is not None:
            guard_config(existing, "change")
            raise Conflict(f"a job with id {job_id!r} already exists")
        return job_id
    return str(uuid.uuid4())


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


def _check_overlap(data: dict[str, Any]) -> None:
    """Decision 21: `overlap` is one of the policies; `allow_overlap: true` is "allow"."""
    policy = data.get("overlap")
    if policy is not None and policy not in OVERLAP_POLICIES:
        raise InvalidJob(f'overlap {policy!r} must be "buffer", "skip" or "allow"')
    if data.get("allow_overlap") and policy not in (None, "allow"):
        raise InvalidJob(
            f'allow_overlap: true contradicts overlap {policy!r} (allow_overlap is "allow")'
        )


def overlap_policy(data: dict[str, Any]) -> str | None:
    """The stored policy of a validated body: None (buffer), "skip" or "allow"."""
    policy = data.get("overlap") or ("allow" if data.get("allow_overlap") else None)
    return None if policy == "buffer" else policy


def _check_celery_task(data: dict[str, Any]) -> None:
    """Decision 19: a type 2 job names a task; args and kwargs are JSON (the decoder checked
    their shapes) and nothing of a command applies to it."""
    task = data.get("celery_task") or {}
    name = task.get("name", "")
    if not name:
        raise InvalidJob("a Celery-task job (type 2) needs celery_task.name")
    if not _TASK_NAME_RE.fullmatch(name):
        raise InvalidJob(
            f"celery_task.name {name!r} is not a task name: use up to 200 letters, digits "
            "and _.:- starting with a letter or _"
        )
    if name.startswith("kala."):
        raise InvalidJob(f"celery_task.name {name!r} is one of kala-celery's own tasks")
    for key in ("run_timeout", "template_delimiters"):
        if data.get(key):
            raise InvalidJob(f"{key} does not apply to a Celery-task job (type 2)")


def _check_parents_mode(data: dict[str, Any]) -> None:
    mode = data.get("parents_mode")
    if mode is not None and mode not in PARENTS_MODES:
        raise InvalidJob(f'parents_mode must be "any" (the default) or "all", not {mode!r}')


def _check_source(data: dict[str, Any], managed: bool) -> None:
    """Decision 30: a body may say "apply" (what `kala-celery apply` writes) or nothing;
    "config" is only the beat's, for the entries of a Celery app's beat_schedule."""
    source = data.get("source")
    if not source:
        return
    if source not in SOURCES:
        raise InvalidJob(f'source must be "apply" or left out, not {source!r}')
    if source == SOURCE_CONFIG and not managed:
        raise InvalidJob(
            'source "config" is set only by a kala beat, for the entries of a Celery app\'s '
            "beat_schedule; a client cannot set it"
        )


def guard_config(job: Job, what: str) -> None:
    """Decision 30: a job made from a beat_schedule entry is changed in code, not here (a
    409 naming the entry); enable, disable and start stay allowed."""
    if job.source == SOURCE_CONFIG:
        raise Conflict(
            f"job {job.id!r} comes from the beat_schedule entry {job.name!r} of the Celery "
            f"app: {what} the entry in code and restart the beat (enable, disable and start "
            "work here)"
        )


def _validate(data: dict[str, Any], rules: Rules, *, managed: bool = False) -> None:
    limits.check_job(data)  # Decision 25
    _check_source(data, managed)
    job_type = data.get("type", JOB_LOCAL)
    if job_type not in (JOB_LOCAL, JOB_REMOTE, JOB_CELERY_TASK):
        raise InvalidJob(
            f"type must be 0 (local command), 1 (remote HTTP call) or 2 (Celery task), "
            f"not {job_type}"
        )
    if not data.get("name"):
        raise InvalidJob("name is required")
    _check_parents_mode(data)
    # What Kala itself requires; anything else Kala stores is accepted and, when it cannot
    # work (blank command, bad delimiters, a URL or method no HTTP client takes), each run
    # fails with the reason, as in Kala (Decision 23).
    if job_type == JOB_CELERY_TASK:
        _check_celery_task(data)
    elif data.get("celery_task"):
        raise InvalidJob("celery_task is for Celery-task jobs (type 2)")
    elif job_type == JOB_LOCAL:
        if not data.get("command"):
            raise InvalidJob("command is required for a local job (type 0)")
        if not rules.allow_shell:
            raise Forbidden("local jobs are disabled")
    elif not (data.get("remote_properties") or {}).get("url"):
        raise InvalidJob("a remote job (type 1) needs remote_properties.url")
    else:
        _check_remote_address(data["remote_properties"]["url"], rules.remote_policy)
    _check_extensions(data, rules)
    _check_overlap(data)


def _check_remote_address(url: object, policy: RemotePolicy) -> None:
    """A URL whose host is a literal address the worker would refuse is refused now (a name is
    checked by the worker at each run, since what it resolves to can change)."""
    if not isinstance(url, str):
        return
    try:
        host = urlsplit(url.strip()).hostname
        address = ipaddress.ip_address(host.partition("%")[0]) if host else None
    except ValueError:
        return  # not a literal address (or a URL each run will fail on, as in Kala)
    if address is not None:
        why = policy.refusal(host or "", address)
        if why is not None:
            raise InvalidJob(f"remote_properties.url: {why}")


def parse_job_schedule(job: Job, default_timezone: str) -> occurrences.Parsed:
    """The parsed schedule (ISO or cron) of a scheduled (non-child, non-one-off) job."""
    return occurrences.parse(job.schedule, job.cron, job.timezone, default_timezone)


def is_scheduled(job: Job) -> bool:
    """The job has a schedule or a cron expression (else it is a one-off)."""
    return bool(job.schedule or job.cron)


def schedule_refused(data: dict[str, Any], exc: schedule.ScheduleError) -> InvalidJob:
    """The 400 for a body's unusable `schedule` or `cron` (create, replace and preview)."""
    if data.get("cron"):
        return InvalidJob(str(exc))
    return InvalidJob(f"schedule {data.get('schedule', '')!r}: {exc}")


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
    job.overlap = overlap_policy(data)
    job.allow_overlap = job.overlap == "allow"
    job.queue = data.get("queue") or None
    job.cron = data.get("cron") or None
    task = data.get("celery_task") if job.job_type == JOB_CELERY_TASK else None
    job.celery_task = (
        {"name": task["name"], "args": task.get("args") or [], "kwargs": task.get("kwargs") or {}}
        if task
        else None
    )
    job.parents_mode = PARENTS_ALL if data.get("parents_mode") == PARENTS_ALL else None
    job.source = data.get("source") or None


def _apply_metadata(job: Job, metadata: dict[str, Any] | None) -> None:
    """Kala lets a client seed the counters; absent ones start at zero."""
    for field in wire.METADATA_FIELDS:
        default = None if field.startswith("last_") else 0
        value = (metadata or {}).get(field, default)
        if isinstance(value, datetime) and wire.is_zero_time(value):
            value = None  # Go clients send the zero time for "never"
        setattr(job, field, value)


def _arm(job: Job, rules: Rules, now: datetime, *, fresh: bool,
         parsed: occurrences.Parsed | None = None) -> bool:
    """Set next_run_at from the schedule. Returns True when a one-off run is due now.

    fresh: the schedule was just given (create, or replaced with a new one): its start must
    not be in the past. Otherwise the next occurrence at or after now is used (enable).
    parsed: the job's schedule as the checks already parsed it (else it is parsed here).
    """
    job.next_run_at = None
    if not is_scheduled(job):
        return fresh and not (job.disabled or job.is_done)  # one-off: runs once right away
    try:
        rule = (parsed or parse_job_schedule(job, rules.default_timezone)).rule
    except schedule.ScheduleError as exc:
        raise schedule_refused({"schedule": job.schedule, "cron": job.cron}, exc) from None
    if fresh and isinstance(rule, schedule.Schedule):
        _check_start(job.schedule, rule, now)  # as Kala, also for a job posted disabled/done
    if job.disabled or job.is_done:
        return False
    if isinstance(rule, cron.CronSchedule):
        job.next_run_at = rule.first_at_or_after(now)
        job.is_done = job.next_run_at is None  # no occurrence left before year 9999
        return False
    total = rule.total_runs
    if total is not None and job.runs_used >= total:
        job.is_done = True
        return False
    if fresh:
        job.next_run_at = rule.start
    elif rule.interval is None:
        job.next_run_at = rule.start  # R0 that never ran: its one run is still owed
    else:
        try:
            job.next_run_at = rule.occurrence(rule.index_at_or_after(now))
        except schedule.ScheduleOverflowError:
            job.next_run_at = None  # no occurrence left before year 9999: nothing more to do
            job.is_done = True
    return False


def _validate_schedule(
    data: dict[str, Any], rules: Rules, is_child: bool
) -> occurrences.Parsed | None:
    """A child's schedule and epsilon are stored as given and not used (docs/design.md
    Decision 9); so is a one-off's epsilon (Kala parses epsilon only with a schedule, Decision
    23). A cron is checked (a new key: no Kala body has one), also a child's, but a child's is
    not used. Never both (Decision 18). Returns the schedule parsed (None: nothing to parse)."""
    if data.get("cron") and data.get("schedule"):
        raise InvalidJob("a job has either a schedule or a cron expression, not both")
    if not (data.get("cron") or (data.get("schedule") and not is_child)):
        return None
    try:
        parsed = occurrences.parse(data.get("schedule"), data.get("cron"), data.get("timezone"),
                                   rules.default_timezone)
    except schedule.ScheduleError as exc:
        raise schedule_refused(data, exc) from None
    if data.get("epsilon") and not is_child:
        try:
            schedule.parse_epsilon(data["epsilon"])
        except schedule.ScheduleError as exc:
            raise InvalidJob(f"epsilon {data['epsilon']!r}: {exc}") from None
    return parsed


def _check_start(text: str, parsed: schedule.Schedule, now: datetime) -> None:
    if parsed.start < now:
        raise InvalidJob(f"schedule {text!r}: the start time is in the past")


def validate_timing(data: dict[str, Any], rules: Rules, now: datetime) -> occurrences.Parsed:
    """The checks a create makes of a body's `schedule`, `cron` and `timezone`, in its order
    and with its messages (the preview route, Decision 24); returns the parsed schedule."""
    try:
        schedule.resolve_zone(data.get("timezone"), rules.default_timezone)
    except schedule.ScheduleError as exc:
        raise InvalidJob(str(exc)) from None
    if not (data.get("schedule") or data.get("cron")):
        raise InvalidJob("give a schedule or a cron expression")
    parsed = _validate_schedule(data, rules, is_child=False)
    assert parsed is not None  # it has a schedule or a cron, and is no child
    if isinstance(parsed.rule, schedule.Schedule):
        _check_start(data["schedule"], parsed.rule, now)
    return parsed


_JOB_PARAMS = tuple((column.key, f"p_{column.key}") for column in Job.__table__.columns)
_INSERT_JOB = insert_of(Job.__table__)
_INSERT_JOB_AUDITED = audit.with_row(_INSERT_JOB)  # PostgreSQL's create in one statement


def _insert(session: Session, job: Job) -> None:
    """INSERT a new job whose every column is set, as one Core statement run by the driver
    (store/driver.py), and attach it to the session as loaded (persistent, nothing pending):
    what add + flush would leave, without the unit of work's bookkeeping (most of a
    create's database time)."""
    conn = session.connection()
    driven(_INSERT_JOB, conn.dialect).execute(conn, _values(job))
    _attach(session, job)


def _values(job: Job) -> dict[str, Any]:
    """The job's every column, as the parameters of its INSERT."""
    return {param: getattr(job, key) for key, param in _JOB_PARAMS}


def _attach(session: Session, job: Job) -> None:
    make_transient_to_detached(job)
    session.add(job)


def _insert_audited_alone(session: Session, job: Job, by: audit.Actor) -> bool:
    """On PostgreSQL, INSERT the job and its audit row ("create" by `by`) in one statement,
    committed at once on a connection of its own, in autocommit: one round trip where the
    session's transaction took four (BEGIN, the two INSERTs, COMMIT), and nearly a third of
    a create's time (docs/design.md Decision 36). False on SQLite, which writes nothing
    here. The caller's transaction must hold nothing else to write (`create_job`)."""
    engine = session.get_bind()
    if engine.dialect.name != "postgresql":
        return False
    params = {**_values(job), **audit.created(by, "create", job)}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        driven(_INSERT_JOB_AUDITED, conn.dialect).execute(conn, params)
    _attach(session, job)
    return True


def create_job(
    session: Session, data: dict[str, Any], rules: Rules, now: datetime, *,
    managed: bool = False, only_change_by: audit.Actor | None = None,
) -> tuple[Job, bool]:
    """Create a job from a decoded body. Returns the job, and whether a run of it is due now
    (a one-off job): runs/start.py records it in the same transaction. managed: the caller
    is the beat's beat_schedule sync, which may write source "config" (Decision 30).

    only_change_by: the create is all the caller's transaction changes (`POST /job/`), made
    by this actor; its audit row ("create") is written here too. On PostgreSQL a create
    with nothing else to record (no links, no run due now) is then one statement, committed
    at once outside the session's transaction (which it leaves as it was)."""
    _validate(data, rules, managed=managed)
    parents = links.unique(data.get("parent_jobs") or [])
    parsed = _validate_schedule(data, rules, bool(parents))
    job_id = _client_id(session, data.get("id"))
    job = Job(id=job_id, created_at=now, runs_used=0, missed_occurrences=0, is_done=False,
              overlap_skipped=0)
    _apply_fields(job, data, rules)
    _apply_metadata(job, data.get("metadata"))
    children = data.get("dependent_jobs")
    if not (parents or children):
        # No links to check first: arm before the INSERT, so a create is one statement
        # (not an INSERT and then an UPDATE of next_run_at).
        due_now = _arm(job, rules, now, fresh=True, parsed=parsed)
        if only_change_by is not None and not due_now and _insert_audited_alone(
                session, job, only_change_by):
            return job, False
        _insert(session, job)
    else:
        session.add(job)
        session.flush()
        links.set_links(session, job_id, parents or None,
                        links.unique(children) if children else None)
        due_now = _start_if_due(job, rules, now, fresh=not parents, parsed=parsed)
    if only_change_by is not None:
        audit.job_changed(session, only_change_by, "create", {}, job)
    return job, due_now


def _start_if_due(job: Job, rules: Rules, now: datetime, *, fresh: bool,
                  parsed: occurrences.Parsed | None = None) -> bool:
    if not fresh:
        job.next_run_at = None
        return False
    return _arm(job, rules, now, fresh=True, parsed=parsed)


def replace_job(
    session: Session, job_id: str, data: dict[str, Any], rules: Rules, now: datetime, *,
    managed: bool = False,
) -> tuple[Job, bool]:
    """PUT: replace every field of an existing job (NextKala). A refused body changes nothing.

    An unchanged schedule keeps the job's progress (runs used, next occurrence); a new one
    starts over and its start must be in the future. Metadata counters are kept unless the
    body gives them; children are kept unless the body lists `dependent_jobs`; `source`
    unless the body gives one.
    """
    job = get_job(session, job_id, lock=True)
    if not managed:
        guard_config(job, "change")
    _validate(data, rules, managed=managed)
    parents = links.unique(data.get("parent_jobs") or [])
    _validate_schedule(data, rules, bool(parents))
    old_schedule = (job.schedule, job.cron, job.timezone, bool(links.parent_ids(session, job_id)))
    was_disabled, old_mode, old_source = job.disabled, job.parents_mode, job.source
    _apply_fields(job, data, rules)
    job.source = job.source or old_source  # kept unless the body names one (Decision 30)
    if "metadata" in data:
        _apply_metadata(job, data["metadata"])
    children = data.get("dependent_jobs")
    kept = links.unique(children) if children is not None else None
    links.set_links(session, job_id, parents, kept)
    if job.parents_mode != old_mode:  # Decision 20: a new mode counts parents afresh
        session.execute(
            update(JobLink).where(JobLink.child_id == job_id).values(satisfied=False)
        )
    if parents:
        job.next_run_at = None
        return job, False
    if (job.schedule, job.cron, job.timezone, False) != old_schedule:
        job.runs_used = 0
        job.is_done = False
        return job, _start_if_due(job, rules, now, fresh=True)
    if job.disabled:
        job.next_run_at = None
    elif was_disabled or job.next_run_at is None:
        _arm(job, rules, now, fresh=False)
    return job, False


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


def delete_job(session: Session, job_id: str) -> dict[str, str]:
    """Delete a job with Kala's cascade, atomically: each child whose every parent is being
    deleted goes too (recursively); children with another parent just lose the link.
    Returns the jobs deleted, id -> name, by id. A job made from a beat_schedule entry is
    refused (Decision 30)."""
    guard_config(get_job(session, job_id, lock=True), "remove")
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
    names = dict(session.execute(select(Job.id, Job.name).where(Job.id.in_(ids))).all())
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
    return {i: names.get(i, "") for i in ids}


def delete_all(session: Session) -> dict[str, str]:
    """Every job but those made from a beat_schedule entry (Decision 30), which the code
    owns: they and their runs stay (the beat would only make them again). Returns the jobs
    deleted, id -> name."""
    kept = select(Job.id).where(Job.source == SOURCE_CONFIG)
    gone = select(Job.id, Job.name).where(Job.source.is_distinct_from(SOURCE_CONFIG))
    names = dict(session.execute(gone.order_by(Job.id)).all())
    session.execute(delete(JobLink))
    session.execute(delete(Run).where(Run.job_id.not_in(kept)))
    session.execute(delete(Job).where(Job.source.is_distinct_from(SOURCE_CONFIG)))
    return names


# ---------------------------------------------------------------- enable / disable / start


def disable_job(session: Session, job_id: str) -> Job:
    job = get_job(session, job_id, lock=True)
    job.disabled = True
    job.next_run_at = None
    return job


def enable_job(
    session: Session, job_id: str, rules: Rules, now: datetime
) -> tuple[Job, bool]:
    """Enable: a scheduled job gets its next occurrence at or after now (docs/design.md
    Decision 8); a one-off that never ran is due now (the bool)."""
    job = get_job(session, job_id, lock=True)
    if not job.disabled:
        return job, False
    job.disabled = False
    if links.parent_ids(session, job_id):
        return job, False
    if not is_scheduled(job):
        ran = session.scalar(select(func.count()).select_from(Run).where(Run.job_id == job_id))
        return job, not (ran or job.is_done)
    _arm(job, rules, now, fresh=False)
    return job, False


def startable(session: Session, job_id: str) -> Job:
    """The job of a manual start, locked; a disabled job is refused."""
    job = get_job(session, job_id, lock=True)
    if job.disabled:
        raise Conflict("the job is disabled; enable it to start it")
    return job


def count_manual_start(session: Session, job: Job, rules: Rules) -> None:
    """After a manual start's run is recorded: it counted as one of the schedule's runs
    (docs/design.md Decision 4), so a schedule used up by it has no next occurrence."""
    session.flush()
    session.refresh(job, ["runs_used"])
    if is_scheduled(job) and job.next_run_at is not None:
        total = parse_job_schedule(job, rules.default_timezone).total_runs
        if total is not None and job.runs_used >= total:
            job.next_run_at = None


# ---------------------------------------------------------------- import


def import_job(
    session: Session,
    data: dict[str, Any],
    rules: Rules,
    now: datetime,
    *,
    runs_used: int,
    is_done: bool,
    next_run_at: datetime | None,
) -> Job:
    """Create a job moved from a Kala (`kala-celery import`; docs/design.md, "Importing from
    Kala"): create_job's checks, fields, metadata and parent links, but the job keeps its
    progress instead of starting over. `runs_used`, `is_done` and `next_run_at` (the
    anchored occurrence the importer worked out) are given, so a start already past is not
    refused, and no run is recorded. The id is kept; one already here is a Conflict (call it
    in a savepoint)."""
    _validate(data, rules)
    parents = links.unique(data.get("parent_jobs") or [])
    _validate_schedule(data, rules, bool(parents))
    job_id = data["id"]
    check_id(job_id)
    job = Job(id=job_id, created_at=now, runs_used=runs_used, missed_occurrences=0,
              is_done=is_done, overlap_skipped=0)
    _apply_fields(job, data, rules)
    _apply_metadata(job, data.get("metadata"))
    armed = (job.schedule or job.cron) and not (job.disabled or is_done or parents)
    job.next_run_at = next_run_at if armed else None
    try:  # in the caller's savepoint, whose rollback undoes the refused INSERT
        _insert(session, job)
    except IntegrityError:  # the primary key: a job with this id is here already
        raise Conflict(f"a job with id {job_id!r} already exists") from None
    if parents:
        links.set_links(session, job_id, parents, None)
    return job
