"""Kala schedules and durations: parsing and anchored occurrence maths.

Pure: no I/O, no database, no clock reads. A schedule is ``R<n>/<start>/<interval>``
(docs/kala.md §5). Occurrence k is ``start + k * interval`` computed directly (Decision 3 in
docs/design.md): calendar units (Y, M, W, D) step on the wall clock of the schedule's zone
with month ends clamped, time units (H, M, S) are exact elapsed time.
"""

from __future__ import annotations

import calendar
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import isodate

__all__ = [
    "ZERO_INTERVAL_STEP",
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

_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)
_SECONDS_PER_DAY = 86_400
_MEAN_YEAR_DAYS = 365.2425  # Gregorian mean
_MEAN_MONTH_DAYS = _MEAN_YEAR_DAYS / 12


class ScheduleError(ValueError):
    """A schedule, duration, start or zone we refuse; str(e) is the human reason."""


class ScheduleOverflowError(ScheduleError, OverflowError):
    """The computed instant lies beyond the last representable time (year 9999)."""


# --------------------------------------------------------------------------- durations


@dataclass(frozen=True)
class Duration:
    """A Kala duration. Weeks are folded into days (* 7)."""

    years: int = 0
    months: int = 0
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if type(value) is not int or value < 0:
                raise ScheduleError(f"duration {f.name} must be a non-negative integer")

    def is_zero(self) -> bool:
        """True when every component is zero."""
        return not (
            self.years or self.months or self.days or self.hours or self.minutes or self.seconds
        )

    @property
    def _total_months(self) -> int:
        return self.years * 12 + self.months

    @property
    def _time_seconds(self) -> int:
        return self.hours * 3600 + self.minutes * 60 + self.seconds

    def add_to(self, t: datetime, tz: ZoneInfo, times: int = 1) -> datetime:
        """``t + times * self`` as an aware UTC datetime (anchored, see module docstring).

        Calendar part on the wall clock of ``t`` in ``tz`` (months clamp to the month end,
        the wall time resolves with fold=0), then the time part as exact elapsed time.
        Raises ScheduleOverflowError past year 9999.
        """
        if t.tzinfo is None or t.utcoffset() is None:
            raise ValueError("t must be a timezone-aware datetime")
        if times < 0:
            raise ValueError("times must be >= 0")
        months = self._total_months * times
        days = self.days * times
        seconds = self._time_seconds * times
        result = t.astimezone(UTC)
        if months or days:
            result = _calendar_step(t, tz, months, days)
        if seconds:
            try:
                result += timedelta(seconds=seconds)
            except OverflowError:
                raise _beyond() from None
        return result

    def approx_seconds(self) -> float:
        """Nominal length in seconds (mean Gregorian month and year, 24-hour days)."""
        days = self.years * _MEAN_YEAR_DAYS + self.months * _MEAN_MONTH_DAYS + self.days
        return days * _SECONDS_PER_DAY + self._time_seconds


# A zero interval (PT0S, P0D) with a finite count: its runs follow one another a second
# apart (Kala runs them back to back; a second is the beat's tick). Forever is refused.
ZERO_INTERVAL_STEP = Duration(seconds=1)


def _beyond() -> ScheduleOverflowError:
    return ScheduleOverflowError("the time lies beyond year 9999")


def _calendar_step(t: datetime, tz: ZoneInfo, months: int, days: int) -> datetime:
    """Wall clock of t in tz, plus months (clamped) then days, resolved with fold=0, in UTC."""
    try:
        local = t.astimezone(tz)
    except (OverflowError, ValueError):
        if t.year > 5000:
            raise _beyond() from None
        raise ScheduleError("the time lies before year 1 in the schedule's time zone") from None
    year_carry, month0 = divmod(local.month - 1 + months, 12)
    year = local.year + year_carry
    if year > 9999:
        raise _beyond()
    month = month0 + 1
    day = min(local.day, calendar.monthrange(year, month)[1])
    try:
        new_date = date(year, month, day) + timedelta(days=days)
        wall = datetime.combine(new_date, local.time(), tzinfo=tz).replace(fold=0)
        return wall.astimezone(UTC)
    except (OverflowError, ValueError):
        raise _beyond() from None


# Kala's utils/iso8601 grammar: two unanchored regexes, weeks first; [0-9] because Go's \d is
# ASCII only.
_KALA_WEEK_RE = re.compile(r"P([0-9]+)W")
_KALA_FULL_RE = re.compile(
    r"P(?:([0-9]+)Y)?(?:([0-9]+)M)?(?:([0-9]+)D)?"
    r"(?:T(?:([0-9]+)H)?(?:([0-9]+)M)?(?:([0-9]+)S)?)?"
)
_DURATION_HINT = "expected an ISO 8601 duration like PT1H, P1D, P2W or P1DT12H (whole numbers)"


