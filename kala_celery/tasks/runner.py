"""The life of one run on a worker: claim it, make its attempts, record the outcome.

Each state change is a compare-and-set UPDATE, so a duplicate delivery of the same run id does
nothing, and counters are updated in SQL (`x = x + 1`), so concurrent runs never lose one.

    pending/sent --claim--> started --attempt ok--> success
                                    --attempts used up--> failed
                                    --delay before next attempt--> sent (redelivered later)
                 epsilon window passed before the first attempt --> skipped
    started by a worker process that died --> a failed attempt; `lost` when none are left

A run of a job that succeeds at once is two short transactions of two statements each, in
SQLAlchemy Core (no ORM unit of work, no re-reads): the claim (`UPDATE runs ... RETURNING`,
which also counts the first attempt, and `UPDATE jobs ... RETURNING` the job) and the finish
(the run's final state, then the job's counters and `is_done` in one UPDATE).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import Connection, Engine, case, exists, func, literal, select, update
from sqlalchemy.orm import Session, sessionmaker

from kala_celery import dispatch, schedule
from kala_celery.config import Settings
from kala_celery.models import JOB_REMOTE, Job, JobLink, Run, utcnow
from kala_celery.tasks.outcome import Outcome, tail

log = logging.getLogger(__name__)

Attempt = Callable[[Job, Settings], Outcome]
_QUEUED = ("pending", "sent")
_JOB_COLUMNS = tuple(Job.__table__.c)


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


_RUN_COLUMNS = (
    Run.id,
    Run.job_id,
    Run.trigger,
    Run.scheduled_for,
    Run.parent_run_id,
    Run.started_at,
    Run.attempts,
    Run.error,
    Run.worker,
)


def _run_info(row: Any) -> RunInfo:
    return RunInfo(*row[: len(_RUN_COLUMNS)])


def _job_of(row: Any, offset: int = 0) -> Job:
    """A detached Job built from the job columns of `row` (no session, no identity map)."""
    return Job(**{c.key: row[offset + i] for i, c in enumerate(_JOB_COLUMNS)})


# ---------------------------------------------------------------- policy


@dataclass(frozen=True)
class RetryPolicy:
    """Decision 7: `retries` extra attempts, `retry_delay` (doubling with `retry_backoff`),
    and no attempt starting after scheduled_for + epsilon (for scheduled runs)."""

    attempts: int
    delay: timedelta
    backoff: bool
    deadline: datetime | None

    @classmethod
    def of(cls, job: Job, run: Run | RunInfo, settings: Settings) -> RetryPolicy:
        deadline = None
        if run.trigger == "schedule" and job.schedule and job.epsilon:
            zone = schedule.resolve_zone(job.timezone, settings.timezone)
            epsilon = schedule.parse_epsilon(job.epsilon)
            if epsilon is not None:
                deadline = epsilon.add_to(run.scheduled_for, zone)
        delay = schedule.parse_plain_duration(job.retry_delay) if job.retry_delay else timedelta()
        return cls(job.retries + 1, delay, job.retry_backoff, deadline)

    def may_start(self, now: datetime) -> bool:
        return self.deadline is None or now <= self.deadline

    def wait_after(self, failed_attempts: int) -> float:
        seconds = self.delay.total_seconds()
        if self.backoff:
            seconds *= 2 ** (failed_attempts - 1)
        return seconds


# ---------------------------------------------------------------- worker identity


def worker_id(hostname: str) -> str:
    return f"{hostname}/{os.getpid()}"


def _died_here(worker: str | None, hostname: str) -> bool:
    """The run's worker process was on this host and is gone (killed mid-run)."""
    host, _, pid = (worker or "").rpartition("/")
    if host != hostname or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# ---------------------------------------------------------------- SQL steps


def _engine(sessions: sessionmaker[Session]) -> Engine:
    bind = sessions.kw.get("bind")
    if not isinstance(bind, Engine):
        raise TypeError("the runner needs a sessionmaker bound to an Engine")
    return bind


