"""When a job fires: its ISO 8601 `schedule` or its `cron` (Decision 18), parsed the one way
the API, the beat and the preview routes (Decision 24) all use.

Pure: no I/O, no database, no clock reads.
The Decisions cited are those of docs/design.md.
"""

from __future__ import annotations

from datetime import datetime

from kala_celery.schedule import cron
from kala_celery.schedule import iso8601 as schedule

__all__ = ["MAX_PREVIEW", "Parsed", "after", "first", "parse", "upcoming"]

Parsed = schedule.Schedule | cron.CronSchedule
MAX_PREVIEW = 100  # occurrences a preview lists at most


def parse(schedule_text: str | None, cron_text: str | None, zone: str | None,
          default_zone: str) -> Parsed:
    """The job's schedule: its cron expression when it has one, else its ISO schedule.
    Raises schedule.ScheduleError (an unknown zone, or the text's own error)."""
    tz = schedule.resolve_zone(zone, default_zone)
    if cron_text:
        return cron.parse_cron(cron_text, tz)
    return schedule.parse_schedule(schedule_text or "", tz)


def after(parsed: Parsed, t: datetime) -> datetime | None:
    """The first occurrence strictly after t (None: none before year 9999). Ignores how many
    runs an ISO schedule has left."""
    if isinstance(parsed, cron.CronSchedule):
        return parsed.next_after(t)
    if parsed.interval is None:
        return parsed.start if parsed.start > t else None
    try:
        return parsed.occurrence(parsed.index_after(t))
    except schedule.ScheduleOverflowError:
        return None


def first(parsed: Parsed, now: datetime) -> datetime | None:
    """The occurrence a job gets when its schedule is given now (create, or a new schedule on
    replace): an ISO schedule's start (which must not be past: jobs.py refuses that), a cron
    expression's first occurrence at or after now."""
    if isinstance(parsed, cron.CronSchedule):
        return parsed.first_at_or_after(now)
    return parsed.start


def upcoming(parsed: Parsed, next_run_at: datetime | None, runs_used: int,
             count: int) -> list[datetime]:
    """The next `count` occurrences the beat fires, from `next_run_at` on, for a job that has
    used `runs_used` of its runs (Decision 4): what the beat's claim advances through when
    each run is on time (beat/claim.py: advance)."""
    if next_run_at is None:
        return []
    total = parsed.total_runs
    left = count if total is None else min(count, total - runs_used)
    found: list[datetime] = []
    moment: datetime | None = next_run_at
    while moment is not None and len(found) < left:
        found.append(moment)
        moment = after(parsed, moment)
    return found
