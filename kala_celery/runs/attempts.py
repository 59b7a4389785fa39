"""The life of a run in SQL, shared by the worker that executes it and the beat that sweeps:
claim it, count its attempts, finish it, redeliver it when its message is lost, and take it
from a worker that died. Each state change is a compare-and-set UPDATE, so a duplicate
delivery (or two beats sweeping at once) does nothing, and counters are updated in SQL
(`x = x + 1`), so concurrent runs never lose one.

    pending --publish--> sent --claim--> started --attempt ok--> success
                                                 --attempts used up--> failed
                                                 --delay before next attempt--> sent
                         epsilon window passed before the first attempt --> skipped
    pending/sent whose message is missing (sweep) --> pending, published again
    started by a worker that is silent, or alive but no longer running it (sweep)
        --> a failed attempt: pending again when attempts and epsilon allow, else lost

Every non-terminal run therefore has an owner: a message on its way (bounded by
KALA_REDELIVER_AFTER), or a live worker process that says, in its heartbeat, that it is
running it (bounded by KALA_WORKER_TIMEOUT).

A run of a job that succeeds at once is two short transactions of two statements each, in
SQLAlchemy Core: the claim (`UPDATE runs ... RETURNING`, which also counts the first attempt,
and `UPDATE jobs ... RETURNING` the job) and the finish (the run's final state, then the job's
counters and `is_done` in one UPDATE). On PostgreSQL each is one `WITH` statement outside a
transaction block, run by the driver (store/driver.py): a run is two round trips.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache, lru_cache
from types import SimpleNamespace
from typing import Any, TypeAlias

from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    case,
    exists,
    func,
    insert,
    select,
    true,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from kala_celery import schedule
from kala_celery.config import Settings
from kala_celery.runs import dispatch, heartbeats, parents
from kala_celery.runs.outcome import Outcome, tail
from kala_celery.runs.retry import RetryPolicy
from kala_celery.schedule import occurrences
from kala_celery.store.db import begin_write, engine_of
from kala_celery.store.driver import driven
from kala_celery.store.tables import (
    PARENTS_ALL,
    Job,
    JobLink,
    Run,
    SupersededAttempt,
)

log = logging.getLogger(__name__)

# A job as the runner reads it: the jobs table's columns as attributes (built from the row
# a claim returned; an ORM Job works too).
JobRecord: TypeAlias = Job | SimpleNamespace

# ---------------------------------------------------------------- what a worker knows of a run


@dataclass(frozen=True)
class RunInfo:
    """The columns of a run the worker needs, as read by the statement that claimed it."""

    id: str
    job_id: str
    trigger: str
    scheduled_for: datetime
    parent_run_id: str | None
    started_at: datetime | None
    attempts: int  # counted so far, including an attempt the claim counted
    error: str | None
    worker: str | None


def _run_info(row: Any) -> RunInfo:
    return RunInfo(*row[: len(_RUN_RETURNING)])


def _job_of(row: Any, offset: int = 0) -> JobRecord:
    """The job columns of `row` as attributes (cheaper than a detached ORM Job)."""
    return SimpleNamespace(**dict(zip(_JOB_KEYS, row[offset:], strict=True)))


# ---------------------------------------------------------------- SQL steps
#
# The statements are built once, in Core, with bound parameters: a run executes them with a
# dict of values, so SQLAlchemy neither builds nor hashes a statement per run (a statement's
# cache key is memoized on it), and no ORM unit of work or identity map is involved.

_runs = Run.__table__
_jobs = Job.__table__
_links = JobLink.__table__


def _param(name: str, column: Any) -> Any:
    return bindparam(name, type_=column.type)


_RUN_ID = _param("p_run", _runs.c.id)
_ME = _param("p_me", _runs.c.worker)
_NOW = _param("p_now", _runs.c.attempt_at)
_JOB_ID = _param("p_job", _jobs.c.id)
_ATTEMPT = _param("p_attempt", _runs.c.attempts)
# Fencing (Decision 28): a worker changes a run only while the run is in the attempt it
# claimed; after the sweep took the run back, or another attempt began, it changes nothing.
_OWNED = (
    (_runs.c.id == _RUN_ID)
    & (_runs.c.state == "started")
    & (_runs.c.worker == _ME)
    & (_runs.c.attempts == _ATTEMPT)
)
# A run released for a later attempt is not claimed before that attempt is due (by the
# database's clock: the message's countdown ran on the releasing worker's).
_READY = _param("p_ready", _runs.c.sent_at)
EARLY_TOLERANCE = timedelta(seconds=0.5)
_RUN_RETURNING = (
    _runs.c.id,
    _runs.c.job_id,
    _runs.c.trigger,
    _runs.c.scheduled_for,
    _runs.c.parent_run_id,
    _runs.c.started_at,
    _runs.c.attempts,
    _runs.c.error,
    _runs.c.worker,
)
_JOB_COLUMNS = tuple(_jobs.c)
_JOB_KEYS = tuple(c.key for c in _JOB_COLUMNS)

# started <- pending/sent, counting the attempt about to start.
_CLAIM = (
    update(_runs)
    .where(
        _runs.c.id == _RUN_ID,
        (_runs.c.state == "pending")
        | ((_runs.c.state == "sent") & (_runs.c.sent_at.is_(None) | (_runs.c.sent_at <= _READY))),
    )
    .values(
        state="started",
        worker=_ME,
        started_at=func.coalesce(_runs.c.started_at, _NOW),
        attempt_at=_NOW,
        attempts=_runs.c.attempts + 1,
    )
    .returning(*_RUN_RETURNING)
)
_RUN_NOW = select(_runs.c.state, _runs.c.worker, _runs.c.attempts, _runs.c.sent_at).where(
    _runs.c.id == _RUN_ID)
# started (by a dead process: p_dead) <- started, counting the attempt about to start.
_CLAIM_FROM_THE_DEAD = (
    update(_runs)
    .where(
        _runs.c.id == _RUN_ID,
        _runs.c.state == "started",
        _runs.c.worker == _param("p_dead", _runs.c.worker),
        _runs.c.attempts == _ATTEMPT,
    )
    .values(
        worker=_ME,
        attempt_at=_NOW,
        attempts=_runs.c.attempts + 1,
        error=_param("p_error", _runs.c.error),
    )
    .returning(*_RUN_RETURNING)
)
_FIRST_ATTEMPT_OF_JOB = (  # Kala's last_attempted_run, and the job as it is now
    update(_jobs)
    .where(_jobs.c.id == _JOB_ID)
    .values(last_attempted_run=_NOW)
    .returning(*_JOB_COLUMNS)
)
_JOB = select(*_JOB_COLUMNS).where(_jobs.c.id == _JOB_ID)
_PARENT_STATE = select(_runs.c.state).where(_runs.c.id == _param("p_parent", _runs.c.id))
_NEXT_ATTEMPT = (
    update(_runs)
    .where(_OWNED)
    .values(attempts=_runs.c.attempts + 1, attempt_at=_NOW)
    .returning(_runs.c.attempts)
)
_FAILED_ATTEMPT = (
    update(_jobs)
    .where(_jobs.c.id == _JOB_ID)
    .values(error_count=_jobs.c.error_count + 1, last_error=_NOW)
)
_OUTPUT = _param("p_output", _runs.c.output)
_ERROR = _param("p_error", _runs.c.error)
_RELEASE = (  # its next attempt's message falls due at p_due
    update(_runs)
    .where(_OWNED)
    .values(
        state="sent", sent_at=_param("p_due", _runs.c.sent_at), output=_OUTPUT, error=_ERROR
    )
)
_GIVE_BACK = update(_runs).where(_OWNED).values(state="pending", error=_ERROR)
_END_VALUES = {
    "state": _param("p_state", _runs.c.state),
    "finished_at": _NOW,
    "duration_ns": _param("p_duration", _runs.c.duration_ns),
    "output": _OUTPUT,
    "error": _ERROR,
    "exit_code": _param("p_exit", _runs.c.exit_code),
    "http_status": _param("p_http", _runs.c.http_status),
}
_END = update(_runs).where(_OWNED).values(**_END_VALUES)
_END_UNTAKEN = (  # a run no worker took (Decision 19)
    update(_runs).where(_runs.c.id == _RUN_ID, _runs.c.state == "sent").values(**_END_VALUES)
)
_END_UNCOUNTED = (  # the attempt the claim counted was not made
    update(_runs)
    .where(_OWNED)
    .values(**_END_VALUES, attempts=_param("p_attempts", _runs.c.attempts))
)
_ON_FAILURE_TARGET = select(_jobs.c.disabled).where(_jobs.c.id == _JOB_ID)
_TOTAL = _param("p_total", _jobs.c.runs_used)
_ABANDONED = (
    select(*_RUN_RETURNING, _runs.c.state, *_JOB_COLUMNS)
    .join_from(_runs, _jobs, _jobs.c.id == _runs.c.job_id)
    .where(_runs.c.id == _RUN_ID)
)


def _counter_values(state: str, failed_attempt: bool, done: str) -> dict[str, Any]:
    """The job's columns at the end of a run: Kala's counters (in SQL) and `is_done` (decided
    in SQL on the row it updates, docs/design.md Decision 8). `done`: "yes" (a one-off, no
    schedule), "child" (a schedule that repeats forever: done only as a child, whose schedule
    is not used), "total" (also done when p_total runs are used)."""
    values: dict[str, Any] = {}
    if done == "yes":
        values["is_done"] = True
    else:
        finished = exists().where(_links.c.child_id == _jobs.c.id)
        if done == "total":
            finished = finished | (_jobs.c.runs_used >= _TOTAL)
        values["is_done"] = case(
            (_jobs.c.next_run_at.is_(None) & finished, True), else_=_jobs.c.is_done
        )
    if failed_attempt:
        values.update(error_count=_jobs.c.error_count + 1, last_error=_NOW)
    if state == "success":
        values.update(success_count=_jobs.c.success_count + 1, last_success=_NOW)
    if state in ("success", "failed", "lost"):
        values["number_of_finished_runs"] = _jobs.c.number_of_finished_runs + 1
    return values


# One table per SELECT: SQLAlchemy writes RETURNING's columns unqualified.
_ALL_MODE = select(_jobs.c.id).where(
    _jobs.c.id == _links.c.child_id, _jobs.c.parents_mode == PARENTS_ALL
)
# A child of the job waits for all its parents (Decision 20): its success marks a link.
_CHILD_WAITS = exists().where(
    _links.c.parent_id == _JOB_ID, _links.c.child_id.in_(_ALL_MODE.scalar_subquery())
)


@cache
def _counters(state: str, failed_attempt: bool, done: str) -> Any:
    """The job UPDATE at the end of a run (_counter_values); after a success it returns
    whether a child waits for all its parents."""
    counted = update(_jobs).where(_jobs.c.id == _JOB_ID).values(
        **_counter_values(state, failed_attempt, done))
    if state == "success":
        counted = counted.returning(_CHILD_WAITS.label("waits"))
    return counted


# ---------------------------------------------------------------- one statement a step
#
# On PostgreSQL a claim and the usual end of a run are each ONE statement run outside a
# transaction block (data-modifying CTEs: the run and its job change together, atomically),
# so each is one round trip instead of four (BEGIN, two statements, COMMIT). What these do
# not cover (a claim that missed, an end that moves more than the run and its job) takes
# the transaction below them, which decides exactly as before.

_claimed = _CLAIM.cte("claimed")
_parent = _runs.alias("parent")
_PARENT_OF_CLAIMED = (
    select(_parent.c.state).where(_parent.c.id == _claimed.c.parent_run_id).scalar_subquery()
)
_first_attempt = (  # Kala's last_attempted_run: the claim's first attempt, unless a parent failed
    update(_jobs)
    .where(
        _jobs.c.id == _claimed.c.job_id,
        _claimed.c.attempts == 1,
        (_claimed.c.trigger != "parent")
        | (func.coalesce(_PARENT_OF_CLAIMED, "success") == "success"),
    )
    .values(last_attempted_run=_NOW)
    .returning(_jobs.c.last_attempted_run)
    .cte("first_attempt")
)
# The job once: as the statement's snapshot has it, with the last_attempted_run the claim
# set (a row of 50 columns instead of twice the job's: psycopg describes every column of
# every result, and a statement under 4 KiB is one it converts once).
_job_now = _jobs.alias("job_now")
CLAIM_IN_ONE = select(
    *(_claimed.c[c.key] for c in _RUN_RETURNING),
    _PARENT_OF_CLAIMED,
    *(func.coalesce(_first_attempt.c.last_attempted_run, _job_now.c[k])
      if k == "last_attempted_run" else _job_now.c[k] for k in _JOB_KEYS),
).select_from(
    _claimed.outerjoin(_job_now, _job_now.c.id == _claimed.c.job_id)
    .outerjoin(_first_attempt, true())
)


def _claim_in_one(engine: Engine, params: dict[str, Any]
                  ) -> tuple[RunInfo, JobRecord, str | None] | bool | None:
    """The claim of a queued run in one statement; False when it missed (the run is not
    pending or sent: the transaction's claim looks further)."""
    row = driven(CLAIM_IN_ONE, engine.dialect).first(engine, params)  # alone, autocommit
    if row is None:
        return False
    run = _run_info(row)
    after = len(_RUN_RETURNING) + 1
    if row[after] is None:
        return None  # its job is gone (deleted with its runs meanwhile)
    return run, _job_of(row, after), row[after - 1] if run.trigger == "parent" else None


@cache
def end_statement(state: str, failed_attempt: bool, done: str, uncounted: bool) -> Any:
    """The run's end and its job's counters in one statement; a success ends nothing here
    when a child waits for all its parents (the transaction marks its link too)."""
    end = _END_UNCOUNTED if uncounted else _END
    if state == "success":
        end = end.where(~_CHILD_WAITS)
    ended = end.returning(_runs.c.id).cte("ended")
    counted = (
        update(_jobs)
        .where(_jobs.c.id == _JOB_ID, exists(select(ended.c.id)))
        .values(**_counter_values(state, failed_attempt, done))
        .cte("counted")
    )
    return select(ended.c.id).add_cte(counted)


@dataclass(frozen=True)
class NotYet:
    """The run's next attempt falls due in `seconds` (by the database's clock)."""

    seconds: float


def claim(
    engine: Engine, run_id: str, me: str, hostname: str, now: datetime
) -> tuple[RunInfo, JobRecord, str | None] | NotYet | None:
    """started <- pending/sent (or <- started by a dead process on this host), counting the
    attempt about to start in the same UPDATE. Returns the run, its job (with
    last_attempted_run set by a first attempt) and, for a dependent run, its parent's state;
    NotYet for a run released for a later attempt that is not due (its message came early:
    its countdown ran on another machine's clock)."""
    params = {"p_run": run_id, "p_me": me, "p_now": now, "p_ready": now + EARLY_TOLERANCE}
    if engine.dialect.name == "postgresql":
        claimed = _claim_in_one(engine, params)
        if claimed is not False:
            return claimed  # type: ignore[return-value]
    with begin_write(engine) as conn:
        row = driven(_CLAIM, conn.dialect).first(conn, params)
        if row is None:
            row = _claim_from_the_dead(conn, run_id, me, hostname, now)
            if row is None or isinstance(row, NotYet):
                return row
        run = _run_info(row)
        parent_state = None
        if run.trigger == "parent":
            parent_state = conn.scalar(_PARENT_STATE, {"p_parent": run.parent_run_id})
        # A dependent whose parent did not succeed is not run: Kala never touches such a
        # child, so neither does its claim (docs/kala.md §10).
        if run.attempts == 1 and parent_state in (None, "success"):  # the first attempt
            job_row = driven(_FIRST_ATTEMPT_OF_JOB, conn.dialect).first(
                conn, {"p_job": run.job_id, "p_now": now})
        else:
            job_row = driven(_JOB, conn.dialect).first(conn, {"p_job": run.job_id})
        if job_row is None:
            return None  # deleted with its runs: nothing left to update
        return run, _job_of(job_row), parent_state


def _claim_from_the_dead(
    conn: Connection, run_id: str, me: str, hostname: str, now: datetime
) -> Any:
    """The queued-run claim missed: the run is unknown, past `sent`, or started by a worker
    process on this host that died (its attempt failed; this delivery makes the next)."""
    current = conn.execute(_RUN_NOW, {"p_run": run_id}).first()
    if current is None:
        return None  # its job was deleted
    state, worker, attempts, due = current
    if state == "sent" and due is not None and due > now + EARLY_TOLERANCE:
        return NotYet((due - now).total_seconds())
    if state != "started" or not heartbeats.died_here(worker, hostname):
        log.info("run %s is %s already; delivery ignored", run_id, state)
        return None
    error = f"worker {worker} died during attempt {attempts}"
    params = {"p_run": run_id, "p_dead": worker, "p_me": me, "p_now": now, "p_error": error,
              "p_attempt": attempts}
    row = conn.execute(_CLAIM_FROM_THE_DEAD, params).first()
    if row is None:
        return None  # another delivery claimed it first
    log.warning("run %s: %s", run_id, error)
    conn.execute(_FAILED_ATTEMPT, {"p_job": row.job_id, "p_now": now})
    return row


def next_attempt(engine: Engine, run_id: str, job_id: str, me: str, attempt: int,
                 now: datetime) -> int | None:
    """Count the failed attempt `attempt` and the next one in one transaction; None when the
    run is no longer in that attempt of ours (the sweep took it back)."""
    params = {"p_run": run_id, "p_me": me, "p_attempt": attempt, "p_now": now}
    with begin_write(engine) as conn:
        number = conn.scalar(_NEXT_ATTEMPT, params)
        if number is not None:
            conn.execute(_FAILED_ATTEMPT, {"p_job": job_id, "p_now": now})
        return number


def release(
    engine: Engine,
    run_id: str,
    job_id: str,
    me: str,
    attempt: int,
    outcome: Outcome,
    now: datetime,
    wait: float,
) -> bool:
    """started -> sent while waiting `wait` seconds for the next attempt (the run's message
    falls due then); the failed attempt `attempt` is counted."""
    params = {
        "p_run": run_id,
        "p_me": me,
        "p_attempt": attempt,
        "p_output": tail(outcome.output),
        "p_error": outcome.error,
        "p_due": now + timedelta(seconds=wait),
    }
    with begin_write(engine) as conn:
        released = conn.execute(_RELEASE, params).rowcount == 1
        if released:
            conn.execute(_FAILED_ATTEMPT, {"p_job": job_id, "p_now": now})
        return released


def supersede(engine: Engine, run_id: str, attempt: int, me: str, state: str,
              outcome: Outcome, now: datetime) -> bool:
    """Keep the outcome of attempt `attempt` that came after its run had moved on (the sweep
    took it back while this worker was cut off): on the attempt's own row, never on the run
    (Decision 28). False when the run is gone (its job was deleted)."""
    with begin_write(engine) as conn:
        if conn.scalar(select(_runs.c.id).where(_runs.c.id == run_id)) is None:
            return False
        conn.execute(insert(SupersededAttempt.__table__).values(
            run_id=run_id, attempt=attempt, worker=me, state=state, finished_at=now,
            exit_code=outcome.exit_code, http_status=outcome.http_status,
            output=tail(outcome.output), error=outcome.error))
    return True


@lru_cache(maxsize=1024)
def _total_runs(text: str, zone: str | None, default_zone: str) -> int | None:
    """Runs a schedule has in all (None: forever, or unparsable)."""
    try:
        return occurrences.parse(text, None, zone, default_zone).total_runs
    except schedule.ScheduleError:
        return None


def _end_params(run: RunInfo, me: str | None, state: str, outcome: Outcome,
                now: datetime) -> dict[str, Any]:
    began = run.started_at or now
    return {
        "p_run": run.id,
        "p_me": me,
        "p_attempt": run.attempts,
        "p_now": now,
        "p_state": state,
        "p_duration": int((now - began) / timedelta(microseconds=1)) * 1000,
        "p_output": tail(outcome.output),
        "p_error": outcome.error,
        "p_exit": outcome.exit_code,
        "p_http": outcome.http_status,
    }


def _done(job: JobRecord, settings: Settings) -> tuple[str, int | None]:
    """When the job is done after a run (_counter_values' `done`), and its runs in all."""
    if not (job.schedule or job.cron):
        return "yes", None
    # a cron job repeats until disabled (Decision 18)
    total = None if job.cron else _total_runs(job.schedule, job.timezone, settings.timezone)
    return ("child" if total is None else "total"), total


def end_in_one(conn: Connection | Engine, e: Ending) -> bool:
    """The usual end on PostgreSQL, in its one statement on `conn` (an Engine: alone, in
    autocommit): the run and its job's counters, when there is nothing else to record (no
    child waiting for all its parents, no on-failure job). False when it is not that end,
    or did not happen there: `finish` decides it then, as always."""
    if conn.dialect.name != "postgresql" or e.job_untouched or (
            e.state in ("failed", "lost") and e.job.on_failure_job):
        return False
    done, total = _done(e.job, e.settings)
    params = {**_end_params(e.run, e.me, e.state, e.outcome, e.now), "p_job": e.job.id,
              "p_total": total, "p_attempts": e.attempts}
    statement = end_statement(e.state, e.failed_attempt, done, e.attempts is not None)
    return driven(statement, conn.dialect).first(conn, params) is not None


def finish_ending(conn: Connection, e: Ending) -> list[str] | None:
    """`finish` for an Ending, on `conn` (the caller's transaction)."""
    return finish(conn, e.run, e.job, e.me, e.state, e.outcome, e.settings, e.now,
                  failed_attempt=e.failed_attempt, attempts=e.attempts,
                  job_untouched=e.job_untouched)


@dataclass(frozen=True)
class Ending:
    """A worker's end of a run: the run (with the attempt the worker holds, Decision 28), its
    job, the new state and outcome, and how to count it (see `finish`)."""

    run: RunInfo
    job: JobRecord
    me: str
    state: str
    outcome: Outcome
    settings: Settings
    now: datetime
    failed_attempt: bool = False
    attempts: int | None = None
    job_untouched: bool = False


def end(engine: Engine, e: Ending) -> list[str] | None:
    """A worker's `finish`, in a transaction of its own; on PostgreSQL the usual end is one
    statement outside a transaction block (`end_in_one`)."""
    if end_in_one(engine, e):  # alone, autocommit
        return []
    with begin_write(engine) as conn:
        return finish_ending(conn, e)


def finish(
    conn: Connection,
    run: RunInfo,
    job: JobRecord,
    me: str | None,
    state: str,
    outcome: Outcome,
    settings: Settings,
    now: datetime,
    *,
    failed_attempt: bool = False,
    attempts: int | None = None,
    untaken: bool = False,
    job_untouched: bool = False,
) -> list[str] | None:
    """started -> success | failed | skipped | lost, then Kala's counters, `is_done` and the
    run of the job's on-failure job, on `conn` (one transaction, the caller's). `attempts`
    corrects the count when the attempt the claim counted was not made; `untaken`: the run
    is `sent` and no worker took it (it ends from there); `job_untouched` leaves the job as
    it is (a dependent not run because its parent run did not succeed: Kala's metadata of
    that child stays as it was). Returns the runs recorded here to
    publish, or None when the run was no longer `me`'s to end."""
    params = _end_params(run, me, state, outcome, now)
    params["p_attempts"] = attempts  # _END_UNCOUNTED's (the others have no such parameter)
    end = _END_UNTAKEN if untaken else _END if attempts is None else _END_UNCOUNTED
    if driven(end, conn.dialect).count(conn, params) != 1:
        return None  # someone else ended it (status callback, sweep)
    if job_untouched:
        return []
    done, total = _done(job, settings)
    counted = driven(_counters(state, failed_attempt, done), conn.dialect).first(
        conn, {"p_job": job.id, "p_now": now, "p_total": total})
    if state == "success":
        if not (counted and counted[0]):  # no child waits for all its parents: nothing to mark
            return []
        return parents.after_success(conn, job.id, run.id, now)
    if state in ("failed", "lost") and job.on_failure_job:
        return _record_on_failure(conn, job, now)
    return []


def _record_on_failure(conn: Connection, job: JobRecord, now: datetime) -> list[str]:
    """docs/kala.md §10: after a run that failed all attempts, the on-failure job runs (with its
    own dependents). An unknown or disabled on-failure job is logged and ignored."""
    target = conn.execute(_ON_FAILURE_TARGET, {"p_job": job.on_failure_job}).first()
    if target is None or target.disabled:
        log.warning(
            "job %s: on-failure job %r is %s; not run",
            job.id,
            job.on_failure_job,
            "unknown" if target is None else "disabled",
        )
        return []
    with Session(bind=conn) as session:  # joins the caller's transaction
        return dispatch.record_trees(
            session, [(job.on_failure_job, now)], trigger="on_failure", now=now
        )


def run_and_job(conn: Connection, run_id: str, state: str) -> tuple[RunInfo, JobRecord] | None:
    """A run and its job, for the sweep's verdicts, when the run is still in `state`."""
    row = conn.execute(_ABANDONED, {"p_run": run_id}).first()
    if row is None or row.state != state:
        return None
    return _run_info(row), _job_of(row, len(_RUN_RETURNING) + 1)


def abandon(
    sessions: sessionmaker[Session], run_id: str, settings: Settings, now: datetime, reason: str
) -> list[str]:
    """The sweep's verdict on a started run whose worker is gone: a failed attempt. With
    attempts left and its epsilon window open the run goes back to `pending` (to be published
    again); otherwise it ends `lost` (an error; its on-failure job runs). Returns the run ids
    to publish."""
    with engine_of(sessions).begin() as conn:
        found = run_and_job(conn, run_id, "started")
        if found is None:
            return []
        run, job = found
        policy = RetryPolicy.of(job, run, settings)
        if run.attempts < policy.attempts and policy.may_start(now):
            params = {"p_run": run_id, "p_me": run.worker, "p_attempt": run.attempts,
                      "p_error": reason}
            if conn.execute(_GIVE_BACK, params).rowcount != 1:
                return []
            conn.execute(_FAILED_ATTEMPT, {"p_job": job.id, "p_now": now})
            return [run_id]
        follow = finish(
            conn,
            run,
            job,
            run.worker or "",
            "lost",
            Outcome(False, error=reason),
            settings,
            now,
            failed_attempt=True,
        )
        return follow or []
