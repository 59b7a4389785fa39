"""What the runs have been doing, aggregated in SQL for the dashboard's charts: runs per minute
by state and due -> start lateness per minute over a window (24 h), runs in flight, the jobs
failing most, and the beats and workers with their last heartbeat.

Every aggregate is a GROUP BY over the window's rows, read through `ix_runs_due` (scheduled_for
first, with the columns the charts read: an index-only range on SQLite), so a page reads a
few thousand grouped rows however many runs are stored. A run belongs to the minute it was due
(`scheduled_for`); lateness is a scheduled run's `started_at - scheduled_for` (at least 0), as
/metrics counts it (migration 0002), filed under /metrics's buckets so that the percentiles
here are what Prometheus's `histogram_quantile` gives over the same runs (Decision 35 of
docs/design.md).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Double, Select, case, cast, extract, func, literal, select
from sqlalchemy.orm import Session

from kala_celery.store.tables import Beat, Job, Run, Worker

# Upper bounds (seconds) of /metrics's lateness histogram (api/metrics.py LATENESS_BUCKETS,
# filed by migration 0002's triggers); the last bucket is everything later (+Inf).
LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
IN_FLIGHT = ("pending", "sent", "started")
FAILED = ("failed", "lost")
MINUTE = timedelta(minutes=1)


@dataclass(frozen=True)
class Window:
    """`minutes` whole minutes ending with the one `now` is in."""

    start: datetime
    minutes: int

    @classmethod
    def ending(cls, now: datetime, minutes: int = 1440) -> Window:
        current = now.replace(second=0, microsecond=0)
        return cls(current - (minutes - 1) * MINUTE, minutes)

    @property
    def end(self) -> datetime:
        return self.start + self.minutes * MINUTE

    def minute(self, k: int) -> datetime:
        return self.start + k * MINUTE


@dataclass(frozen=True)
class Activity:
    """Per minute of the window: the runs due by their state now, and the lateness of the
    scheduled runs that started (a histogram under LATENESS_BUCKETS + [+Inf])."""

    window: Window
    by_state: dict[str, list[int]]  # state -> a count per minute
    lateness: list[list[int]]  # a histogram per minute

    def total(self, k: int) -> int:
        return sum(counts[k] for counts in self.by_state.values())

    def started(self, k: int) -> int:
        return sum(self.lateness[k])

    def percentile(self, k: int, q: float) -> float | None:
        return histogram_quantile(q, self.lateness[k])

    def hours(self) -> list[Hour]:
        """The window by clock hour (the first and last may be part of one), newest first,
        the hours without runs left out: what the charts' tables list."""
        out: list[Hour] = []
        for k in range(self.window.minutes - 1, -1, -1):
            start = self.window.minute(k).replace(minute=0)
            if not out or out[-1].start != start:
                out.append(Hour(start, {}, [0] * (len(LATENESS_BUCKETS) + 1)))
            hour = out[-1]
            for state, counts in self.by_state.items():
                if counts[k]:
                    hour.by_state[state] = hour.by_state.get(state, 0) + counts[k]
            for b, n in enumerate(self.lateness[k]):
                hour.lateness[b] += n
        return [hour for hour in out if hour.by_state]


@dataclass(frozen=True)
class Hour:
    start: datetime
    by_state: dict[str, int]  # state -> runs due in the hour
    lateness: list[int]  # the hour's histogram

    @property
    def total(self) -> int:
        return sum(self.by_state.values())

    @property
    def started(self) -> int:
        return sum(self.lateness)

    def percentile(self, q: float) -> float | None:
        return histogram_quantile(q, self.lateness)


def histogram_quantile(q: float, counts: list[int]) -> float | None:
    """Prometheus's histogram_quantile over one histogram of LATENESS_BUCKETS (+Inf last):
    linear within the bucket the rank falls in, from 0 in the first; the highest finite
    bound when it falls in +Inf; None for an empty histogram."""
    total = sum(counts)
    if total == 0:
        return None
    rank = q * total
    seen = 0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(LATENESS_BUCKETS):
                return float(LATENESS_BUCKETS[-1])
            low = 0.0 if i == 0 else float(LATENESS_BUCKETS[i - 1])
            return low + (LATENESS_BUCKETS[i] - low) * (rank - seen) / n
        seen += n
    return float(LATENESS_BUCKETS[-1])


def bucket_of(seconds: float) -> int:
    """The histogram bucket a lateness falls in (the same rule as the SQL below)."""
    return bisect.bisect_left(LATENESS_BUCKETS, seconds)


def _minute_key(dialect: str) -> Any:
    if dialect == "postgresql":
        return func.date_trunc("minute", Run.scheduled_for)
    return func.substr(Run.scheduled_for, 1, 16)  # "YYYY-MM-DD HH:MM" of the stored text


def _lateness(dialect: str) -> Any:
    if dialect == "postgresql":
        return func.greatest(0.0, cast(extract("epoch", Run.started_at - Run.scheduled_for),
                                       Double))
    return func.max(0, (func.julianday(Run.started_at) - func.julianday(Run.scheduled_for))
                    * 86400.0)


