"""The life of one run on a worker: claim it, make its attempts, record the outcome.

The SQL of each step is in `kala_celery.runs` (shared with the beat's sweep); this module
decides which step comes next: skip, attempt, retry now or later, or finish. Outcomes are
written durably: a finish that meets a database outage is retried with back-off for up to
`FINISH_RETRY_FOR`, so a command that ran while the database was away is not forgotten.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeVar

from sqlalchemy.orm import Session, sessionmaker

from kala_celery import schedule
from kala_celery.config import Settings
from kala_celery.runs.attempts import (
    Ending,
    JobRecord,
    NotYet,
    RunInfo,
    claim,
    next_attempt,
    release,
    supersede,
)
from kala_celery.runs.attempts import end as end_run
from kala_celery.runs.heartbeats import worker_id
from kala_celery.runs.outcome import Outcome
from kala_celery.runs.retry import RetryPolicy
from kala_celery.store.clock import now as db_now
from kala_celery.store.db import DatabaseAway, engine_of
from kala_celery.store.tables import JOB_CELERY_TASK, JOB_REMOTE
from kala_celery.tasks import celery_task, remote, shell, templates

log = logging.getLogger(__name__)

# One attempt of a job: the job, the settings and the environment the run adds for its
# command (KALA_RUN_ID, KALA_JOB_ID, KALA_ATTEMPT, KALA_SCHEDULED_FOR).
Attempt = Callable[[JobRecord, Settings, Mapping[str, str]], Outcome]
FINISH_RETRY_FOR = 300.0  # seconds a worker keeps trying to record an outcome
T = TypeVar("T")


def durably(write: Callable[[], T], *, within: float = FINISH_RETRY_FOR) -> T:
    """Run the transaction `write`, again after a growing pause while the database is away
    (refused, restarting, connection dropped), for up to `within` seconds."""
    deadline = time.monotonic() + within
    pause = 0.25
    while True:
        try:
            return write()
        except DatabaseAway as exc:
            left = deadline - time.monotonic()
            if left <= 0:
                raise
            log.warning("database away (%s); retrying the write in %.1f s", type(exc).__name__,
                        min(pause, left))
            time.sleep(min(pause, left))
            pause = min(pause * 2, 10.0)


def run_environment(run: RunInfo, attempt: int) -> dict[str, str]:
    """What a run tells its command: which run, of which job, which attempt, for when."""
    return {
        "KALA_RUN_ID": run.id,
        "KALA_JOB_ID": run.job_id,
        "KALA_ATTEMPT": str(attempt),
        "KALA_SCHEDULED_FOR": run.scheduled_for.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }


# ---------------------------------------------------------------- the run


def perform(job: JobRecord, settings: Settings, run_env: Mapping[str, str]) -> Outcome:
    """One attempt: run the Celery task by name, or render templates, then run the command
    (with `run_env` added to the worker's environment) or make the HTTP call."""
    if job.job_type == JOB_CELERY_TASK:
        return celery_task.call(job.celery_task, run_id=run_env["KALA_RUN_ID"])
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
                policy=settings.remote_policy,
            )
        if not settings.allow_shell:
            return Outcome(ok=False, error="local jobs are disabled on this worker")
        timeout = schedule.parse_plain_duration(job.run_timeout) if job.run_timeout else None
        return shell.run_command(
            render(job.command),
            timeout=timeout.total_seconds() if timeout else None,
            extra=run_env,
        )
    except templates.TemplateError as exc:
        return Outcome(ok=False, error=str(exc))


@dataclass(frozen=True)
class Delivery:
    """What the task does after handling a delivery: redeliver the run after `retry_in`
    seconds (its next attempt), and publish the runs in `publish` (an on-failure job).
    `owned`: this delivery claimed the run and took it to its end (or to its next attempt);
    a duplicate delivery, or one whose run was taken away, is not, and must not continue the
    run's chain (whoever owns the run does)."""

    retry_in: float | None = None
    publish: tuple[str, ...] = ()
    owned: bool = False
    ended: str | None = None  # the state this delivery ended the run in
    error: str | None = None  # and why, when it is not a success


