"""A schedule in words and times for people: "every hour from 1 Dec 09:00 UTC, 3 runs left",
"At 09:00 on Monday through Friday (Europe/Berlin)". What the dashboard shows next to a job
and under the form while a schedule is typed.

Pure: no I/O; the clock is passed in (it decides whether a time shows its year).
"""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from kala_celery.schedule.cron import CronSchedule
from kala_celery.schedule.iso8601 import Duration, Schedule

_UNITS = ("year", "month", "day", "hour", "minute", "second")


def plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def interval_words(interval: Duration) -> str:
    """"every hour", "every 2 weeks", "every 1 day 12 hours"."""
    values = (
        interval.years,
        interval.months,
        interval.days,
        interval.hours,
        interval.minutes,
        interval.seconds,
    )
    parts = [(n, unit) for n, unit in zip(values, _UNITS, strict=True) if n]
    if len(parts) == 1:
        n, unit = parts[0]
        if unit == "day" and n % 7 == 0:
            n, unit = n // 7, "week"
        return f"every {unit}" if n == 1 else f"every {plural(n, unit)}"
    return "every " + " ".join(plural(n, unit) for n, unit in parts)


def zone_label(tz: ZoneInfo) -> str:
    return "UTC" if tz.key in ("UTC", "Etc/UTC") else tz.key


def when(t: datetime | None, tz: ZoneInfo | None = None, *, now: datetime | None = None) -> str:
    """"1 Dec 09:00 UTC" (the year only when it is not this year, seconds only when set)."""
    if t is None:
        return ""
    tz = tz or ZoneInfo("UTC")
    local = t.astimezone(tz)
    now = now or datetime.now(UTC)
    text = f"{local.day} {local:%b}"
    if local.year != now.astimezone(tz).year:
        text += f" {local.year}"
    text += f" {local:%H:%M}"
    if local.second or local.microsecond:
        text += f":{local:%S}"
    return f"{text} {zone_label(tz)}"


def describe(rule: Schedule | CronSchedule, zone: ZoneInfo, text: str, *, runs_used: int = 0,
             now: datetime | None = None) -> str:
    """The words for a parsed schedule (`text` is what it was parsed from)."""
    if isinstance(rule, CronSchedule):
        expr = " ".join(text.split())
        try:
            words = CronSim(expr, now or datetime.now(UTC)).explain()
        except (CronSimError, ValueError, KeyError, IndexError):  # words cronsim cannot give
            words = f"cron {expr}"
        return f"{words} ({zone_label(zone)})"
    start = when(rule.start, zone, now=now)
    if rule.interval is None:
        return f"once at {start}"
    words = f"{interval_words(rule.interval)} from {start}"
    total = rule.total_runs
    if total is not None:
        left = max(total - runs_used, 0)
        words += ", no runs left" if left == 0 else f", {plural(left, 'run')} left"
    return words
