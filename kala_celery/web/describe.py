"""Words and times for people: a schedule in words, its next occurrences, short times.

A schedule is parsed once (kala_celery/schedule/occurrences.py: its rule, zone, next
occurrences and words), the same parsing and anchored maths the beat uses when it claims and
advances a job; its words are kala_celery/schedule/words.py's.
The Decisions cited are those of docs/design.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from kala_celery import schedule
from kala_celery.errors import InvalidJob
from kala_celery.schedule import occurrences
from kala_celery.schedule.words import plural, when
from kala_celery.store import jobs

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


def zone_or_utc(name: str | None, default: str) -> ZoneInfo:
    """The job's zone for showing its times (UTC when it has none or it is unknown)."""
    try:
        return schedule.resolve_zone(name, default)
    except schedule.ScheduleError:
        return ZoneInfo("UTC")


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
        label = plural(days, "day")
    else:
        label = plural(round(days / 365.2425), "year")
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
    if not (text or cron):
        return Described("once, when created")
    try:
        parsed = occurrences.parse(text, cron, zone_name, default_zone)
    except schedule.ScheduleError as exc:
        return Described(cron or text, str(exc))
    return Described(parsed.words(runs_used=runs_used, now=now))


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
    try:  # the beat's own parsing
        parsed = occurrences.parse(job.schedule, job.cron, job.timezone, default_zone)
    except schedule.ScheduleError as exc:
        return [], f"the schedule cannot be read: {exc}"
    if parsed.kind == "cron":  # repeats until disabled
        if job.disabled:
            return parsed.upcoming(parsed.first(now), 0, count), "if it is enabled now"
        return parsed.upcoming(job.next_run_at, 0, count), (
            "" if job.next_run_at else "nothing scheduled")
    rule = parsed.rule
    total = rule.total_runs
    left = None if total is None else total - job.runs_used
    if job.is_done or left == 0:
        return [], "done: every run of the schedule has happened"
    if job.disabled:
        first = now if rule.interval is not None else rule.start
        return upcoming(rule, first, left, count), "if it is enabled now"
    if job.next_run_at is None:
        return [], "nothing scheduled"
    return upcoming(rule, job.next_run_at, left, count), ""


def preview(
    text: str, zone_name: str | None, default_zone: str, *, now: datetime, count: int = 5,
    cron: str = "",
) -> dict[str, Any]:
    """What the form shows while a schedule or cron is typed: words and the first
    occurrences, from one parse by the create's own checks (Decision 24: the same code and
    the same message a create gives when the schedule is refused)."""
    text, cron, zone_name = text.strip(), cron.strip(), (zone_name or "").strip()
    if not (text or cron):
        return {"ok": True, "words": "once, as soon as it is created", "occurrences": []}
    data = {k: v for k, v in (("schedule", text), ("cron", cron), ("timezone", zone_name)) if v}
    try:
        parsed = jobs.validate_timing(data, jobs.Rules(default_timezone=default_zone), now)
    except InvalidJob as exc:
        return {"ok": False, "error": exc.reason, "occurrences": []}
    times = parsed.upcoming(parsed.first(now), 0, count)
    return {
        "ok": True,
        "words": parsed.words(now=now),
        "occurrences": [when(t, parsed.zone, now=now) for t in times],
        "note": "",
    }