def _count_failed_attempt(conn: Connection | Session, job_id: str, now: datetime) -> None:
    conn.execute(
        update(Job).where(Job.id == job_id).values(error_count=Job.error_count + 1, last_error=now)
    )


def _owned(run_id: str, me: str | None) -> Any:
    return (Run.id == run_id) & (Run.state == "started") & (Run.worker == me)


def _claim(
    engine: Engine, run_id: str, me: str, hostname: str, now: datetime
) -> tuple[RunInfo, Job, str | None] | None:
    """started <- pending/sent (or <- started by a dead process on this host), counting the
    attempt about to start in the same UPDATE. Returns the run, its job (with
    last_attempted_run set by a first attempt) and, for a dependent run, its parent's state."""
    with engine.begin() as conn:
        row = conn.execute(
            update(Run)
            .where(Run.id == run_id, Run.state.in_(_QUEUED))
            .values(
                state="started",
                worker=me,
                started_at=func.coalesce(Run.started_at, literal(now, Run.started_at.type)),
                attempt_at=now,
                attempts=Run.attempts + 1,
            )
            .returning(*_RUN_COLUMNS)
        ).first()
        if row is None:
            row = _claim_from_the_dead(conn, run_id, me, hostname, now)
            if row is None:
                return None
        run = _run_info(row)
        if run.attempts == 1:  # the run's first attempt: Kala's last_attempted_run
            job_row = conn.execute(
                update(Job)
                .where(Job.id == run.job_id)
                .values(last_attempted_run=now)
                .returning(*_JOB_COLUMNS)
            ).first()
        else:
            job_row = conn.execute(select(*_JOB_COLUMNS).where(Job.id == run.job_id)).first()
        if job_row is None:
            return None  # deleted with its runs: nothing left to update
        parent_state = None
        if run.trigger == "parent":
            parent_state = conn.scalar(select(Run.state).where(Run.id == run.parent_run_id))
        return run, _job_of(job_row), parent_state


def _claim_from_the_dead(
    conn: Connection, run_id: str, me: str, hostname: str, now: datetime
) -> Any:
    """The queued-run claim missed: the run is unknown, past `sent`, or started by a worker
    process on this host that died (its attempt failed; this delivery makes the next)."""
    current = conn.execute(
        select(Run.state, Run.worker, Run.attempts).where(Run.id == run_id)
    ).first()
    if current is None:
        return None  # its job was deleted
    state, worker, attempts = current
    if state != "started" or not _died_here(worker, hostname):
        log.info("run %s is %s already; delivery ignored", run_id, state)
        return None
    error = f"worker {worker} died during attempt {attempts}"
    row = conn.execute(
        update(Run)
        .where(Run.id == run_id, Run.state == "started", Run.worker == worker)
        .values(worker=me, attempt_at=now, attempts=Run.attempts + 1, error=error)
        .returning(*_RUN_COLUMNS)
    ).first()
    if row is None:
        return None  # another delivery claimed it first
    log.warning("run %s: %s", run_id, error)
    _count_failed_attempt(conn, row.job_id, now)
    return row


def _next_attempt(engine: Engine, run_id: str, job_id: str, me: str, now: datetime) -> int | None:
    """Count the failed attempt and the next one in one transaction; None when the run is no
    longer ours (the sweep gave up on it)."""
    with engine.begin() as conn:
        number = conn.scalar(
            update(Run)
            .where(_owned(run_id, me))
            .values(attempts=Run.attempts + 1, attempt_at=now)
            .returning(Run.attempts)
        )
        if number is not None:
            _count_failed_attempt(conn, job_id, now)
        return number


def _release(
    engine: Engine, run_id: str, job_id: str, me: str, outcome: Outcome, now: datetime
) -> bool:
    """started -> sent while waiting for the next attempt; the failed attempt is counted."""
    with engine.begin() as conn:
        released = (
            conn.execute(
                update(Run)
                .where(_owned(run_id, me))
                .values(state="sent", output=tail(outcome.output), error=outcome.error)
            ).rowcount
            == 1
        )
        if released:
            _count_failed_attempt(conn, job_id, now)
        return released


