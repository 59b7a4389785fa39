"""A run's retry policy: how many attempts, how long between them, and until when one may
start (docs/design.md Decision 7)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from kala_celery import schedule
from kala_celery.config import Settings


class Occurrence(Protocol):
    """What the policy reads of a run (an ORM Run or the worker's RunInfo)."""

    trigger: str
    scheduled_for: datetime


@dataclass(frozen=True)
class RetryPolicy:
    """docs/design.md Decision 7: `retries` extra attempts, `retry_delay` (doubling with
    `retry_backoff`), and no attempt starting after scheduled_for + epsilon (for scheduled
    runs)."""

    attempts: int
    delay: timedelta
    backoff: bool
    deadline: datetime | None

    @classmethod
    def of(cls, job: Any, run: Occurrence, settings: Settings) -> RetryPolicy:
        deadline = None
        if run.trigger == "schedule" and (job.schedule or job.cron) and job.epsilon:
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
