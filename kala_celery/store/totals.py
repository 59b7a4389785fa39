"""Kala's app stats (`GET /api/v1/stats/`, docs/kala.md §12): totals over every job, in one
aggregate query; counters near their 64-bit limit are summed in halves (Decision 25 of
docs/design.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from kala_celery.store.tables import Job


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
