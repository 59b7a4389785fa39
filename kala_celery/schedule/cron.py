"""Cron schedules (extension `cron`, Decision 18 in docs/design.md): parsing and occurrences.

Pure: no I/O, no database, no clock reads. The expression is five fields (minute, hour,
day of month, month, day of week), evaluated by cronsim on the wall clock of the job's zone.
cronsim follows Debian cron at DST changes, which are the rules of Decision 18:

- a job with a fixed minute and hour (neither field starts with ``*``) whose time falls in
  a spring-forward gap fires once, at the first wall-clock minute after the gap (02:30 on a
  day New York jumps from 02:00 to 03:00 fires at 03:00 EDT); at fall-back, a time that
  occurs twice fires once, at its first occurrence (fold=0, the summer-time one);
- a job whose minute or hour field starts with ``*`` (``*/15 * * * *``, ``0 * * * *``)
  follows elapsed time: nothing fires for wall times the gap removes, and the repeated hour
  fires twice.

Occurrences are returned as aware UTC datetimes, like schedule.Schedule's.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from kala_celery.schedule.iso8601 import ScheduleError

__all__ = ["MAX_COUNTED", "CronSchedule", "parse_cron"]

# Passed occurrences are counted one by one (cronsim iterates); past this many the count
# stops (a beat away for a year on an every-minute job): the missed counter adds this bound.
MAX_COUNTED = 10_000
_HINT = 'expected five fields: minute hour day-of-month month day-of-week, e.g. "0 9 * * MON-FRI"'
_TICK = timedelta(microseconds=1)


@dataclass(frozen=True)
class CronSchedule:
    """A parsed cron expression in a zone. Repeats until the job is disabled or deleted."""

    expr: str
    tz: ZoneInfo

    total_runs = None  # never used up (as schedule.Schedule.total_runs for R)

    def next_after(self, t: datetime) -> datetime | None:
        """The first occurrence strictly after t (aware UTC), or None when there is none
        before year 9999 (or in the 50 years cronsim looks ahead)."""
        if t.tzinfo is None or t.utcoffset() is None:
            raise ValueError("t must be a timezone-aware datetime")
        try:
            for found in CronSim(self.expr, t.astimezone(self.tz)):
                moment = found.astimezone(UTC)
                # cronsim walks the wall clock: in a repeated (fall-back) hour it may hand
                # back the first pass of a wall time that t is already past. Skip those.
                if moment > t:
                    return moment
        except (OverflowError, ValueError):
            return None  # beyond year 9999
        return None

    def first_at_or_after(self, t: datetime) -> datetime | None:
        """The first occurrence at or after t."""
        return self.next_after(t - _TICK)

    def latest_at_or_before(self, t: datetime) -> datetime | None:
        """The last occurrence at or before t, or None when there is none in 50 years."""
        if t.tzinfo is None or t.utcoffset() is None:
            raise ValueError("t must be a timezone-aware datetime")
        latest = None
        try:
            for found in CronSim(self.expr, (t + _TICK).astimezone(self.tz), reverse=True):
                latest = found.astimezone(UTC)
                if latest <= t:
                    break
        except (OverflowError, ValueError):
            return None
        if latest is None or latest > t:
            return None
        # In a repeated (fall-back) hour the wall clock went back, so walking back from t's
        # wall time can land before an occurrence t is already past: walk forward again.
        while (later := self.next_after(latest)) is not None and later <= t:
            latest = later
        return latest

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """The first `count` occurrences at or after `after` (fewer when they run out)."""
        found: list[datetime] = []
        moment = self.first_at_or_after(after)
        while moment is not None and len(found) < count:
            found.append(moment)
            moment = self.next_after(moment)
        return found

    def count_between(self, after: datetime, upto: datetime) -> int:
        """Occurrences in (after, upto], counted up to MAX_COUNTED."""
        n = 0
        moment = self.next_after(after)
        while moment is not None and moment <= upto and n < MAX_COUNTED:
            n += 1
            moment = self.next_after(moment)
        return n


def parse_cron(text: str, tz: ZoneInfo) -> CronSchedule:
    """Parse a five-field cron expression (names like MON-FRI and JAN allowed; also cronsim's
    L, LW and #). Raises ScheduleError with the reason. Parsed expressions are cached."""
    if not isinstance(text, str):
        raise ScheduleError("cron must be a string")
    return _parse_cron(text, tz)


@functools.lru_cache(maxsize=4096)
def _parse_cron(text: str, tz: ZoneInfo) -> CronSchedule:
    fields = text.split()
    if len(fields) != 5:
        raise ScheduleError(f"invalid cron {text!r}: {_HINT}")
    expr = " ".join(fields)
    try:
        CronSim(expr, datetime(2000, 1, 1, tzinfo=tz))
    except CronSimError as exc:
        raise ScheduleError(f"invalid cron {text!r}: {exc} ({_HINT})") from None
    except (IndexError, KeyError, ValueError):  # cronsim's own checks missed a shape
        raise ScheduleError(f"invalid cron {text!r}: {_HINT}") from None
    parsed = CronSchedule(expr, tz)
    if parsed.next_after(datetime(2000, 1, 1, tzinfo=UTC)) is None:
        raise ScheduleError(f"invalid cron {text!r}: it never fires")
    return parsed