def _fits_int64(digits: str) -> bool:
    """Unsigned decimal digits within int64 (checked on the length first: no huge int())."""
    significant = digits.lstrip("0")
    return len(significant) <= 19 and int(significant or "0") <= _INT64_MAX


def _kala_int(digits: str, what: str) -> int:
    if not _fits_int64(digits):
        raise ScheduleError(f"invalid {what}: the number {digits} is too large")
    return int(digits)


def _parse_kala_duration(text: object, what: str) -> Duration:
    if not isinstance(text, str):
        raise ScheduleError(f"{what} must be a string")
    week = _KALA_WEEK_RE.search(text)
    if week:
        return Duration(days=_kala_int(week.group(1), what) * 7)
    full = _KALA_FULL_RE.search(text)
    if full is None or not any(full.groups()):
        raise ScheduleError(f"invalid {what} {text!r}: {_DURATION_HINT}")
    y, mo, d, h, mi, s = (0 if g is None else _kala_int(g, what) for g in full.groups())
    return Duration(years=y, months=mo, days=d, hours=h, minutes=mi, seconds=s)


def parse_duration(text: str) -> Duration:
    """Parse a Kala duration (interval/epsilon grammar, unanchored like Kala)."""
    return _parse_kala_duration(text, "duration")


def parse_epsilon(text: str) -> Duration | None:
    """``""`` → None; else a Kala duration (zero allowed)."""
    if text == "":
        return None
    return _parse_kala_duration(text, "epsilon")


# Strict grammar for our extension durations; isodate does the arithmetic.
_PLAIN_RE = re.compile(
    r"P(?:[0-9]+(?:[.,][0-9]+)?[YMWD])*(?:T(?:[0-9]+(?:[.,][0-9]+)?[HMS])+)?", re.ASCII
)
_PLAIN_HINT = "expected an ISO 8601 duration like PT30S, PT1.5S, PT10M or P30D"


