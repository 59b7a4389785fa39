"""The beat's sweep over runs: send again a run whose message was lost (still `pending` after
its publisher died, or `sent` and taken by no worker), and end the Celery-task runs no worker
took (Decision 19). The sweep's other half, taking runs from dead workers, is
`attempts.abandon` with `heartbeats.orphaned`.
The Decisions cited are those of docs/design.md.
"""


from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Engine,
    exists,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session, sessionmaker

from kala_celery.config import Settings
from kala_celery.runs.attempts import finish, run_and_job
from kala_celery.runs.outcome import Outcome
from kala_celery.store.db import engine_of
from kala_celery.store.tables import (
    JOB_CELERY_TASK,
    TERMINAL_STATES,
    Job,
    Run,
)

log = logging.getLogger(__name__)

_runs = Run.__table__
_jobs = Job.__table__

_pred = _runs.alias("pred")


def _first_in_line(cutoff: datetime) -> Any:
    """A run whose message nobody else will send: a root (its message is the beat's or the
    API's), or a dependent whose predecessor in its chain (the run before it in depth-first
    order, which sends the next link when it ends) ended before `cutoff`."""
    tree = or_(_pred.c.id == _runs.c.root_run_id, _pred.c.root_run_id == _runs.c.root_run_id)
    return or_(
        _runs.c.root_run_id.is_(None),
        exists().where(
            tree,
            _pred.c.seq == _runs.c.seq - 1,
            _pred.c.state.in_(TERMINAL_STATES),
            _pred.c.finished_at < cutoff,
        ),
    )


def _waiting(state: str, cutoff: datetime, limit: int, *, celery_tasks: bool = False) -> Any:
    """Runs in `state` since before `cutoff` that nobody else will send; for `sent`, those of
    Celery-task jobs (`celery_tasks`) or of the others, with their queue."""
    query = (
        select(_runs.c.id, _jobs.c.queue)
        .join_from(_runs, _jobs, _jobs.c.id == _runs.c.job_id)
        .where(
            _runs.c.state == state,
            func.coalesce(_runs.c.sent_at, _runs.c.created_at) < cutoff,
            _first_in_line(cutoff),
        )
        .order_by(_runs.c.created_at)
        .limit(limit)
    )
    if state != "sent":
        return query
    if celery_tasks:
        return query.where(_jobs.c.job_type == JOB_CELERY_TASK).add_columns(
            _runs.c.redeliveries, func.coalesce(_runs.c.sent_at, _runs.c.created_at)
        )
    return query.where(_jobs.c.job_type != JOB_CELERY_TASK)


def missing(
    engine: Engine,
    now: datetime,
    *,
    pending_grace: timedelta,
    redeliver_after: timedelta,
    limit: int,
) -> tuple[list[str], list[tuple[str, str | None]]]:
    """Runs whose message may be missing: runs left `pending` past `pending_grace` (their
    publisher died, or the broker was down), ready to publish; and, with their job's queue,
    runs `sent` longer than `redeliver_after` that no worker took (the broker restarted
    empty, a worker died holding the message, or it acked the message and then failed to
    claim the run), for `reopen`."""
    with engine.connect() as conn:
        pending = conn.scalars(
            _waiting("pending", now - pending_grace, limit).with_only_columns(_runs.c.id)
        ).all()
        lost = conn.execute(_waiting("sent", now - redeliver_after, limit)).all()
    return list(pending), [(run_id, queue) for run_id, queue in lost]


@dataclass(frozen=True)
class Untaken:
    """A Celery-task job's run `sent` for KALA_REDELIVER_AFTER that no worker took."""

    run_id: str
    queue: str | None
    redeliveries: int
    sent_at: datetime


def untaken_tasks(
    engine: Engine, now: datetime, *, redeliver_after: timedelta, limit: int
) -> list[Untaken]:
    """Decision 19: Celery-task runs no worker took (see `task_verdicts`)."""
    with engine.connect() as conn:
        rows = conn.execute(
            _waiting("sent", now - redeliver_after, limit, celery_tasks=True)
        ).all()
    return [Untaken(*row) for row in rows]


def task_verdicts(
    untaken: list[Untaken], idle: set[str | None], now: datetime, redeliver_after: timedelta
) -> tuple[list[str], list[tuple[str, str]]]:
    """Decision 19: what the sweep does with Celery-task runs no worker took: (run ids to send
    again, (run id, error) to end failed). Sent once more when their queue is empty (the
    message was lost, or a worker without kala's tasks dropped it), and failed when that did
    not help either, or when their message has waited in a busy queue for twice the bound
    (nobody consumes it), so such a run neither stays `sent` nor goes out again and again."""
    again: list[str] = []
    failed: list[tuple[str, str]] = []
    for run in untaken:
        queue = f"queue {run.queue!r}" if run.queue else "the default queue"
        if run.queue in idle and run.redeliveries == 0:
            again.append(run.run_id)
        elif run.queue in idle:
            failed.append((run.run_id, (
                f"no worker took this run from {queue}, sent {run.redeliveries + 1} times: "
                "the workers consuming it must run kala-celery's tasks "
                "(import kala_celery.tasks in their Celery app)")))
        elif now - run.sent_at > 2 * redeliver_after:
            seconds = int((now - run.sent_at).total_seconds())
            failed.append((run.run_id, (
                f"no worker took this run from {queue} within {seconds} s: is a worker "
                "consuming that queue?")))
    return again, failed


def fail_untaken(
    sessions: sessionmaker[Session], run_id: str, settings: Settings, now: datetime, reason: str
) -> list[str]:
    """sent -> failed for a run no worker took (a failed attempt: counted as an error, its
    on-failure job runs). Returns the run ids to publish."""
    with engine_of(sessions).begin() as conn:
        found = run_and_job(conn, run_id, "sent")
        if found is None:
            return []
        run, job = found
        follow = finish(conn, run, job, None, "failed", Outcome(False, error=reason), settings,
                        now, failed_attempt=True, untaken=True)
    if follow is not None:
        log.warning("run %s: %s", run_id, reason)
    return follow or []


def reopen(engine: Engine, now: datetime, run_ids: list[str]) -> list[str]:
    """sent -> pending for runs whose message was lost, to be published again with the rest
    of their chain; returns those this call reopened (another beat's sweep may have been
    first). Workers ignore a run already past `sent`, so a second message for a run that was
    only slow is harmless."""
    if not run_ids:
        return []
    with engine.begin() as conn:
        reopened = conn.scalars(
            update(_runs)
            .where(_runs.c.id.in_(run_ids), _runs.c.state == "sent")
            .values(state="pending", sent_at=now, redeliveries=_runs.c.redeliveries + 1)
            # sent_at now: not pending "long", so no second sweep publishes it
            .returning(_runs.c.id)
        ).all()
    if reopened:
        log.warning("%d runs were sent and not taken by any worker; sending them again",
                    len(reopened))
    return list(reopened)