@lru_cache(maxsize=1024)
def _total_runs(text: str, zone: str | None, default_zone: str) -> int | None:
    """Runs a schedule has in all (None: forever, or unparsable)."""
    try:
        return schedule.parse_schedule(text, schedule.resolve_zone(zone, default_zone)).total_runs
    except schedule.ScheduleError:
        return None


def _is_done_after(job: Job, settings: Settings) -> Any:
    """Decision 8: done when a one-off (or child) has run, or the schedule's runs are used up.
    A value for the job UPDATE, decided in SQL on the row it updates: a job with a next run is
    not done; else a child (its schedule is not used) is, and a job whose runs are used up."""
    if not job.schedule:
        return True
    done = exists().where(JobLink.child_id == Job.id)
    total = _total_runs(job.schedule, job.timezone, settings.timezone)
    if total is not None:
        done = done | (Job.runs_used >= total)
    return case((Job.next_run_at.is_(None) & done, True), else_=Job.is_done)


def _finish(
    conn: Connection,
    run: RunInfo,
    job: Job,
    me: str,
    state: str,
    outcome: Outcome,
    settings: Settings,
    now: datetime,
    *,
    failed_attempt: bool = False,
    attempts: int | None = None,
) -> list[str]:
    """started -> success | failed | skipped | lost, then Kala's counters, `is_done` and the
    run of the job's on-failure job, on `conn` (one transaction, the caller's). `attempts`
    corrects the count when the attempt the claim counted was not made. Returns the runs
    recorded here to publish."""
    began = run.started_at or now
    values: dict[str, object] = {
        "state": state,
        "finished_at": now,
        "duration_ns": int((now - began) / timedelta(microseconds=1)) * 1000,
        "output": tail(outcome.output),
        "error": outcome.error,
        "exit_code": outcome.exit_code,
        "http_status": outcome.http_status,
    }
    if attempts is not None:
        values["attempts"] = attempts
    if conn.execute(update(Run).where(_owned(run.id, me)).values(**values)).rowcount != 1:
        return []  # someone else ended it (status callback, sweep)
    counters: dict[str, object] = {"is_done": _is_done_after(job, settings)}
    if failed_attempt:
        counters.update(error_count=Job.error_count + 1, last_error=now)
    if state == "success":
        counters.update(success_count=Job.success_count + 1, last_success=now)
    if state in ("success", "failed", "lost"):
        counters["number_of_finished_runs"] = Job.number_of_finished_runs + 1
    conn.execute(update(Job).where(Job.id == job.id).values(**counters))
    if state in ("failed", "lost") and job.on_failure_job:
        return _record_on_failure(conn, job, now)
    return []


def _record_on_failure(conn: Connection, job: Job, now: datetime) -> list[str]:
    """KALA-SPEC §10: after a run that failed all attempts, the on-failure job runs (with its
    own dependents). An unknown or disabled on-failure job is logged and ignored."""
    target = conn.execute(select(Job.disabled).where(Job.id == job.on_failure_job)).first()
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


# ---------------------------------------------------------------- the run


def perform(job: Job, settings: Settings) -> Outcome:
    """One attempt: render templates, then run the command or make the HTTP call."""
    from kala_celery.tasks import remote, shell, templates

    try:
        data = templates.job_data(job) if job.template_delimiters else {}

        def render(text: str) -> str:
            return templates.render(text, job.template_delimiters, data)

        if job.job_type == JOB_REMOTE:
            return remote.call(
                url=render(job.remote_url),
                method=job.remote_method,
                body=render(job.remote_body),
                headers=job.remote_headers,
                timeout=job.remote_timeout,
                expected_codes=job.remote_expected_codes,
            )
        if not settings.allow_shell:
            return Outcome(ok=False, error="local jobs are disabled on this worker")
        timeout = schedule.parse_plain_duration(job.run_timeout) if job.run_timeout else None
        return shell.run_command(
            render(job.command), timeout=timeout.total_seconds() if timeout else None
        )
    except templates.TemplateError as exc:
        return Outcome(ok=False, error=str(exc))


