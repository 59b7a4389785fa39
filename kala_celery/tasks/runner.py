"""The life of one run on a worker: claim it, make its attempts, record the outcome.

Each state change is a compare-and-set UPDATE, so a duplicate delivery of the same run id does
nothing, and counters are updated in SQL (`x = x + 1`), so concurrent runs never lose one.

    pending/sent --claim--> started --attempt ok--> success
                                    --attempts used up--> failed
                                    --delay before next attempt--> sent (redelivered later)
                 epsilon window passed before the first attempt --> skipped
    started by a worker process that died --> a failed attempt; `lost` when none are left
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from kala_celery import dispatch, schedule
from kala_celery.config import Settings
from kala_celery.models import JOB_REMOTE, Job, JobLink, Run, utcnow
from kala_celery.tasks.outcome import Outcome, tail

log = logging.getLogger(__name__)

Attempt = Callable[[Job, Settings], Outcome]
_QUEUED = ("pending", "sent")


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
    def of(cls, job: Job, run: Run, settings: Settings) -> RetryPolicy:
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


def _count_failed_attempt(session: Session, job_id: str, now: datetime) -> None:
    session.execute(
        update(Job).where(Job.id == job_id).values(error_count=Job.error_count + 1, last_error=now)
    )


def _claim(
    sessions: sessionmaker[Session], run_id: str, me: str, hostname: str, now: datetime
) -> tuple[Run, Job] | None:
    """started <- pending/sent (or <- started by a dead process on this host)."""
    with sessions.begin() as session:
        run = session.get(Run, run_id)
        if run is None:
            return None  # its job was deleted
        error = run.error
        if run.state in _QUEUED:
            guard = Run.state.in_(_QUEUED)
        elif run.state == "started" and _died_here(run.worker, hostname):
            guard = (Run.state == "started") & (Run.worker == run.worker)
            error = f"worker {run.worker} died during attempt {run.attempts}"
            log.warning("run %s: %s", run_id, error)
        else:
            log.info("run %s is %s already; delivery ignored", run_id, run.state)
            return None
        claimed = session.execute(
            update(Run)
            .where(Run.id == run_id, guard)
            .values(
                state="started",
                worker=me,
                started_at=run.started_at or now,
                attempt_at=now,
                error=error,
            )
            .execution_options(synchronize_session=False)
        ).rowcount
        if claimed != 1:
            return None  # another delivery claimed it first
        if run.state == "started":  # the dead process's attempt failed
            _count_failed_attempt(session, run.job_id, now)
        if run.attempts == 0:
            session.execute(update(Job).where(Job.id == run.job_id).values(last_attempted_run=now))
        job = session.get(Job, run.job_id)
        session.refresh(run)
        if job is None:
            return None
        return run, job


def _begin_attempt(sessions: sessionmaker[Session], run_id: str, me: str, now: datetime) -> int:
    with sessions.begin() as session:
        session.execute(
            update(Run)
            .where(Run.id == run_id, Run.state == "started", Run.worker == me)
            .values(attempts=Run.attempts + 1, attempt_at=now)
        )
        return session.scalar(select(Run.attempts).where(Run.id == run_id)) or 0


def _release(sessions: sessionmaker[Session], run_id: str, me: str, outcome: Outcome) -> bool:
    """started -> sent while waiting for the next attempt."""
    with sessions.begin() as session:
        return (
            session.execute(
                update(Run)
                .where(Run.id == run_id, Run.state == "started", Run.worker == me)
                .values(state="sent", output=tail(outcome.output), error=outcome.error)
            ).rowcount
            == 1
        )


def _finish(
    sessions: sessionmaker[Session],
    run: Run,
    job: Job,
    me: str,
    state: str,
    outcome: Outcome,
    settings: Settings,
    now: datetime,
    *,
    failed_attempt: bool = False,
) -> list[str]:
    """started -> success | failed | skipped | lost, with Kala's counters and the run of the
    job's on-failure job, in one transaction. Returns the runs recorded here to publish."""
    began = run.started_at or now
    with sessions.begin() as session:
        if failed_attempt:
            _count_failed_attempt(session, job.id, now)
        done = session.execute(
            update(Run)
            .where(Run.id == run.id, Run.state == "started", Run.worker == me)
            .values(
                state=state,
                finished_at=now,
                duration_ns=int((now - began) / timedelta(microseconds=1)) * 1000,
                output=tail(outcome.output),
                error=outcome.error,
                exit_code=outcome.exit_code,
                http_status=outcome.http_status,
            )
        ).rowcount
        if done != 1:
            return []  # someone else ended it (status callback, sweep)
        values: dict[str, object] = {}
        if state == "success":
            values.update(success_count=Job.success_count + 1, last_success=now)
        if state in ("success", "failed", "lost"):
            values["number_of_finished_runs"] = Job.number_of_finished_runs + 1
        if _is_done_after(session, job, settings):
            values["is_done"] = True
        if values:
            session.execute(update(Job).where(Job.id == job.id).values(**values))
        if state in ("failed", "lost") and job.on_failure_job:
            follow_up = _record_on_failure(session, job, now)
            return [follow_up.id] if follow_up else []
    return []