def exact_duration(every: timedelta) -> str:
    """Whole seconds as an ISO 8601 duration of exact units (`PT30S`, `PT1H30M`, `PT48H`):
    hours, never days, since a day in a zone with DST is not always 24 hours. What
    parse_plain_duration reads back."""
    hours, rest = divmod(int(every.total_seconds()), 3600)
    minutes, seconds = divmod(rest, 60)
    text = "PT" + (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    return text + (f"{seconds}S" if seconds or text == "PT" else "")


def parse_plain_duration(text: str) -> timedelta:
    """Strict ISO 8601 duration of fixed length (no years/months, not negative)."""
    if not isinstance(text, str):
        raise ScheduleError("duration must be a string")
    return _parse_plain(text)


@functools.lru_cache(maxsize=4096)
def _parse_plain(text: str) -> timedelta:
    """parse_plain_duration of a string, remembered: a worker parses a job's timeout, retry
    delay and epsilon, and KALA_WORKER_TIMEOUT, on every run."""
    if text.startswith("-"):
        raise ScheduleError(f"invalid duration {text!r}: negative durations are not allowed")
    if not _PLAIN_RE.fullmatch(text) or not any(c.isdigit() for c in text):
        raise ScheduleError(f"invalid duration {text!r}: {_PLAIN_HINT}")
    date_part = text.partition("T")[0]
    if "Y" in date_part or "M" in date_part:
        raise ScheduleError(
            f"invalid duration {text!r}: years and months have no fixed length; "
            "use days (D) or weeks (W)"
        )
    try:
        value = isodate.parse_duration(text)
    except OverflowError:
        raise ScheduleError(f"invalid duration {text!r}: too large") from None
    except ValueError:
        raise ScheduleError(f"invalid duration {text!r}: {_PLAIN_HINT}") from None
    if not isinstance(value, timedelta):  # pragma: no cover - Y/M refused above
        raise ScheduleError(f"invalid duration {text!r}: {_PLAIN_HINT}")
    return value


# --------------------------------------------------------------------------- start


_START_RE = re.compile(
    r"([0-9]{4})-([0-9]{2})-([0-9]{2})T([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]+))?(Z|[+-][0-9]{2}:[0-9]{2})?",
    re.ASCII,
)
_START_HINT = "expected RFC 3339 like 2026-12-01T09:00:00Z or 2026-12-01T10:00:00+01:00"


def _parse_start(text: object, what: str) -> datetime:
    if not isinstance(text, str):
        raise ScheduleError(f"{what} must be a string")
    m = _START_RE.fullmatch(text)
    if m is None:
        raise ScheduleError(f"invalid {what} {text!r}: {_START_HINT}")
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    fraction, zone = m.group(7), m.group(8)
    micro = int(fraction[:6].ljust(6, "0")) if fraction else 0
    tzinfo: timezone = UTC
    if zone and zone != "Z":
        off_h, off_m = int(zone[1:3]), int(zone[4:6])
        if off_h > 23 or off_m > 59:
            raise ScheduleError(f"invalid {what} {text!r}: zone offset out of range")
        offset = timedelta(hours=off_h, minutes=off_m)
        tzinfo = timezone(-offset if zone[0] == "-" else offset)
    if second > 59:  # datetime would accept nothing above 59 either; say which field
        raise ScheduleError(f"invalid {what} {text!r}: second out of range")
    try:
        parsed = datetime(year, month, day, hour, minute, second, micro, tzinfo=tzinfo)
    except ValueError as exc:
        raise ScheduleError(f"invalid {what} {text!r}: {exc}") from None
    try:
        return parsed.astimezone(UTC)
    except OverflowError:
        raise ScheduleError(f"invalid {what} {text!r}: out of range in UTC") from None


def parse_start(text: str) -> datetime:
    """Strict RFC 3339 (zone-less = UTC) → aware UTC datetime, microseconds truncated."""
    return _parse_start(text, "start")


# --------------------------------------------------------------------------- zones


_ZONE_RE = re.compile(r"[A-Za-z0-9_+-]+(?:/[A-Za-z0-9_+-]+)*", re.ASCII)


def resolve_zone(name: str | None, default: str = "UTC") -> ZoneInfo:
    """IANA zone by name; None or "" → ``default``. Unknown/invalid names → ScheduleError."""
    key = name if name else default
    if not isinstance(key, str) or len(key) > 255 or not _ZONE_RE.fullmatch(key):
        raise ScheduleError(f"unknown time zone {key!r}: expected an IANA name like Europe/Berlin")
    try:
        return ZoneInfo(key)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        raise ScheduleError(
            f"unknown time zone {key!r}: expected an IANA name like Europe/Berlin"
        ) from None


# --------------------------------------------------------------------------- schedules


_SHAPE_HINT = "schedule must look like R<n>/<start>/<interval>, e.g. R5/2026-12-01T09:00:00Z/PT1H"
_REPEAT_RE = re.compile(r"[+-]?[0-9]+", re.ASCII)


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule. ``repeat`` = repetitions after the first run (None = forever)."""

    repeat: int | None
    start: datetime
    interval: Duration | None
    tz: ZoneInfo

    def __post_init__(self) -> None:
        if self.repeat is not None and (type(self.repeat) is not int or self.repeat < 0):
            raise ScheduleError("repeat must be None (forever) or a non-negative integer")
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            raise ScheduleError("start must be a timezone-aware datetime")
        object.__setattr__(self, "start", self.start.astimezone(UTC))
        if self.repeat == 0:
            if self.interval is not None:
                raise ScheduleError("a schedule that runs once (R0) has no interval")
        elif self.interval is None or self.interval.is_zero():
            raise ScheduleError("interval must be greater than zero for a repeating schedule")

    @property
    def total_runs(self) -> int | None:
        """Runs in all (repeat + 1); None = forever."""
        return None if self.repeat is None else self.repeat + 1

    def occurrence(self, k: int) -> datetime:
        """Occurrence k (k >= 0) = start + k * interval, aware UTC. Ignores total_runs.

        Raises ScheduleOverflowError past year 9999, ScheduleError for k > 0 without interval.
        """
        if k < 0:
            raise ValueError("occurrence index must be >= 0")
        if k == 0:
            return self.start
        if self.interval is None:
            raise ScheduleError("a schedule that runs once (R0) has only occurrence 0")
        return self.interval.add_to(self.start, self.tz, k)

    def index_at_or_after(self, t: datetime) -> int:
        """Smallest k >= 0 with occurrence(k) >= t (may lie past year 9999)."""
        return self._first_index(t, lambda occ: occ >= t)

    def index_after(self, t: datetime) -> int:
        """Smallest k >= 0 with occurrence(k) > t (may lie past year 9999)."""
        return self._first_index(t, lambda occ: occ > t)

    # -- internals ------------------------------------------------------------------

    def _first_index(self, t: datetime, hit: Callable[[datetime], bool]) -> int:
        """Smallest k with hit(occurrence(k)); hit is monotone in k (False... then True...).

        Starts at an arithmetic estimate, gallops outwards (1, 2, 4, ... steps) until the
        answer is bracketed, then bisects: O(1) evaluations for a good estimate, O(log k)
        at worst, never a walk over past occurrences. An occurrence past year 9999 counts
        as a hit (it is later than any t).
        """
        if t.tzinfo is None or t.utcoffset() is None:
            raise ValueError("t must be a timezone-aware datetime")

        def reached(k: int) -> bool:
            try:
                return hit(self.occurrence(k))
            except ScheduleOverflowError:
                return True

        if reached(0):
            return 0
        if self.interval is None:
            return 1
        guess = max(self._estimate(t), 1)
        if reached(guess):
            hi, step = guess, 1
            while True:
                lo = hi - step
                if lo <= 0:
                    lo = 0
                    break
                if not reached(lo):
                    break
                hi, step = lo, step * 2
        else:
            lo, step = guess, 1
            while True:
                hi = lo + step
                if reached(hi):
                    break
                lo, step = hi, step * 2
        while hi - lo > 1:  # invariant: not reached(lo), reached(hi)
            mid = (lo + hi) // 2
            if reached(mid):
                hi = mid
            else:
                lo = mid
        return hi

    def _estimate(self, t: datetime) -> int:
        """An arithmetic guess of the index of t (t after start; off by a few at most)."""
        interval = self.interval
        assert interval is not None
        months, days, seconds = interval._total_months, interval.days, interval._time_seconds
        elapsed = t - self.start
        if not months and not days:  # time units only: exact
            elapsed_us = elapsed // timedelta(microseconds=1)
            return -(-elapsed_us // (seconds * 1_000_000))
        try:
            if not seconds and not (months and days):
                s_local, t_local = self.start.astimezone(self.tz), t.astimezone(self.tz)
                if months:
                    diff = (t_local.year - s_local.year) * 12 + t_local.month - s_local.month
                    return max(diff // months, 0)
                return max((t_local.date() - s_local.date()).days // days, 0)
        except (OverflowError, ValueError):
            pass  # a local wall clock beyond the datetime range: use the nominal length
        ratio = elapsed.total_seconds() / interval.approx_seconds()
        return max(math.floor(ratio), 0)


def _parse_repeat(part: str) -> int | None:
    """Kala's repeat number as written (None for a bare "R"); not yet normalised."""
    first = part.find("R")
    if first < 0:
        raise ScheduleError(
            f"repeat {part!r} must start with R: R = forever, R0 = once, R5 = 6 runs in all"
        )
    if part == "R":
        return None
    number = part[first + 1 :].split("R", 1)[0]
    if not _REPEAT_RE.fullmatch(number):
        raise ScheduleError(
            f"repeat {part!r} must be R followed by a whole number (R, R0, R5), or R alone"
        )
    magnitude = number.lstrip("+-").lstrip("0") or "0"
    limit = -_INT64_MIN if number.startswith("-") else _INT64_MAX
    if len(magnitude) > 19 or int(magnitude) > limit:  # Go's strconv.ParseInt(s, 10, 64)
        raise ScheduleError(f"repeat {part!r} is out of range")
    return int(number)


def parse_schedule(text: str, tz: ZoneInfo | None = None) -> Schedule:
    """Parse ``R<n>/<start>/<interval>``. Does not compare the start with the clock.
    Schedules are immutable: the beat parses a job's schedule at every occurrence it claims,
    so parsed ones are kept (a bounded cache)."""
    if not isinstance(text, str):
        raise ScheduleError("schedule must be a string")
    return _parse_schedule(text, ZoneInfo("UTC") if tz is None else tz)


@functools.lru_cache(maxsize=4096)
def _parse_schedule(text: str, tz: ZoneInfo) -> Schedule:
    parts = text.split("/")
    if len(parts) != 3:
        raise ScheduleError(_SHAPE_HINT)
    written = _parse_repeat(parts[0])
    # R and R-1 repeat forever; other negatives run once (as Kala).
    repeat = None if written is None or written == -1 else max(written, 0)
    start = _parse_start(parts[1], "start")
    interval = None
    if written != 0:  # Kala parses the interval for any non-zero number, R-5 included
        interval = _parse_kala_duration(parts[2], "interval")
        if repeat == 0:
            interval = None
        elif interval.is_zero():
            if repeat is None:  # back to back forever: a busy loop (Decision 23)
                raise ScheduleError("interval must be greater than zero for a repeating schedule")
            interval = ZERO_INTERVAL_STEP  # Kala runs them back to back (Decision 23)
    return Schedule(repeat=repeat, start=start, interval=interval, tz=tz)