@dataclass(frozen=True)
class Delivery:
    """What the task does after handling a delivery: redeliver the run after `retry_in`
    seconds (its next attempt), and publish the runs in `publish` (an on-failure job)."""

    retry_in: float | None = None
    publish: tuple[str, ...] = ()


def _parent_failed(run: RunInfo, parent_state: str | None) -> str | None:
    """A dependent run executes only after its parent run succeeded (KALA-SPEC §10)."""
    if run.trigger != "parent" or parent_state == "success":
        return None
    return f"parent run {run.parent_run_id} ended {parent_state or 'deleted'}; dependent not run"


def execute_run(
    sessions: sessionmaker[Session],
    run_id: str,
    *,
    hostname: str,
    settings: Settings,
    attempt: Attempt = perform,
    clock: Callable[[], datetime] = utcnow,
) -> Delivery:
    """Handle one delivery of a run."""
    engine = _engine(sessions)
    me = worker_id(hostname)
    claimed = _claim(engine, run_id, me, hostname, clock())
    if claimed is None:
        return Delivery()
    run, job, parent_state = claimed
    made = run.attempts - 1  # attempts made before this delivery (a retry delay, a crash)

    def finish(state: str, outcome: Outcome, *, failed_attempt: bool = False) -> Delivery:
        with engine.begin() as conn:
            follow = _finish(
                conn,
                run,
                job,
                me,
                state,
                outcome,
                settings,
                clock(),
                failed_attempt=failed_attempt,
                attempts=made if made < counted else None,
            )
        return Delivery(publish=tuple(follow))

    counted = run.attempts  # the claim counted the attempt it expects to start
    reason = "job is disabled" if job.disabled else _parent_failed(run, parent_state)
    if reason:
        return finish("skipped", Outcome(False, error=reason))
    policy = RetryPolicy.of(job, run, settings)
    last = Outcome(ok=False, error=run.error)
    if made >= policy.attempts:
        return finish("lost", last)
    while True:
        if not policy.may_start(clock()):
            reason = f"epsilon window ended at {policy.deadline:%Y-%m-%dT%H:%M:%S%z}"
            outcome = Outcome(
                False,
                last.output,
                f"{last.error}; {reason}" if made else reason,
                last.exit_code,
                last.http_status,
            )
            if made < counted:  # the claim's attempt was not made
                return finish("skipped" if made == 0 else "failed", outcome)
            return finish("failed", outcome, failed_attempt=True)  # the last one is uncounted
        if made == counted:  # the attempt after a failed one in this delivery
            number = _next_attempt(engine, run_id, job.id, me, clock())
            if number is None:
                return Delivery()  # the run was taken from us (the sweep ended it)
            counted = number
        last = attempt(job, settings)
        made = counted
        if last.ok:
            return finish("success", last)
        if made >= policy.attempts:
            return finish("failed", last, failed_attempt=True)
        wait = policy.wait_after(made)
        if wait > 0:
            released = _release(engine, run_id, job.id, me, last, clock())
            return Delivery(retry_in=wait) if released else Delivery()


def abandon(
    sessions: sessionmaker[Session], run_id: str, settings: Settings, now: datetime, reason: str
) -> list[str]:
    """The sweep's verdict on a started run whose worker vanished: a failed attempt. With
    attempts left the run goes back to `pending` (to be published again); otherwise it ends
    `lost` (and its on-failure job runs). Returns the run ids to publish."""
    engine = _engine(sessions)
    with engine.begin() as conn:
        row = conn.execute(
            select(*_RUN_COLUMNS, Run.state, *_JOB_COLUMNS)
            .join(Job, Job.id == Run.job_id)
            .where(Run.id == run_id)
        ).first()
        if row is None or row.state != "started":
            return []
        run = _run_info(row)
        job = _job_of(row, len(_RUN_COLUMNS) + 1)
        if run.attempts < RetryPolicy.of(job, run, settings).attempts:
            moved = conn.execute(
                update(Run)
                .where(_owned(run_id, run.worker))
                .values(state="pending", error=reason)
            ).rowcount
            if moved:
                _count_failed_attempt(conn, job.id, now)
            return [run_id] if moved else []
        return _finish(
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
