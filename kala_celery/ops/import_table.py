"""What every `kala-celery import` shares, whatever it reads (a Kala, django-celery-beat,
RedBeat): the outcome of one job and the table of them, the Decision (docs/design.md) behind a
refusal, and the writing of a job through `store/jobs.py`'s `import_job` (the create path's
checks) in a savepoint, a batch of jobs per transaction, a dry run rolled back.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import DataError
from sqlalchemy.orm import Session, sessionmaker

from kala_celery import wire
from kala_celery.errors import Conflict, Forbidden, InvalidJob
from kala_celery.store import audit, bulk, jobs
from kala_celery.store.tables import Job, Run

IMPORTED, HERE, REFUSED = "imported", "already here", "refused"
IMPORTER = audit.command_actor("import")  # who the audit trail says imported (Decision 32)
PLANNED = "to import"  # what a dry run says instead of "imported"


class SourceError(Exception):
    """The jobs could not be read (the source away, or not what it should be)."""


@dataclass(frozen=True)
class Outcome:
    """What the import did with one job: `result` is IMPORTED (or PLANNED), HERE or REFUSED;
    `detail` says where the job stands here, or why it was refused (naming the Decision)."""

    job_id: str
    name: str
    result: str
    detail: str = ""


@dataclass(frozen=True)
class Progress:
    """Where an imported job stands on its schedule here."""

    runs_used: int
    is_done: bool
    next_run_at: datetime | None


# ---------------------------------------------------------------- refusals


# Which Decision (docs/design.md) stands behind a refusal, by the reason's wording.
_DECISIONS: tuple[tuple[re.Pattern[str], int], ...] = (
    (re.compile(r"parent|dependen|cycle|levels deep|runs per run"), 9),
    (re.compile(r"remote_properties|remote job"), 12),
    (re.compile(r"^id "), 14),
    (re.compile(r"local jobs are disabled"), 16),
    (re.compile(r"^type |celery_task|Celery-task"), 19),
    (re.compile(r"^queue "), 17),
    (re.compile(r"retry_delay|retry_backoff"), 7),
    (re.compile(r"run_timeout"), 11),
    (re.compile(r"^(invalid )?cron |cron expression"), 18),
    (re.compile(r"zone"), 3),
    # the limits of what the job store, Python and the schedule maths can hold
    (re.compile(r"U\+0000|64-bit|characters long; at most|longer than \d+ days|nests deeper"), 25),
)


def cite(number: int) -> str:
    return f"Decision {number}, docs/design.md"


def decision_for(reason: str) -> int:
    """The Decision behind a refusal's reason; 23 (accept what Kala accepts, refuse for
    safety) covers the schedule and field checks."""
    for pattern, number in _DECISIONS:
        if pattern.search(reason):
            return number
    return 23


def refusal(job_id: str, name: str, reason: str, number: int | None = None) -> Outcome:
    """A refused job, its reason followed by the Decision behind it."""
    return Outcome(job_id, name, REFUSED, f"{reason} ({cite(number or decision_for(reason))})")


# ---------------------------------------------------------------- writing


def where(job: Job, parents: Sequence[str] = ()) -> str:
    """Where an imported job stands here, in a few words."""
    if parents:
        return "runs after " + ", ".join(parents)
    if job.disabled:
        return "disabled"
    if job.is_done:
        return "done"
    if job.next_run_at is not None:
        return f"next run {wire.format_time(job.next_run_at)}"
    return "one-off, not run again"


def write_one(session: Session, data: dict[str, Any], rules: jobs.Rules, now: datetime,
              state: Progress, *, parents: Sequence[str] = (),
              runs: Sequence[dict[str, Any]] = (), note: str = "") -> Outcome:
    """One job (a decoded job body with its `id`) through `jobs.import_job` in a savepoint,
    with its finished `runs`: imported, already here, or refused with the create path's
    reason. `note` follows the job's standing in the outcome."""
    job_id, name = data["id"], data.get("name", "")
    try:
        with session.begin_nested():
            job = jobs.import_job(session, data, rules, now, runs_used=state.runs_used,
                                  is_done=state.is_done, next_run_at=state.next_run_at)
            audit.job_changed(session, IMPORTER, "import", {}, job)
            if runs:
                session.execute(insert(Run), list(runs))
    except InvalidJob as exc:
        return refusal(job_id, name, exc.reason)
    except Forbidden as exc:
        return refusal(job_id, name, str(exc))
    except Conflict:  # written here meanwhile (by the API, or another import)
        return Outcome(job_id, name, HERE)
    except (OverflowError, DataError) as exc:  # numbers beyond our BIGINT
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        return refusal(job_id, name, f"a number in it does not fit the job store's 64-bit "
                       f"integers ({reason})", 25)
    detail = where(job, parents)
    return Outcome(job_id, name, IMPORTED, f"{detail}; {note}" if note else detail)


def ids_here(sessions: sessionmaker[Session], ids: Iterable[str]) -> set[str]:
    """Which of these job ids are in the store already."""
    ids = list(ids)
    if not ids:
        return set()
    with sessions() as session:
        return set(session.scalars(select(Job.id).where(Job.id.in_(ids))))


BATCH = 200  # jobs per transaction: SQLite's write lock is held for one batch at a time


def in_batches(sessions: sessionmaker[Session], keys: Sequence[str],
               write: Callable[[Session, str], Outcome], *,
               dry_run: bool = False, size: int = BATCH) -> dict[str, Outcome]:
    """`write(session, key)` for each key in order, `size` per transaction (a dry run: all in
    one, rolled back), so an interrupted import leaves whole jobs."""
    outcomes: dict[str, Outcome] = {}
    size = max(len(keys), 1) if dry_run else size
    for first in range(0, len(keys), size):
        with sessions() as session:
            # SQLite: BEGIN IMMEDIATE now, so each job's SAVEPOINT nests in this transaction
            # (pysqlite begins none for a SAVEPOINT, whose RELEASE would then commit).
            bulk.lock_for_write(session)
            for key in keys[first:first + size]:
                outcomes[key] = write(session, key)
            if dry_run:
                session.rollback()
            else:
                session.commit()
    return outcomes


def as_dry_run(outcomes: Iterable[Outcome]) -> list[Outcome]:
    """A dry run's outcomes: "to import" where the import would have imported."""
    return [Outcome(o.job_id, o.name, PLANNED, o.detail) if o.result == IMPORTED else o
            for o in outcomes]


# ---------------------------------------------------------------- the report


def table(outcomes: Iterable[Outcome], *, dry_run: bool = False) -> str:
    """The outcomes as a text table, with a count of each result under it."""
    outcomes = list(outcomes)
    rows = [("id", "name", "result", "detail")]
    rows += [(o.job_id, o.name, o.result, o.detail) for o in outcomes]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines = ["  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[3]])
             .rstrip() for row in rows]
    counts = Counter(o.result for o in outcomes)
    verb = PLANNED if dry_run else IMPORTED
    lines.append(f"{len(outcomes)} jobs: {counts[verb]} {verb}, "
                 f"{counts[HERE]} {HERE}, {counts[REFUSED]} {REFUSED}"
                 + (" (dry run: nothing written)" if dry_run else ""))
    return "\n".join(lines)
