"""schedule: when a job runs, as pure values (no I/O, no clock but the one passed in).

- iso8601: Kala's schedules (`R5/2026-01-01T00:00:00Z/PT1H`) and durations, anchored
  occurrence k, next after t;
- cron: five-field cron expressions on cronsim, with Debian cron's DST rules (Decision 18);
- occurrences: either kind parsed, and its next N occurrences.

May import nothing of kala_celery. The names below are ISO 8601's, the vocabulary every stage
uses (`schedule.ScheduleError`, `schedule.parse_plain_duration`).
The Decisions cited are those of docs/design.md.
"""

from kala_celery.schedule.iso8601 import (
    Duration,
    Schedule,
    ScheduleError,
    ScheduleOverflowError,
    exact_duration,
    parse_duration,
    parse_epsilon,
    parse_plain_duration,
    parse_schedule,
    parse_start,
    resolve_zone,
)

__all__ = [
    "Duration",
    "Schedule",
    "ScheduleError",
    "ScheduleOverflowError",
    "exact_duration",
    "parse_duration",
    "parse_epsilon",
    "parse_plain_duration",
    "parse_schedule",
    "parse_start",
    "resolve_zone",
]