def _parent_failed(run: RunInfo, parent_state: str | None) -> str | None:
    """A dependent run executes only after its parent run succeeded (docs/kala.md §10)."""
    if run.trigger != "parent" or parent_state == "success":
        return None
    return f"parent run {run.parent_run_id} ended {parent_state or 'deleted'}; dependent not run"


def log_superseded(job: JobRecord, run_id: str, attempt: int, state: str, kept: bool) -> None:
    """A worker's outcome that came after its run moved on (docs/design.md Decision 28)."""
    log.warning("job %r (%s) run %s: attempt %d's %s superseded: the run is no longer this "
                "worker's (the sweep took it back, or its job was deleted)%s", job.name, job.id,
                run_id, attempt, state, "; its outcome is kept on the attempt" if kept else "")


def execute_run(
    sessions: sessionmaker[Session],
    run_id: str,
    *,
    hostname: str,
    settings: Settings,
    attempt: Attempt = perform,
    clock: Callable[[], datetime] = db_now,
    hand: Callable[[Ending], None] | None = None,
) -> Delivery:
    """Handle one delivery of a run. With `hand`, the run's end is handed to this process's
    writer instead of written before returning (tasks/writer.py, docs/design.md
    Decision 29)."""
    engine = engine_of(sessions)
    me = worker_id(hostname)
    claimed = claim(engine, run_id, me, hostname, clock())
    if claimed is None:
        return Delivery()
    if isinstance(claimed, NotYet):  # its countdown ran on another clock: wait for ours
        return Delivery(retry_in=claimed.seconds, owned=True)
    run, job, parent_state = claimed
    made = run.attempts - 1  # attempts made before this delivery (a retry delay, a crash)

    def end(
        state: str, outcome: Outcome, *, failed_attempt: bool = False, untouched: bool = False
    ) -> Delivery:
        mine = replace(run, attempts=counted)  # the attempt held (docs/design.md Decision 28)
        ending = Ending(mine, job, me, state, outcome, settings, clock(),
                        failed_attempt=failed_attempt,
                        attempts=made if made < counted else None, job_untouched=untouched)
        if hand is not None:
            hand(ending)
            return Delivery(owned=True, ended=state, error=outcome.error)
        follow = durably(lambda: end_run(engine, ending))
        if follow is None:  # the sweep took it from us, or its job was deleted, meanwhile
            return superseded(state, outcome)
        seconds = (clock() - (run.started_at or clock())).total_seconds()
        log.info("job %r (%s) run %s: %s in %.3f s%s", job.name, job.id, run.id, state,
                 seconds, f": {outcome.error}" if outcome.error else "")
        return Delivery(publish=tuple(follow), owned=True, ended=state, error=outcome.error)

    def superseded(state: str, outcome: Outcome) -> Delivery:
        """Our attempt's outcome came after the run moved on: kept on the attempt, never on
        the run (Decision 28)."""
        kept = durably(lambda: supersede(engine, run.id, counted, me, state, outcome, clock()))
        log_superseded(job, run.id, counted, state, kept)
        return Delivery()

    counted = run.attempts  # the claim counted the attempt it expects to start
    if job.disabled:
        return end("skipped", Outcome(False, error="job is disabled"))
    reason = _parent_failed(run, parent_state)
    if reason:  # Kala does not run the child at all: its metadata stays as it was
        return end("skipped", Outcome(False, error=reason), untouched=True)
    policy = RetryPolicy.of(job, run, settings)
    last = Outcome(ok=False, error=run.error)
    if made >= policy.attempts:
        return end("lost", last)
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
                return end("skipped" if made == 0 else "failed", outcome)
            return end("failed", outcome, failed_attempt=True)  # the last one is uncounted
        if made == counted:  # the attempt after a failed one in this delivery
            number = next_attempt(engine, run_id, job.id, me, counted, clock())
            if number is None:  # the run was taken from us (the sweep ended it)
                return superseded("failed", last)
            counted = number
        last = attempt(job, settings, run_environment(run, counted))
        made = counted
        if last.ok:
            return end("success", last)
        if made >= policy.attempts:
            return end("failed", last, failed_attempt=True)
        wait = policy.wait_after(made)
        if wait > 0:
            released = release(engine, run_id, job.id, me, counted, last, clock(), wait)
            return Delivery(retry_in=wait, owned=True) if released else superseded("failed", last)
