"""When a job fires: its ISO 8601 `schedule` or its `cron` (Decision 18), parsed once into
one value (`Parsed`: the rule, its zone, its kind, its next occurrences and its words) that
the API's checks, the previews (Decision 24), the beat's claim and the dashboard all use.

Pure: no I/O, no database, no clock reads.
The Decisions cited are those of docs/design.md.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from kala_celery.schedule import cron, words
from kala_celery.schedule import iso8601 as schedule

__all__ = ["MAX_PREVIEW", "Parsed", "Rule", "after", "parse"]

Rule = schedule.Schedule | cron.CronSchedule
MAX_PREVIEW = 100  # occurrences a preview lists at most


@dataclass(frozen=True)
class Parsed:
    """A job's schedule, parsed: `rule` does the maths, `zone` is the zone it was read in,
    `text` is the schedule or cron text it came from."""

    rule: Rule
    zone: ZoneInfo
    text: str

    @property
    def kind(self) -> str:
        """"cron" or "iso8601"."""
        return "cron" if isinstance(self.rule, cron.CronSchedule) else "iso8601"

    @property
    def total_runs(self) -> int | None:
        """Runs in all (None: until disabled)."""
        return self.rule.total_runs

    def first(self, now: datetime) -> datetime | None:
        """The occurrence a job gets when its schedule is given now (create, or a new
        schedule on replace): an ISO schedule's start (which must not be past: the job
        rules refuse that), a cron expression's first occurrence at or after now."""
        if isinstance(self.rule, cron.CronSchedule):
            return self.rule.first_at_or_after(now)
        return self.rule.start

    def after(self, t: datetime) -> datetime | None:
        """The first occurrence strictly after t (see `after`)."""
        return after(self.rule, t)

    def upcoming(self, next_run_at: datetime | None, runs_used: int,
                 count: int) -> list[datetime]:
        """The next `count` occurrences the beat fires, from `next_run_at` on, for a job that
        has used `runs_used` of its runs (Decision 4): what the beat's claim advances through
        when each run is on time (beat/claim.py: advance)."""
        if next_run_at is None:
            return []
        total = self.total_runs
        left = count if total is None else min(count, total - runs_used)
        found: list[datetime] = []
        moment: datetime | None = next_run_at
        while moment is not None and len(found) < left:
            found.append(moment)
            moment = after(self.rule, moment)
        return found

    def words(self, *, runs_used: int = 0, now: datetime | None = None) -> str:
        """"every hour from 1 Dec 09:00 UTC, 3 runs left" (schedule/words.py)."""
        return words.describe(self.rule, self.zone, self.text, runs_used=runs_used, now=now)


@functools.lru_cache(maxsize=4096)
def parse(schedule_text: str | None, cron_text: str | None, zone: str | None,
          default_zone: str) -> Parsed:
    """The job's schedule: its cron expression when it has one, else its ISO schedule.
    Raises schedule.ScheduleError (an unknown zone, or the text's own error)."""
    tz = schedule.resolve_zone(zone, default_zone)
    if cron_text:
        return Parsed(cron.parse_cron(cron_text, tz), tz, cron_text)
    text = schedule_text or ""
    return Parsed(schedule.parse_schedule(text, tz), tz, text)


def after(rule: Rule, t: datetime) -> datetime | None:
    """The first occurrence strictly after t (None: none before year 9999). Ignores how many
    runs an ISO schedule has left."""
    if isinstance(rule, cron.CronSchedule):
        return rule.next_after(t)
    if rule.interval is None:
        return rule.start if rule.start > t else None
    try:
        return rule.occurrence(rule.index_after(t))
    except schedule.ScheduleOverflowError:
        return None
