"""Words and times for people: a schedule in words, its next occurrences, short times.

The occurrences come from kala_celery.schedule and kala_celery.jobs.parse_job_schedule, the
same parsing and anchored maths the beat uses when it claims and advances a job.
The Decisions cited are those of docs/design.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from cronsim import CronSim, CronSimError

from kala_celery import schedule
from kala_celery.schedule import occurrences

_UNITS = ("year", "month", "day", "hour", "minute", "second")
# Terminal colour and cursor sequences, and control characters other than tab and newline.
_UNREADABLE = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[@-_]|[\x00-\x08\x0b-\x1f\x7f]")


def readable(text: str | None) -> str:
    """A run's output or error as text to read: without terminal escapes (colours) and
    control characters; a carriage return (progress bars) keeps the line's last state."""
    if not text:
        return ""
    lines = [line.rsplit("\r", 1)[-1] if "\r" in line else line
             for line in text.replace("\r\n", "\n").split("\n")]
    return _UNREADABLE.sub("", "\n".join(lines))


def _plural(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def interval_words(interval: schedule.Duration) -> str:
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
        return f"every {unit}" if n == 1 else f"every {_plural(n, unit)}"
    return "every " + " ".join(_plural(n, unit) for n, unit in parts)


def zone_label(tz: ZoneInfo) -> str:
    return "UTC" if tz.key in ("UTC", "Etc/UTC") else tz.key


def zone_or_utc(name: str | None, default: str) -> ZoneInfo:
    """The job's zone for showing its times (UTC when it has none or it is unknown)."""
    try:
        return schedule.resolve_zone(name, default)
    except schedule.ScheduleError:
        return ZoneInfo("UTC")


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


def ago(t: datetime | None, now: datetime | None = None) -> str:
    """"in 5 min", "3 h ago", "just now"."""
    if t is None:
        return ""
    now = now or datetime.now(UTC)
    delta = (t - now).total_seconds()
    future = delta > 0
    seconds = abs(delta)
    if seconds < 45:
        return "in a few seconds" if future else "just now"
    minutes = round(seconds / 60)
    hours = round(seconds / 3600)
    days = round(seconds / 86_400)
    if minutes < 60:
        label = f"{minutes} min"
    elif hours < 24:
        label = f"{hours} h"
    elif days < 365:
        label = _plural(days, "day")
    else:
        label = _plural(round(days / 365.2425), "year")
    return f"in {label}" if future else f"{label} ago"


def size(chars: int) -> str:
    """A text's size for people: "840 B", "31 KB"."""
    return f"{chars} B" if chars < 1000 else f"{chars / 1000:,.0f} KB"


def duration(ns: int | None) -> str:
    """A run's duration: "120 ms", "3.4 s", "2 min 5 s"."""
    if ns is None:
        return ""
    seconds = ns / 1e9
    if seconds < 1:
        return f"{ns / 1e6:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {rest} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


@dataclass(frozen=True)
class Described:
    """A schedule in words, or why it could not be read."""

    words: str
    error: str = ""


def schedule_words(
    text: str,
    zone_name: str | None,
    default_zone: str,
    *,
    runs_used: int = 0,
    is_child: bool = False,
    now: datetime | None = None,
    cron: str | None = None,
) -> Described:
    """"every hour from 1 Dec 09:00 UTC, 3 runs left" / "once at ..." / "after its parent"."""
    if is_child:
        return Described("after its parent job")
    if cron:
        return cron_words(cron, zone_name, default_zone)
    if not text:
        return Described("once, when created")
    try:
        tz = schedule.resolve_zone(zone_name, default_zone)
        parsed = schedule.parse_schedule(text, tz)
    except schedule.ScheduleError as exc:
        return Described(text, str(exc))
    start = when(parsed.start, tz, now=now)
    if parsed.interval is None:
        return Described(f"once at {start}")
    words = f"{interval_words(parsed.interval)} from {start}"
    total = parsed.total_runs
    if total is not None:
        left = max(total - runs_used, 0)
        words += ", no runs left" if left == 0 else f", {_plural(left, 'run')} left"
    return Described(words)


def cron_words(expr: str, zone_name: str | None, default_zone: str) -> Described:
    """"At 09:00 on Monday through Friday (Europe/Berlin)", cronsim's own words."""
    try:
        tz = schedule.resolve_zone(zone_name, default_zone)
        occurrences.parse(None, expr, zone_name, default_zone)
        words = CronSim(" ".join(expr.split()), datetime.now(UTC)).explain()
    except schedule.ScheduleError as exc:
        return Described(expr, str(exc))
    except (CronSimError, ValueError, KeyError, IndexError):  # words cronsim cannot give
        words = f"cron {expr}"
    return Described(f"{words} ({zone_label(tz)})")


def upcoming(parsed: schedule.Schedule, first: datetime, left: int | None, count: int) -> list:
    """Up to `count` occurrences from the one at or after `first`, at most `left` of them."""
    limit = count if left is None else min(count, max(left, 0))
    if limit <= 0:
        return []
    if parsed.interval is None:
        return [parsed.start]
    out = []
    k = parsed.index_at_or_after(first)
    while len(out) < limit:
        try:
            out.append(parsed.occurrence(k))
        except schedule.ScheduleOverflowError:
            break
        k += 1
    return out


def job_occurrences(
    job: Any, default_zone: str, *, is_child: bool, now: datetime, count: int = 5
) -> tuple[list[datetime], str]:
    """The job's next `count` scheduled runs and a note. A disabled job shows the ones it
    would get if enabled now (what enabling does: the next occurrence at or after now)."""
    if is_child:
        return [], "runs after its parent job's runs succeed"
    if not (job.schedule or job.cron):
        return [], "no schedule: it ran once when it was created"
    from kala_celery.store.jobs import parse_job_schedule  # the beat's own parsing

    try:
        parsed = parse_job_schedule(job, default_zone)
    except schedule.ScheduleError as exc:
        return [], f"the schedule cannot be read: {exc}"
    if not isinstance(parsed, schedule.Schedule):  # cron: repeats until disabled
        if job.disabled:
            first = parsed.first_at_or_after(now)
            return occurrences.upcoming(parsed, first, 0, count), "if it is enabled now"
        return occurrences.upcoming(parsed, job.next_run_at, 0, count), (
            "" if job.next_run_at else "nothing scheduled")
    total = parsed.total_runs
    left = None if total is None else total - job.runs_used
    if job.is_done or left == 0:
        return [], "done: every run of the schedule has happened"
    if job.disabled:
        first = now if parsed.interval is not None else parsed.start
        return upcoming(parsed, first, left, count), "if it is enabled now"
    if job.next_run_at is None:
        return [], "nothing scheduled"
    return upcoming(parsed, job.next_run_at, left, count), ""


def preview(
    text: str, zone_name: str | None, default_zone: str, *, now: datetime, count: int = 5,
    cron: str = "",
) -> dict[str, Any]:
    """What the form shows while a schedule or cron is typed: words and the first
    occurrences, from the API's preview (Decision 24: the same code and the same message a
    create gives when the schedule is refused)."""
    from kala_celery.api.preview import schedule_times
    from kala_celery.errors import InvalidJob
    from kala_celery.store.jobs import Rules

    text, cron, zone_name = text.strip(), cron.strip(), (zone_name or "").strip()
    if not (text or cron):
        return {"ok": True, "words": "once, as soon as it is created", "occurrences": []}
    data = {k: v for k, v in (("schedule", text), ("cron", cron), ("timezone", zone_name)) if v}
    try:
        times = schedule_times(data, Rules(default_timezone=default_zone), now, count)
    except InvalidJob as exc:
        return {"ok": False, "error": exc.reason, "occurrences": []}
    tz = schedule.resolve_zone(zone_name or None, default_zone)
    words = schedule_words(text, zone_name or None, default_zone, now=now, cron=cron)
    return {
        "ok": True,
        "words": words.words,
        "occurrences": [when(t, tz, now=now) for t in times],
        "note": "",
    }