def _indexer(window: Window) -> Any:
    """A minute's key (SQLite's text, PostgreSQL's timestamp) -> its place in the window."""
    start = window.start.replace(tzinfo=None)
    known: dict[Any, int] = {}

    def index(key: Any) -> int:
        if key not in known:
            at = datetime.strptime(key, "%Y-%m-%d %H:%M") if isinstance(key, str) else key
            known[key] = int((at.replace(tzinfo=None) - start) // MINUTE)
        return known[key]

    return index


def _in_window(window: Window) -> list[Any]:
    return [Run.scheduled_for >= window.start, Run.scheduled_for < window.end]


def grouped_statement(dialect: str, window: Window) -> Select:
    """(minute, state, lateness bucket or -1, runs) of the runs due in the window.

    The rows are read in a subquery fenced with OFFSET 0, so each row's lateness is computed
    once (inlined, the bucket's CASE would compute it once per branch) and each database plans
    the range read on its own: ix_runs_due (PostgreSQL's EXTRACT is numeric: made a double)."""
    late = (Run.trigger == "schedule") & Run.started_at.is_not(None)
    rows = (
        select(
            _minute_key(dialect).label("minute"),
            Run.state.label("state"),
            case((late, _lateness(dialect))).label("late"),
        )
        .where(*_in_window(window))
        .offset(0)
        .subquery("due")
    )
    bucket = case(
        *[(rows.c.late <= bound, i) for i, bound in enumerate(LATENESS_BUCKETS)],
        else_=len(LATENESS_BUCKETS),
    )
    bucket = case((rows.c.late.is_not(None), bucket), else_=literal(-1))
    return (select(rows.c.minute, rows.c.state, bucket, func.count())
            .group_by(rows.c.minute, rows.c.state, bucket))


def activity(session: Session, window: Window) -> Activity:
    """One grouped scan of the window: (minute, state, lateness bucket) -> runs."""
    dialect = session.get_bind().dialect.name
    grouped = session.connection().execute(grouped_statement(dialect, window)).all()
    by_state: dict[str, list[int]] = {}
    lateness = [[0] * (len(LATENESS_BUCKETS) + 1) for _ in range(window.minutes)]
    index = _indexer(window)
    for key, state, b, n in grouped:
        k = index(key)
        if not 0 <= k < window.minutes:
            continue
        by_state.setdefault(state, [0] * window.minutes)[k] += n
        if b >= 0:
            lateness[k][b] += n
    return Activity(window, by_state, lateness)


@dataclass(frozen=True)
class InFlight:
    state: str
    runs: int
    oldest: datetime | None  # the oldest such run's creation


def in_flight(session: Session) -> list[InFlight]:
    """Runs not yet ended, by state (ix_runs_state), every state listed."""
    rows = {
        state: (n, oldest)
        for state, n, oldest in session.execute(
            select(Run.state, func.count(), func.min(Run.created_at))
            .where(Run.state.in_(IN_FLIGHT))
            .group_by(Run.state)
        ).all()
    }
    return [InFlight(s, *rows.get(s, (0, None))) for s in IN_FLIGHT]


@dataclass(frozen=True)
class Failing:
    job_id: str
    name: str | None  # None: the job is gone
    failures: int  # runs recorded in the window that failed or were lost
    runs: int  # runs recorded in the window
    last_due: datetime  # the latest failure's due time


def failing_most(session: Session, window: Window, *, top: int = 10) -> list[Failing]:
    """The jobs with the most failed or lost runs recorded (created) in the window, most
    first. By `created_at`, which ix_runs_state (state, created_at) reads as two short ranges;
    a run is recorded within moments of falling due, so this is the charts' window."""
    in_window = [Run.created_at >= window.start, Run.created_at < window.end]
    failed = (
        select(Run.job_id, Run.scheduled_for)
        .where(Run.state.in_(FAILED), *in_window)
        .offset(0)  # planned alone: the state index, not a walk of ix_runs_job_created
        .subquery("failed")
    )
    rows = session.execute(
        select(failed.c.job_id, func.count(), func.max(failed.c.scheduled_for))
        .group_by(failed.c.job_id)
        .order_by(func.count().desc(), failed.c.job_id)
        .limit(top)
    ).all()
    if not rows:
        return []
    ids = [row[0] for row in rows]
    names = dict(session.execute(select(Job.id, Job.name).where(Job.id.in_(ids))).all())
    totals = dict(session.execute(
        select(Run.job_id, func.count())
        .where(Run.job_id.in_(ids), *in_window)
        .group_by(Run.job_id)
    ).all())
    return [Failing(job_id, names.get(job_id), n, totals.get(job_id, n), last)
            for job_id, n, last in rows]


@dataclass(frozen=True)
class Heartbeat:
    kind: str  # "beat" or "worker"
    name: str
    started_at: datetime
    last_seen: datetime
    running: int  # runs a worker listed in its last heartbeat (a beat: 0)

    def fresh(self, now: datetime, silence: timedelta) -> bool:
        return self.last_seen >= now - silence


def heartbeats(session: Session) -> list[Heartbeat]:
    """Every beat and worker row, beats first, each kind newest heartbeat first."""
    beats = [
        Heartbeat("beat", name, started, seen, 0)
        for name, started, seen in session.execute(
            select(Beat.name, Beat.started_at, Beat.last_tick)
        ).all()
    ]
    workers = [
        Heartbeat("worker", name, started, seen, len(running.split()))
        for name, started, seen, running in session.execute(
            select(Worker.name, Worker.started_at, Worker.last_seen, Worker.running)
        ).all()
    ]
    order = lambda h: (h.last_seen, h.name)  # noqa: E731
    return sorted(beats, key=order, reverse=True) + sorted(workers, key=order, reverse=True)