def _record_on_failure(session: Session, job: Job, now: datetime) -> Run | None:
    """KALA-SPEC §10: after a run that failed all attempts, the on-failure job runs (with its
    own dependents). An unknown or disabled on-failure job is logged and ignored."""
    target = session.get(Job, job.on_failure_job)
    if target is None or target.disabled:
        log.warning(
            "job %s: on-failure job %r is %s; not run",
            job.id,
            job.on_failure_job,
            "unknown" if target is None else "disabled",
        )
        return None
    return dispatch.record_tree(session, target, trigger="on_failure", scheduled_for=now, now=now)


def _is_done_after(session: Session, job: Job, settings: Settings) -> bool:
    """Decision 8: done when a one-off (or child) has run, or the schedule's runs are used up."""
    if not job.schedule:
        return True
    current = session.execute(
        select(Job.runs_used, Job.next_run_at).where(Job.id == job.id)
    ).one_or_none()
    if current is None or current.next_run_at is not None:
        return False  # the common case: a scheduled job with more to run, one query
    if session.scalar(select(JobLink.id).where(JobLink.child_id == job.id).limit(1)):
        return True  # a child (its schedule is not used) has run
    try:
        total = schedule.parse_schedule(
            job.schedule, schedule.resolve_zone(job.timezone, settings.timezone)
        ).total_runs
    except schedule.ScheduleError:
        return False
    return total is not None and current.runs_used >= total


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


def _parent_failed(sessions: sessionmaker[Session], run: Run) -> str | None:
    """A dependent run executes only after its parent run succeeded (KALA-SPEC §10)."""
    if run.trigger != "parent":
        return None
    with sessions() as session:
        state = session.scalar(select(Run.state).where(Run.id == run.parent_run_id))
    if state == "success":
        return None
    return f"parent run {run.parent_run_id} ended {state or 'deleted'}; dependent not run"


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
    me = worker_id(hostname)
    claimed = _claim(sessions, run_id, me, hostname, clock())
    if claimed is None:
        return Delivery()
    run, job = claimed

    def finish(state: str, outcome: Outcome, *, failed_attempt: bool = False) -> Delivery:
        follow = _finish(
            sessions, run, job, me, state, outcome, settings, clock(), failed_attempt=failed_attempt
        )
        return Delivery(publish=tuple(follow))

    reason = "job is disabled" if job.disabled else _parent_failed(sessions, run)
    if reason:
        return finish("skipped", Outcome(False, error=reason))
    policy = RetryPolicy.of(job, run, settings)
    failed = run.attempts  # attempts already made (a redelivery after a delay or a crash)
    last = Outcome(ok=False, error=run.error)
    if failed >= policy.attempts:
        return finish("lost", last)
    while True:
        if not policy.may_start(clock()):
            reason = f"epsilon window ended at {policy.deadline:%Y-%m-%dT%H:%M:%S%z}"
            outcome = Outcome(
                False,
                last.output,
                f"{last.error}; {reason}" if failed else reason,
                last.exit_code,
                last.http_status,
            )
            return finish("skipped" if failed == 0 else "failed", outcome)
        number = _begin_attempt(sessions, run_id, me, clock())
        last = attempt(job, settings)
        if last.ok:
            return finish("success", last)
        failed = number
        if failed >= policy.attempts:
            return finish("failed", last, failed_attempt=True)
        with sessions.begin() as session:
            _count_failed_attempt(session, job.id, clock())
        wait = policy.wait_after(failed)
        if wait > 0:
            return Delivery(retry_in=wait) if _release(sessions, run_id, me, last) else Delivery()


def abandon(
    sessions: sessionmaker[Session], run_id: str, settings: Settings, now: datetime, reason: str
) -> list[str]:
    """The sweep's verdict on a started run whose worker vanished: a failed attempt. With
    attempts left the run goes back to `pending` (to be published again); otherwise it ends
    `lost` (and its on-failure job runs). Returns the run ids to publish."""
    with sessions() as session:
        run = session.get(Run, run_id)
        job = session.get(Job, run.job_id) if run else None
    if run is None or job is None or run.state != "started":
        return []
    if run.attempts < RetryPolicy.of(job, run, settings).attempts:
        with sessions.begin() as session:
            moved = session.execute(
                update(Run)
                .where(Run.id == run_id, Run.state == "started", Run.worker == run.worker)
                .values(state="pending", error=reason)
            ).rowcount
            if moved:
                _count_failed_attempt(session, job.id, now)
        return [run_id] if moved else []
    return _finish(
        sessions,
        run,
        job,
        run.worker or "",
        "lost",
        Outcome(False, error=reason),
        settings,
        now,
        failed_attempt=True,
    )
