"""Unit tests of kala_celery.schedule: Kala's schedule grammar and anchored occurrences."""

from __future__ import annotations

import itertools
import time
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kala_celery import schedule as sched
from kala_celery.schedule import (
    Duration,
    Schedule,
    ScheduleError,
    ScheduleOverflowError,
    parse_duration,
    parse_epsilon,
    parse_plain_duration,
    parse_schedule,
    parse_start,
    resolve_zone,
)

NY = ZoneInfo("America/New_York")
BERLIN = ZoneInfo("Europe/Berlin")
LORD_HOWE = ZoneInfo("Australia/Lord_Howe")
CHATHAM = ZoneInfo("Pacific/Chatham")
ZONES = {
    "UTC": ZoneInfo("UTC"),
    "America/New_York": NY,
    "Europe/Berlin": BERLIN,
    "Australia/Lord_Howe": LORD_HOWE,
    "Pacific/Chatham": CHATHAM,
}
START = "2026-12-01T09:00:00Z"
START_DT = datetime(2026, 12, 1, 9, tzinfo=UTC)
MAX_UTC = datetime.max.replace(tzinfo=UTC)


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def rfc(text: str) -> datetime:
    """An RFC 3339 literal as an aware datetime (test helper, independent of parse_start)."""
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---------------------------------------------------------------------------- parse_duration

DURATION_OK = [
    ("P1D", Duration(days=1)),
    ("PT1H", Duration(hours=1)),
    ("PT1M", Duration(minutes=1)),
    ("P1M", Duration(months=1)),
    ("PT90S", Duration(seconds=90)),
    ("PT36H", Duration(hours=36)),
    ("P1Y", Duration(years=1)),
    ("P1Y2M3DT4H5M6S", Duration(1, 2, 3, 4, 5, 6)),
    ("PT1H30M", Duration(hours=1, minutes=30)),
    ("P01D", Duration(days=1)),
    ("P1DT", Duration(days=1)),  # an empty time part is allowed by Kala's regex
    # weeks: found anywhere, everything else ignored
    ("P1W", Duration(days=7)),
    ("P2W", Duration(days=14)),
    ("P1W2D", Duration(days=7)),
    ("P1Y1W", Duration(years=1)),  # no "P<digits>W" in it: the full regex reads P1Y
    ("aP3Wb", Duration(days=21)),
    ("P2D1W", Duration(days=2)),  # no "P<digits>W" in it: the full regex reads P2D
    # full regex: unanchored, leftmost match, garbage around ignored
    ("xxP1Dyy", Duration(days=1)),
    ("P1DT2Hjunk", Duration(days=1, hours=2)),
    ("1DP2D", Duration(days=2)),
    ("P3DP4D", Duration(days=3)),
    # zero durations parse (callers decide)
    ("PT0S", Duration()),
    ("P0D", Duration()),
    ("P0W", Duration()),
    ("P9223372036854775807D", Duration(days=2**63 - 1)),
    ("P00000000000000000000001D", Duration(days=1)),
]
DURATION_BAD = [
    "",
    "P",
    "PT",
    "PT1.5S",  # matches only "PT"
    "P1.5D",  # matches only "P"
    "p1d",
    "1D",
    "abc",
    "P1H",  # hours need T: matches only "P"
    "PxP1D",  # leftmost match is the bare "P"
    "P\u0661D",  # ARABIC-INDIC DIGIT ONE: Go's \d is ASCII only
    "T1H",
    "P99999999999999999999D",  # does not fit int64 (Go's Atoi fails)
    "P9223372036854775808D",
]


@pytest.mark.parametrize(("text", "expected"), DURATION_OK)
def test_parse_duration_accepts(text: str, expected: Duration) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", DURATION_BAD)
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ScheduleError, match="duration"):
        parse_duration(text)


def test_parse_duration_rejects_non_string() -> None:
    with pytest.raises(ScheduleError, match="must be a string"):
        parse_duration(None)  # type: ignore[arg-type]


def test_parse_duration_message_is_human() -> None:
    with pytest.raises(ScheduleError) as info:
        parse_duration("PT1.5S")
    assert str(info.value) == (
        "invalid duration 'PT1.5S': expected an ISO 8601 duration like PT1H, P1D, P2W or "
        "P1DT12H (whole numbers)"
    )


# ---------------------------------------------------------------------------- Duration


def test_duration_is_zero() -> None:
    assert Duration().is_zero()
    for field in ("years", "months", "days", "hours", "minutes", "seconds"):
        assert not Duration(**{field: 1}).is_zero()


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        (Duration(), 0.0),
        (Duration(seconds=1), 1.0),
        (Duration(minutes=2, seconds=3), 123.0),
        (Duration(hours=1), 3600.0),
        (Duration(days=1), 86400.0),
        (Duration(days=7, hours=1), 7 * 86400.0 + 3600.0),
        (Duration(years=1), 365.2425 * 86400),
        (Duration(months=12), 365.2425 * 86400),
        (Duration(years=400), 146097 * 86400.0),
    ],
)
def test_duration_approx_seconds(duration: Duration, seconds: float) -> None:
    assert duration.approx_seconds() == pytest.approx(seconds)


@pytest.mark.parametrize(
    "kwargs", [{"days": -1}, {"hours": 1.5}, {"seconds": True}, {"months": "1"}]
)
def test_duration_rejects_bad_fields(kwargs: dict[str, object]) -> None:
    with pytest.raises(ScheduleError, match="non-negative integer"):
        Duration(**kwargs)  # type: ignore[arg-type]


def test_add_to_requires_aware_and_non_negative_times() -> None:
    with pytest.raises(ValueError, match="aware"):
        Duration(days=1).add_to(datetime(2026, 1, 1), NY)
    with pytest.raises(ValueError, match="times"):
        Duration(days=1).add_to(utc(2026, 1, 1), NY, -1)


def test_add_to_times_zero_returns_the_same_instant_in_utc() -> None:
    # The second 01:30 of New York's fall-back night (fold=1) must not move.
    t = rfc("2026-11-01T01:30:00-05:00")
    for d in (Duration(days=1), Duration(months=1), Duration(hours=1)):
        got = d.add_to(t, NY, 0)
        assert got == t
        assert got.tzinfo is UTC


def test_add_to_returns_utc() -> None:
    got = Duration(days=1, hours=1).add_to(rfc("2026-06-01T12:00:00+02:00"), BERLIN)
    assert got.tzinfo is UTC
    assert got == utc(2026, 6, 2, 11)


def test_add_to_time_part_is_exact_even_for_a_fold_start() -> None:
    t = rfc("2026-11-01T01:30:00-05:00")  # second 01:30 (EST)
    assert Duration(minutes=30).add_to(t, NY) == rfc("2026-11-01T02:00:00-05:00")


# ---------------------------------------------------------------------------- parse_start

START_OK = [
    ("2026-12-01T09:00:00Z", utc(2026, 12, 1, 9)),
    ("2026-12-01T09:00:00+02:00", utc(2026, 12, 1, 7)),
    ("2026-12-01T09:00:00-05:30", utc(2026, 12, 1, 14, 30)),
    ("2026-12-01T09:00:00+00:00", utc(2026, 12, 1, 9)),
    ("2026-12-01T09:00:00-00:00", utc(2026, 12, 1, 9)),
    ("2026-12-01T09:00:00+23:59", utc(2026, 11, 30, 9, 1)),
    ("2026-12-01T23:30:00-01:00", utc(2026, 12, 2, 0, 30)),  # the UTC date rolls over
    ("2026-12-01T09:00:00", utc(2026, 12, 1, 9)),  # no zone: UTC, not local time
    ("2026-12-01T09:00:00.25", utc(2026, 12, 1, 9, 0, 0, 250000)),
    # fractions of any length; beyond microseconds they are truncated
    ("2026-12-01T09:00:00.5Z", utc(2026, 12, 1, 9, 0, 0, 500000)),
    ("2026-12-01T09:00:00.123Z", utc(2026, 12, 1, 9, 0, 0, 123000)),
    ("2026-12-01T09:00:00.000001Z", utc(2026, 12, 1, 9, 0, 0, 1)),
    ("2026-12-01T09:00:00.1234567Z", utc(2026, 12, 1, 9, 0, 0, 123456)),
    ("2026-12-01T09:00:00.123456789Z", utc(2026, 12, 1, 9, 0, 0, 123456)),
    ("2026-12-01T09:00:00.9999999999999+01:00", utc(2026, 12, 1, 8, 0, 0, 999999)),
    ("2024-02-29T00:00:00Z", utc(2024, 2, 29)),
    ("0001-01-01T00:00:00Z", utc(1, 1, 1)),
    ("9999-12-31T23:59:59.999999Z", MAX_UTC),
    ("0001-01-01T00:00:00-01:00", utc(1, 1, 1, 1)),
]

START_BAD = [
    "",
    "2026-12-01",  # date only
    "2026-12-01T09:00:00+0200",  # offset without colon
    "2026-12-01T09:00:00+02",
    "2026-12-01T09:00:00z",  # lowercase z
    "2026-12-01t09:00:00Z",  # lowercase t
    "2026-12-01 09:00:00Z",  # space instead of T
    "2026-12-01T09:00Z",  # no seconds
    "2026-12-01T9:00:00Z",
    "26-12-01T09:00:00Z",
    "2026-1-01T09:00:00Z",
    "2026-12-01T09:00:00.Z",  # empty fraction
    "2026-12-01T09:00:00,5Z",
    "2026-12-01T09:00:00UTC",
    "2026-12-01T09:00:00Z ",
    " 2026-12-01T09:00:00Z",
    "2026-12-01T09:00:00Z\n",
    "2026-13-01T09:00:00Z",  # out-of-range fields
    "2026-00-01T09:00:00Z",
    "2026-12-32T09:00:00Z",
    "2026-12-00T09:00:00Z",
    "2026-02-29T09:00:00Z",  # not a leap year
    "2026-12-01T24:00:00Z",
    "2026-12-01T09:60:00Z",
    "2026-12-01T09:00:60Z",  # no leap seconds
    "2026-12-01T09:00:00+24:00",
    "2026-12-01T09:00:00+02:60",
    "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00",  # before year 1 in UTC
    "9999-12-31T23:00:00-02:00",  # after year 9999 in UTC
    "\uff12\uff10\uff12\uff16-12-01T09:00:00Z",  # full-width digits
]


@pytest.mark.parametrize(("text", "expected"), START_OK)
def test_parse_start_accepts(text: str, expected: datetime) -> None:
    got = parse_start(text)
    assert got == expected
    assert got.tzinfo is UTC
    assert got.replace(tzinfo=None) == expected.replace(tzinfo=None)  # normalised to UTC


@pytest.mark.parametrize("text", START_BAD)
def test_parse_start_rejects(text: str) -> None:
    with pytest.raises(ScheduleError, match="start"):
        parse_start(text)


def test_parse_start_names_the_bad_field() -> None:
    with pytest.raises(ScheduleError, match=r"month must be in 1\.\.12"):
        parse_start("2026-13-01T09:00:00Z")
    with pytest.raises(ScheduleError, match="second out of range"):
        parse_start("2026-12-01T09:00:60Z")
    with pytest.raises(ScheduleError, match="zone offset out of range"):
        parse_start("2026-12-01T09:00:00+24:00")


# ---------------------------------------------------------------------------- parse_schedule

SCHEDULE_OK: list[tuple[str, int | None, datetime, Duration | None]] = [
    (f"R/{START}/PT1H", None, START_DT, Duration(hours=1)),
    (f"R-1/{START}/PT1H", None, START_DT, Duration(hours=1)),
    (f"R0/{START}/", 0, START_DT, None),
    (f"R0/{START}/PT1H", 0, START_DT, None),
    (f"R0/{START}/garbage", 0, START_DT, None),  # not parsed with R0
    (f"R0/{START}/PT0S", 0, START_DT, None),  # zero interval is harmless with R0
    (f"R0/{START}/P", 0, START_DT, None),
    (f"R00/{START}/", 0, START_DT, None),
    (f"R-0/{START}/", 0, START_DT, None),
    (f"R1/{START}/P1D", 1, START_DT, Duration(days=1)),
    (f"R5/{START}/PT1H", 5, START_DT, Duration(hours=1)),
    (f"R+3/{START}/PT1H", 3, START_DT, Duration(hours=1)),
    (f"R-5/{START}/PT1H", 0, START_DT, None),  # other negatives: run once, as Kala
    (f"R-5/{START}/PT0S", 0, START_DT, None),  # runs once: no busy loop to refuse
    # a zero interval a few times: runs a second apart (Decision 23; Kala: back to back)
    (f"R5/{START}/PT0S", 5, START_DT, Duration(seconds=1)),
    (f"R1/{START}/P0W", 1, START_DT, Duration(seconds=1)),
    (f"R-9223372036854775808/{START}/PT1H", 0, START_DT, None),
    (f"R9223372036854775807/{START}/PT1S", 2**63 - 1, START_DT, Duration(seconds=1)),
    (f"XR5R/{START}/PT1H", 5, START_DT, Duration(hours=1)),  # text after a second R ignored
    (f"R5R7/{START}/PT1H", 5, START_DT, Duration(hours=1)),
    (f"R2/{START}/xxP1Dyy", 2, START_DT, Duration(days=1)),
    (f"R2/{START}/P1W2D", 2, START_DT, Duration(days=7)),
    (f"R2/{START}/P2W", 2, START_DT, Duration(days=14)),
    (f"R2/{START}/P1M", 2, START_DT, Duration(months=1)),
    (f"R2/{START}/P1Y2M3DT4H5M6S", 2, START_DT, Duration(1, 2, 3, 4, 5, 6)),
    ("R2/2026-12-01T09:00:00/PT1H", 2, START_DT, Duration(hours=1)),  # zone-less = UTC
    ("R2/2026-12-01T10:00:00+01:00/PT1H", 2, START_DT, Duration(hours=1)),
    (
        "R2/2026-12-01T09:00:00.123456789Z/PT1H",
        2,
        START_DT.replace(microsecond=123456),
        Duration(hours=1),
    ),
]

SCHEDULE_BAD: list[tuple[str, str]] = [
    # shape
    ("", "must look like R<n>/<start>/<interval>"),
    ("R5", "must look like R<n>/<start>/<interval>"),
    (f"R5/{START}", "must look like R<n>/<start>/<interval>"),
    (f"R5/{START}/PT1H/x", "must look like R<n>/<start>/<interval>"),
    (f"R5/{START}/PT1H/", "must look like R<n>/<start>/<interval>"),
    # no R anywhere: Kala crashes, we refuse
    (f"5/{START}/PT1H", "must start with R"),
    (f"/{START}/PT1H", "must start with R"),
    (f"r5/{START}/PT1H", "must start with R"),
    (f" /{START}/PT1H", "must start with R"),
    # R with a bad number
    (f"RRR/{START}/PT1H", "whole number"),
    (f"RR/{START}/PT1H", "whole number"),
    (f"R1.5/{START}/PT1H", "whole number"),
    (f"Rx/{START}/PT1H", "whole number"),
    (f"5R/{START}/PT1H", "whole number"),
    (f"XR/{START}/PT1H", "whole number"),
    (f"R 5/{START}/PT1H", "whole number"),
    (f"R5 /{START}/PT1H", "whole number"),
    (f"R--1/{START}/PT1H", "whole number"),
    (f"R\u0665/{START}/PT1H", "whole number"),  # ARABIC-INDIC DIGIT FIVE
    (f"R9223372036854775808/{START}/PT1H", "out of range"),
    (f"R-9223372036854775809/{START}/PT1H", "out of range"),
    (f"R{'9' * 5000}/{START}/PT1H", "out of range"),
    # start
    ("R5/2026-12-01/PT1H", "invalid start '2026-12-01'"),
    ("R5/2026-12-01T09:00:00+0200/PT1H", "invalid start"),
    ("R5/2026-12-01T09:00:00z/PT1H", "invalid start"),
    ("R5/2026-12-01 09:00:00Z/PT1H", "invalid start"),
    ("R0/2026-02-30T09:00:00Z/", "invalid start"),
    ("R0//", "invalid start ''"),
    # interval (parsed because repeat != 0)
    (f"R/{START}/", "invalid interval ''"),
    (f"R5/{START}/", "invalid interval"),
    (f"R5/{START}/garbage", "invalid interval 'garbage'"),
    (f"R5/{START}/PT1.5S", "invalid interval"),
    (f"R5/{START}/p1d", "invalid interval"),
    (f"R5/{START}/P", "invalid interval"),
    (f"R5/{START}/PT", "invalid interval"),
    (f"R-5/{START}/garbage", "invalid interval"),  # Kala parses it for any non-zero number
    # a zero interval forever: we refuse Kala's busy loop (Decision 23)
    (f"R/{START}/PT0S", "interval must be greater than zero for a repeating schedule"),
    (f"R-1/{START}/P0D", "interval must be greater than zero"),
]


@pytest.mark.parametrize(("text", "repeat", "start", "interval"), SCHEDULE_OK)
def test_parse_schedule_accepts(
    text: str, repeat: int | None, start: datetime, interval: Duration | None
) -> None:
    got = parse_schedule(text)
    assert (got.repeat, got.start, got.interval) == (repeat, start, interval)
    assert got.start.tzinfo is UTC
    assert got.tz == ZoneInfo("UTC")


@pytest.mark.parametrize(("text", "message"), SCHEDULE_BAD)
def test_parse_schedule_rejects(text: str, message: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule(text)
    assert message in str(info.value)


def test_parse_schedule_messages() -> None:
    with pytest.raises(ScheduleError) as info:
        parse_schedule("R5/2026-12-01T09:00:00Z")
    assert str(info.value) == (
        "schedule must look like R<n>/<start>/<interval>, e.g. R5/2026-12-01T09:00:00Z/PT1H"
    )
    with pytest.raises(ScheduleError) as info:
        parse_schedule(f"R/{START}/PT0S")
    assert str(info.value) == "interval must be greater than zero for a repeating schedule"


def test_parse_schedule_does_not_check_the_clock() -> None:
    assert parse_schedule("R0/2001-01-01T00:00:00Z/").start == utc(2001, 1, 1)


def test_parse_schedule_keeps_the_zone() -> None:
    assert parse_schedule(f"R/{START}/P1D", NY).tz is NY
    assert parse_schedule(f"R/{START}/P1D").tz.key == "UTC"


def test_parse_schedule_rejects_non_string() -> None:
    with pytest.raises(ScheduleError, match="must be a string"):
        parse_schedule(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("text", "total"),
    [
        (f"R/{START}/PT1H", None),
        (f"R-1/{START}/PT1H", None),
        (f"R0/{START}/", 1),
        (f"R-5/{START}/PT1H", 1),
        (f"R1/{START}/PT1H", 2),
        (f"R5/{START}/PT1H", 6),
    ],
)
def test_total_runs(text: str, total: int | None) -> None:
    assert parse_schedule(text).total_runs == total


# ---------------------------------------------------------------------------- Schedule checks


def test_schedule_normalises_start_to_utc() -> None:
    s = Schedule(
        repeat=None, start=rfc("2026-12-01T10:00:00+01:00"), interval=Duration(days=1), tz=NY
    )
    assert s.start == START_DT
    assert s.start.tzinfo is UTC


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"repeat": -1, "interval": Duration(days=1)}, "repeat must be"),
        ({"repeat": 1.0, "interval": Duration(days=1)}, "repeat must be"),
        ({"repeat": 0, "interval": Duration(days=1)}, "has no interval"),
        ({"repeat": 2, "interval": None}, "greater than zero"),
        ({"repeat": None, "interval": Duration()}, "greater than zero"),
        (
            {"repeat": None, "interval": Duration(days=1), "start": datetime(2026, 1, 1)},
            "timezone-aware",
        ),
    ],
)
def test_schedule_rejects_inconsistent_fields(kwargs: dict[str, object], message: str) -> None:
    fields = {"start": START_DT, "tz": NY, **kwargs}
    with pytest.raises(ScheduleError, match=message):
        Schedule(**fields)  # type: ignore[arg-type]


def test_occurrence_argument_checks() -> None:
    s = parse_schedule(f"R/{START}/PT1H")
    with pytest.raises(ValueError, match=">= 0"):
        s.occurrence(-1)
    once = parse_schedule(f"R0/{START}/")
    assert once.occurrence(0) == START_DT
    with pytest.raises(ScheduleError, match="only occurrence 0"):
        once.occurrence(1)
    with pytest.raises(ValueError, match="aware"):
        s.index_at_or_after(datetime(2026, 1, 1))


def test_occurrence_ignores_total_runs() -> None:
    s = parse_schedule(f"R1/{START}/PT1H")
    assert s.occurrence(5) == START_DT + timedelta(hours=5)


# ---------------------------------------------------------------------------- DST tables

# (zone, start as local RFC 3339, interval, k, occurrence k as local RFC 3339 in that zone)
DST_CASES = [
    # New York 2026: EST->EDT on Mar 8 at 02:00, EDT->EST on Nov 1 at 02:00
    (NY, "2026-03-07T14:00:00-05:00", "P1D", 1, "2026-03-08T14:00:00-04:00"),
    (NY, "2026-03-07T14:00:00-05:00", "PT24H", 1, "2026-03-08T15:00:00-04:00"),
    (NY, "2026-03-07T14:00:00-05:00", "P1D", 2, "2026-03-09T14:00:00-04:00"),
    (NY, "2026-10-31T14:00:00-04:00", "P1D", 1, "2026-11-01T14:00:00-05:00"),
    (NY, "2026-10-31T14:00:00-04:00", "PT24H", 1, "2026-11-01T13:00:00-05:00"),
    (NY, "2026-03-02T09:00:00-05:00", "P1W", 1, "2026-03-09T09:00:00-04:00"),
    (NY, "2026-02-08T09:00:00-05:00", "P1M", 1, "2026-03-08T09:00:00-04:00"),
    (NY, "2026-03-07T12:00:00-05:00", "P1DT1H", 1, "2026-03-08T13:00:00-04:00"),
    (NY, "2026-03-07T12:00:00-05:00", "P1DT1H", 2, "2026-03-09T14:00:00-04:00"),
    (NY, "2026-03-08T01:30:00-05:00", "PT1H", 1, "2026-03-08T03:30:00-04:00"),
    # a wall time inside the gap lands after it
    (NY, "2026-03-07T02:30:00-05:00", "P1D", 1, "2026-03-08T03:30:00-04:00"),
    (NY, "2026-03-07T02:30:00-05:00", "P1D", 2, "2026-03-09T02:30:00-04:00"),
    # an ambiguous wall time takes the first instant
    (NY, "2026-10-31T01:30:00-04:00", "P1D", 1, "2026-11-01T01:30:00-04:00"),
    (NY, "2026-10-31T01:30:00-04:00", "P1D", 2, "2026-11-02T01:30:00-05:00"),
    # starting at the second 01:30 (fold=1)
    (NY, "2026-11-01T01:30:00-05:00", "PT1H", 1, "2026-11-01T02:30:00-05:00"),
    (NY, "2026-11-01T01:30:00-05:00", "P1D", 0, "2026-11-01T01:30:00-05:00"),
    (NY, "2026-11-01T01:30:00-05:00", "P1D", 1, "2026-11-02T01:30:00-05:00"),
    (NY, "2026-11-01T01:30:00-05:00", "P1DT1H", 1, "2026-11-02T02:30:00-05:00"),
    (NY, "2026-10-31T01:30:00-04:00", "PT24H", 1, "2026-11-01T01:30:00-04:00"),
    (NY, "2026-10-31T01:30:00-04:00", "PT25H", 1, "2026-11-01T01:30:00-05:00"),
    # the clamp is on the local date (UTC is already in March here)
    (NY, "2026-01-31T23:30:00-05:00", "P1M", 1, "2026-02-28T23:30:00-05:00"),
    # Berlin 2026: CET->CEST on Mar 29 at 02:00, back on Oct 25 at 03:00
    (BERLIN, "2026-03-28T09:00:00+01:00", "P1D", 1, "2026-03-29T09:00:00+02:00"),
    (BERLIN, "2026-03-28T09:00:00+01:00", "PT24H", 1, "2026-03-29T10:00:00+02:00"),
    (BERLIN, "2026-10-24T09:00:00+02:00", "P1D", 1, "2026-10-25T09:00:00+01:00"),
    (BERLIN, "2026-10-24T09:00:00+02:00", "PT24H", 1, "2026-10-25T08:00:00+01:00"),
    (BERLIN, "2026-03-28T02:30:00+01:00", "P1D", 1, "2026-03-29T03:30:00+02:00"),
    (BERLIN, "2026-10-24T02:30:00+02:00", "P1D", 1, "2026-10-25T02:30:00+02:00"),
    (BERLIN, "2026-10-24T02:30:00+02:00", "P1D", 2, "2026-10-26T02:30:00+01:00"),
    (BERLIN, "2026-01-29T09:00:00+01:00", "P1M", 2, "2026-03-29T09:00:00+02:00"),
    (BERLIN, "2025-03-30T09:00:00+02:00", "P1Y", 1, "2026-03-30T09:00:00+02:00"),
    # Lord Howe: +10:30 standard, +11:00 summer (30-minute shift); 2026-04-05 02:00 -> 01:30,
    # 2026-10-04 02:00 -> 02:30
    (LORD_HOWE, "2026-04-04T12:00:00+11:00", "P1D", 1, "2026-04-05T12:00:00+10:30"),
    (LORD_HOWE, "2026-04-04T12:00:00+11:00", "PT24H", 1, "2026-04-05T11:30:00+10:30"),
    (LORD_HOWE, "2026-10-03T12:00:00+10:30", "P1D", 1, "2026-10-04T12:00:00+11:00"),
    (LORD_HOWE, "2026-10-03T12:00:00+10:30", "PT24H", 1, "2026-10-04T12:30:00+11:00"),
    (LORD_HOWE, "2026-10-03T02:15:00+10:30", "P1D", 1, "2026-10-04T02:45:00+11:00"),
    (LORD_HOWE, "2026-10-03T02:15:00+10:30", "P1D", 2, "2026-10-05T02:15:00+11:00"),
    (LORD_HOWE, "2026-04-04T01:45:00+11:00", "P1D", 1, "2026-04-05T01:45:00+11:00"),
    (LORD_HOWE, "2026-04-04T01:45:00+11:00", "P1D", 2, "2026-04-06T01:45:00+10:30"),
    # Chatham: +12:45 standard, +13:45 summer; 2026-04-05 03:45 -> 02:45,
    # 2026-09-27 02:45 -> 03:45
    (CHATHAM, "2026-04-04T12:00:00+13:45", "P1D", 1, "2026-04-05T12:00:00+12:45"),
    (CHATHAM, "2026-04-04T12:00:00+13:45", "PT24H", 1, "2026-04-05T11:00:00+12:45"),
    (CHATHAM, "2026-09-26T12:00:00+12:45", "P1D", 1, "2026-09-27T12:00:00+13:45"),
    (CHATHAM, "2026-09-26T12:00:00+12:45", "PT24H", 1, "2026-09-27T13:00:00+13:45"),
    (CHATHAM, "2026-09-26T03:00:00+12:45", "P1D", 1, "2026-09-27T04:00:00+13:45"),
    (CHATHAM, "2026-04-04T03:00:00+13:45", "P1D", 1, "2026-04-05T03:00:00+13:45"),
    (CHATHAM, "2026-04-04T03:00:00+13:45", "P1D", 2, "2026-04-06T03:00:00+12:45"),
    (CHATHAM, "2026-03-05T12:00:00+13:45", "P1M", 1, "2026-04-05T12:00:00+12:45"),
]


@pytest.mark.parametrize(("tz", "start", "interval", "k", "expected"), DST_CASES)
def test_dst_occurrences(tz: ZoneInfo, start: str, interval: str, k: int, expected: str) -> None:
    s = parse_schedule(f"R/{start}/{interval}", tz)
    got = s.occurrence(k)
    assert got.tzinfo is UTC
    assert got.astimezone(tz).isoformat() == expected
    assert got == rfc(expected)
    assert parse_duration(interval).add_to(rfc(start), tz, k) == got


def test_calendar_steps_use_the_schedule_zone_not_the_start_offset() -> None:
    text = "R/2026-03-07T19:00:00Z/P1D"  # 14:00 in New York
    assert parse_schedule(text, NY).occurrence(1) == rfc("2026-03-08T14:00:00-04:00")
    assert parse_schedule(text).occurrence(1) == utc(2026, 3, 8, 19)
    # Berlin's wall clock: 20:00 CET stays 20:00 across the change on Mar 29
    berlin = parse_schedule(text, BERLIN)
    assert berlin.occurrence(22).astimezone(BERLIN).isoformat() == "2026-03-29T20:00:00+02:00"


# ---------------------------------------------------------------------------- month ends

MONTH_CASES = [
    (
        "2026-01-31T00:00:00Z",
        "P1M",
        [
            "2026-01-31",
            "2026-02-28",
            "2026-03-31",
            "2026-04-30",
            "2026-05-31",
            "2026-06-30",
            "2026-07-31",
            "2026-08-31",
            "2026-09-30",
            "2026-10-31",
            "2026-11-30",
            "2026-12-31",
            "2027-01-31",
            "2027-02-28",
        ],
    ),
    ("2024-01-31T00:00:00Z", "P1M", ["2024-01-31", "2024-02-29", "2024-03-31"]),
    ("2026-01-31T00:00:00Z", "P2M", ["2026-01-31", "2026-03-31", "2026-05-31"]),
    ("2026-01-30T00:00:00Z", "P1M", ["2026-01-30", "2026-02-28", "2026-03-30"]),
    ("2026-08-31T00:00:00Z", "P3M", ["2026-08-31", "2026-11-30", "2027-02-28", "2027-05-31"]),
    (
        "2024-02-29T00:00:00Z",
        "P1Y",
        [
            "2024-02-29",
            "2025-02-28",
            "2026-02-28",
            "2027-02-28",
            "2028-02-29",
            "2029-02-28",
        ],
    ),
    ("2024-02-29T00:00:00Z", "P12M", ["2024-02-29", "2025-02-28"]),
    ("2024-02-29T00:00:00Z", "P4Y", ["2024-02-29", "2028-02-29"]),
    ("2026-12-31T00:00:00Z", "P1Y2M", ["2026-12-31", "2028-02-29", "2029-04-30"]),
    # months first (clamped), then days
    ("2026-01-31T00:00:00Z", "P1M1D", ["2026-01-31", "2026-03-01", "2026-04-02", "2026-05-03"]),
]


@pytest.mark.parametrize(("start", "interval", "dates"), MONTH_CASES)
def test_month_end_clamp(start: str, interval: str, dates: list[str]) -> None:
    s = parse_schedule(f"R/{start}/{interval}")
    assert [s.occurrence(k).date().isoformat() for k in range(len(dates))] == dates


@pytest.mark.parametrize(
    ("start", "interval", "k", "expected"),
    [
        ("2024-02-29T00:00:00Z", "P1Y", 76, "2100-02-28"),  # 2100 is not a leap year
        ("2024-02-29T00:00:00Z", "P1Y", 376, "2400-02-29"),
        ("2024-02-29T00:00:00Z", "P4Y", 19, "2100-02-28"),
        ("2024-02-29T00:00:00Z", "P4Y", 20, "2104-02-29"),
        ("2026-01-31T00:00:00Z", "P1M", 1000, "2109-05-31"),
        ("2026-01-31T00:00:00Z", "P1M", 1001, "2109-06-30"),
    ],
)
def test_month_end_far_occurrences(start: str, interval: str, k: int, expected: str) -> None:
    assert parse_schedule(f"R/{start}/{interval}").occurrence(k).date().isoformat() == expected


def test_month_step_keeps_time_and_adds_time_part() -> None:
    s = parse_schedule("R/2026-01-31T10:20:30.5Z/P1MT1H")
    assert s.occurrence(1) == utc(2026, 2, 28, 11, 20, 30, 500000)
    assert s.occurrence(2) == utc(2026, 3, 31, 12, 20, 30, 500000)


# ---------------------------------------------------------------------------- index lookups

# (schedule, zone, t, index_at_or_after(t), index_after(t))
INDEX_CASES = [
    ("R/2026-01-01T00:00:00Z/PT1H", "UTC", "2025-12-31T23:00:00Z", 0, 0),
    ("R/2026-01-01T00:00:00Z/PT1H", "UTC", "2026-01-01T00:00:00Z", 0, 1),
    ("R/2026-01-01T00:00:00Z/PT1H", "UTC", "2026-01-01T00:00:00.000001Z", 1, 1),
    ("R/2026-01-01T00:00:00Z/PT1H", "UTC", "2026-01-01T00:30:00Z", 1, 1),
    ("R/2026-01-01T00:00:00Z/PT1H", "UTC", "2026-01-01T01:00:00Z", 1, 2),
    ("R/2026-01-01T00:00:00Z/PT1H", "UTC", "2026-01-01T00:59:59.999999Z", 1, 1),
    ("R/2026-01-01T00:00:00Z/PT1H", "UTC", "2026-01-02T00:00:00Z", 24, 25),
    ("R/2026-01-01T00:00:00Z/PT1H", "UTC", "2026-01-02T00:00:00+01:00", 23, 24),
    ("R2/2026-01-01T00:00:00Z/PT1H", "UTC", "2026-01-01T10:00:00Z", 10, 11),  # ignores repeat
    ("R/2026-01-01T00:00:00Z/PT7S", "UTC", "2026-01-01T00:01:10Z", 10, 11),
    ("R/2026-01-01T00:00:00Z/PT7S", "UTC", "2026-01-01T00:01:11Z", 11, 11),
    ("R/2026-01-31T00:00:00Z/P1M", "UTC", "2026-02-27T23:59:59Z", 1, 1),
    ("R/2026-01-31T00:00:00Z/P1M", "UTC", "2026-02-28T00:00:00Z", 1, 2),
    ("R/2026-01-31T00:00:00Z/P1M", "UTC", "2026-03-01T00:00:00Z", 2, 2),
    ("R/2026-01-31T00:00:00Z/P1M", "UTC", "2027-01-31T00:00:00Z", 12, 13),
    ("R/2026-01-31T00:00:00Z/P1M", "UTC", "2126-01-31T00:00:00Z", 1200, 1201),
    ("R/2026-01-31T00:00:00Z/P3M", "UTC", "2026-04-30T00:00:00Z", 1, 2),
    ("R/2024-02-29T12:00:00Z/P1Y", "UTC", "2025-03-01T00:00:00Z", 2, 2),
    ("R/2024-02-29T12:00:00Z/P1Y", "UTC", "2028-02-29T11:59:00Z", 4, 4),
    ("R/2024-02-29T12:00:00Z/P1Y", "UTC", "2028-02-29T12:00:00Z", 4, 5),
    ("R/2026-01-31T00:00:00Z/P1M1D", "UTC", "2026-03-01T00:00:00Z", 1, 2),
    ("R/2026-01-31T00:00:00Z/P1M1D", "UTC", "2026-04-02T00:00:00Z", 2, 3),
    ("R/2026-01-01T00:00:00Z/P1DT1H", "UTC", "2026-01-11T10:00:00Z", 10, 11),
    ("R/2026-01-01T00:00:00Z/P1DT1H", "UTC", "2026-01-11T09:59:59Z", 10, 10),
    ("R/2026-01-01T00:00:00Z/P3D", "UTC", "2026-01-31T00:00:00Z", 10, 11),
    ("R/2026-01-01T00:00:00Z/P1W", "UTC", "2026-01-08T00:00:01Z", 2, 2),
    # calendar steps in a zone, across DST
    ("R/2026-03-07T14:00:00-05:00/P1D", "America/New_York", "2026-03-08T18:00:00Z", 1, 2),
    ("R/2026-03-07T14:00:00-05:00/P1D", "America/New_York", "2026-03-08T18:30:00Z", 2, 2),
    ("R/2026-03-07T14:00:00-05:00/P1D", "America/New_York", "2026-03-08T19:00:00Z", 2, 2),
    ("R/2026-03-07T14:00:00-05:00/PT24H", "America/New_York", "2026-03-08T19:00:00Z", 1, 2),
    ("R/2026-01-29T09:00:00+01:00/P1M", "Europe/Berlin", "2026-03-29T07:00:00Z", 2, 3),
    ("R/2026-04-04T12:00:00+11:00/P1D", "Australia/Lord_Howe", "2026-04-05T01:30:00Z", 1, 2),
    ("R/2026-09-26T12:00:00+12:45/P1D", "Pacific/Chatham", "2026-09-26T22:15:00Z", 1, 2),
    # R0: 0 if start satisfies the condition, else 1
    ("R0/2026-01-01T00:00:00Z/", "UTC", "2025-12-31T23:59:59Z", 0, 0),
    ("R0/2026-01-01T00:00:00Z/", "UTC", "2026-01-01T00:00:00Z", 0, 1),
    ("R0/2026-01-01T00:00:00Z/", "UTC", "2030-01-01T00:00:00Z", 1, 1),
]


@pytest.mark.parametrize(("text", "zone", "t", "at_or_after", "after"), INDEX_CASES)
def test_index_lookups(text: str, zone: str, t: str, at_or_after: int, after: int) -> None:
    s = parse_schedule(text, ZONES[zone])
    when = rfc(t)
    assert s.index_at_or_after(when) == at_or_after
    assert s.index_after(when) == after


def _at_or_after(s: Schedule, k: int, t: datetime) -> bool:
    """occurrence(k) >= t, where an occurrence past year 9999 is later than any t."""
    try:
        return s.occurrence(k) >= t
    except ScheduleOverflowError:
        return True


def _after(s: Schedule, k: int, t: datetime) -> bool:
    try:
        return s.occurrence(k) > t
    except ScheduleOverflowError:
        return True


class _Counter:
    """Counts Duration.add_to calls (to prove lookups do not walk past occurrences)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = sched.Duration.add_to

        def counting(d: Duration, t: datetime, tz: ZoneInfo, times: int = 1) -> datetime:
            self.calls += 1
            return original(d, t, tz, times)

        monkeypatch.setattr(sched.Duration, "add_to", counting)


HUGE_CASES = [
    # PT1S started a year ago: k ~ 3 * 10^7
    ("R/2025-01-01T00:00:00Z/PT1S", "UTC", "2026-01-01T00:00:00Z", 31_536_000),
    ("R/2025-01-01T00:00:00Z/PT1S", "UTC", "2026-01-01T00:00:00.5Z", 31_536_001),
    ("R/0001-01-01T00:00:00Z/PT1S", "UTC", "9999-12-31T23:59:59Z", 315_537_897_599),
    ("R/0001-01-01T00:00:00Z/P1D", "UTC", "9999-12-31T00:00:00Z", 3_652_058),
    ("R/0001-01-01T12:00:00Z/P1D", "Europe/Berlin", "9999-12-31T00:00:00Z", 3_652_058),
    ("R/0001-01-31T00:00:00Z/P1M", "UTC", "9999-12-31T00:00:00Z", 119_987),
    ("R/0001-01-01T00:00:00Z/P1Y", "UTC", "9999-06-01T00:00:00Z", 9_999),
    ("R/1970-01-01T00:00:00Z/P1DT1S", "America/New_York", "2026-01-01T00:00:00Z", None),
    ("R/1970-01-31T05:00:00Z/P1M1DT1H", "Pacific/Chatham", "2999-01-01T00:00:00Z", None),
    ("R/2000-01-01T00:00:00Z/P1Y1M1W", "Australia/Lord_Howe", "9000-01-01T00:00:00Z", None),
]


@pytest.mark.parametrize(("text", "zone", "t", "expected"), HUGE_CASES)
def test_huge_k_is_computed_without_walking(
    text: str, zone: str, t: str, expected: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = parse_schedule(text, ZONES[zone])
    when = rfc(t)
    counter = _Counter(monkeypatch)
    began = time.perf_counter()
    k = s.index_at_or_after(when)
    j = s.index_after(when)
    elapsed = time.perf_counter() - began
    assert counter.calls <= 40
    assert elapsed < 0.05
    if expected is not None:
        assert k == expected
    assert _at_or_after(s, k, when)
    assert s.occurrence(k - 1) < when
    assert _after(s, j, when)
    assert s.occurrence(j - 1) <= when


@pytest.mark.parametrize(
    ("text", "t", "expected"),
    [
        ("R/9999-06-01T00:00:00Z/P1Y", "9999-07-01T00:00:00Z", 1),
        ("R/9999-06-01T00:00:00Z/P1M", "9999-12-15T00:00:00Z", 7),
        ("R/9999-12-31T23:59:59Z/PT1S", "9999-12-31T23:59:59.5Z", 1),
        ("R/2026-01-01T00:00:00Z/P9223372036854775807D", "2027-01-01T00:00:00Z", 1),
        ("R/2026-01-01T00:00:00Z/P9223372036854775807Y", "2027-01-01T00:00:00Z", 1),
        ("R/2026-01-01T00:00:00Z/P9223372036854775807M", "2027-01-01T00:00:00Z", 1),
        ("R/2026-01-01T00:00:00Z/PT9223372036854775807S", "2027-01-01T00:00:00Z", 1),
        ("R/2026-01-01T00:00:00Z/P9223372036854775807W", "2027-01-01T00:00:00Z", 1),
    ],
)
def test_index_beyond_year_9999_returns_the_overflowing_k(text: str, t: str, expected: int) -> None:
    s = parse_schedule(text, NY)
    when = rfc(t)
    assert s.index_at_or_after(when) == expected
    assert s.index_after(when) == expected
    assert s.occurrence(expected - 1) < when
    with pytest.raises(ScheduleOverflowError, match="beyond year 9999"):
        s.occurrence(expected)


@pytest.mark.parametrize("interval", ["PT1S", "P1D", "P1M", "P1Y", "P1DT1H", "P1M1DT1S"])
@pytest.mark.parametrize("zone", list(ZONES))
def test_index_at_the_end_of_time(interval: str, zone: str) -> None:
    s = parse_schedule(f"R/2026-01-01T00:00:00Z/{interval}", ZONES[zone])
    k = s.index_at_or_after(MAX_UTC)
    assert s.occurrence(k - 1) < MAX_UTC
    assert _at_or_after(s, k, MAX_UTC)
    j = s.index_after(MAX_UTC)
    assert s.occurrence(j - 1) <= MAX_UTC
    assert _after(s, j, MAX_UTC)


def test_overflow_error_is_both_kinds() -> None:
    with pytest.raises(ScheduleOverflowError) as info:
        Duration(years=1).add_to(utc(9999, 6, 1), NY)
    assert isinstance(info.value, OverflowError)
    assert isinstance(info.value, ScheduleError)
    assert isinstance(info.value, ValueError)
    with pytest.raises(ScheduleOverflowError):
        Duration(seconds=1).add_to(MAX_UTC, NY)
    with pytest.raises(ScheduleOverflowError):
        Duration(days=1).add_to(utc(2026, 1, 1), NY, 10**12)
    with pytest.raises(ScheduleOverflowError):  # wall clock already past 9999 in Chatham
        Duration(days=1).add_to(utc(9999, 12, 31, 12), CHATHAM)


def test_before_year_one_in_the_zone_is_a_clean_error() -> None:
    # 0001-01-01T00:00Z is still 0000-12-31 in New York: no wall clock to step on.
    s = parse_schedule("R/0001-01-01T00:00:00Z/P1D", NY)
    assert s.occurrence(0) == utc(1, 1, 1)
    with pytest.raises(ScheduleError, match="before year 1") as info:
        s.occurrence(1)
    assert not isinstance(info.value, OverflowError)
    with pytest.raises(ScheduleError, match="before year 1"):
        s.index_at_or_after(utc(2026, 1, 1))


# ---------------------------------------------------------------------------- zones, epsilon,
# plain durations


@pytest.mark.parametrize(
    ("name", "default", "key"),
    [
        (None, "UTC", "UTC"),
        ("", "UTC", "UTC"),
        (None, "Europe/Berlin", "Europe/Berlin"),
        ("", "Pacific/Chatham", "Pacific/Chatham"),
        ("America/New_York", "UTC", "America/New_York"),
        ("Australia/Lord_Howe", "Europe/Berlin", "Australia/Lord_Howe"),
        ("Etc/GMT+5", "UTC", "Etc/GMT+5"),
        ("America/Argentina/Buenos_Aires", "UTC", "America/Argentina/Buenos_Aires"),
    ],
)
def test_resolve_zone(name: str | None, default: str, key: str) -> None:
    assert resolve_zone(name, default) == ZoneInfo(key)


@pytest.mark.parametrize(
    "name",
    [
        "../etc",
        "../../etc/passwd",
        "/etc/passwd",
        "America//New_York",
        "America/New_York/",
        "/UTC",
        "America",  # a directory
        "zone.tab",  # not a TZif file
        "tzdata.zi",
        "Not/AZone",
        "Mars/Olympus_Mons",
        " UTC",
        "UTC ",
        "Europe/Berlin\n",
        "Europe/Berl\x00in",
        "x" * 300,
    ],
)
def test_resolve_zone_rejects(name: str) -> None:
    with pytest.raises(ScheduleError, match="unknown time zone"):
        resolve_zone(name)


def test_resolve_zone_rejects_a_bad_default() -> None:
    with pytest.raises(ScheduleError, match="unknown time zone 'Nope/Zone'"):
        resolve_zone(None, "Nope/Zone")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", None),
        ("PT0S", Duration()),
        ("PT2S", Duration(seconds=2)),
        ("P1W", Duration(days=7)),
        ("xxPT5Myy", Duration(minutes=5)),
    ],
)
def test_parse_epsilon(text: str, expected: Duration | None) -> None:
    assert parse_epsilon(text) == expected


@pytest.mark.parametrize("text", ["P", "PT", "PT1.5S", "bad", "p1d"])
def test_parse_epsilon_rejects(text: str) -> None:
    with pytest.raises(ScheduleError, match="invalid epsilon"):
        parse_epsilon(text)


PLAIN_OK = [
    ("PT0S", timedelta(0)),
    ("PT1.5S", timedelta(seconds=1.5)),
    ("PT1,5S", timedelta(seconds=1.5)),
    ("PT30S", timedelta(seconds=30)),
    ("PT10M", timedelta(minutes=10)),
    ("PT2H", timedelta(hours=2)),
    ("PT0.25H", timedelta(minutes=15)),
    ("P30D", timedelta(days=30)),
    ("P1W", timedelta(days=7)),
    ("P1DT12H", timedelta(days=1, hours=12)),
    ("P1.5D", timedelta(days=1, hours=12)),
    ("P1DT2H3M4.5S", timedelta(days=1, hours=2, minutes=3, seconds=4.5)),
]

PLAIN_BAD = [
    ("P1Y", "no fixed length"),
    ("P1M", "no fixed length"),
    ("P0Y", "no fixed length"),
    ("P1.5Y", "no fixed length"),
    ("P1Y2D", "no fixed length"),
    ("-PT1S", "negative"),
    ("-P1D", "negative"),
    ("PT-1S", "expected an ISO 8601 duration"),
    ("", "expected an ISO 8601 duration"),
    ("P", "expected an ISO 8601 duration"),
    ("PT", "expected an ISO 8601 duration"),
    ("P1DT", "expected an ISO 8601 duration"),
    ("abc", "expected an ISO 8601 duration"),
    ("p1d", "expected an ISO 8601 duration"),
    ("1D", "expected an ISO 8601 duration"),
    ("+PT1S", "expected an ISO 8601 duration"),
    (" PT1S", "expected an ISO 8601 duration"),
    ("PT1S ", "expected an ISO 8601 duration"),
    ("PT1S\n", "expected an ISO 8601 duration"),
    ("xxPT1Syy", "expected an ISO 8601 duration"),
    ("PT1S1S", "expected an ISO 8601 duration"),
    ("PT1E3S", "expected an ISO 8601 duration"),
    ("P\u0661D", "expected an ISO 8601 duration"),
    ("P99999999999D", "too large"),
]


@pytest.mark.parametrize(("text", "expected"), PLAIN_OK)
def test_parse_plain_duration(text: str, expected: timedelta) -> None:
    got = parse_plain_duration(text)
    assert type(got) is timedelta
    assert got == expected


@pytest.mark.parametrize(("text", "reason"), PLAIN_BAD)
def test_parse_plain_duration_rejects(text: str, reason: str) -> None:
    with pytest.raises(ScheduleError) as info:
        parse_plain_duration(text)
    assert reason in str(info.value)
    assert repr(text) in str(info.value)


def test_parse_plain_duration_rejects_non_string() -> None:
    with pytest.raises(ScheduleError, match="must be a string"):
        parse_plain_duration(30)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- properties

PROPERTY_ZONES = st.sampled_from([NY, BERLIN, LORD_HOWE, CHATHAM])
starts = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2060, 12, 31), timezones=st.just(UTC)
)


def _part(high: int) -> st.SearchStrategy[int]:
    return st.one_of(st.just(0), st.integers(1, high))


intervals = st.builds(
    Duration,
    years=st.one_of(st.just(0), st.just(0), st.integers(1, 3)),
    months=st.one_of(st.just(0), st.integers(1, 14)),
    days=st.one_of(st.just(0), st.integers(1, 40)),
    hours=_part(48),
    minutes=_part(120),
    seconds=_part(5000),
).filter(lambda d: not d.is_zero())


def _schedule(start: datetime, interval: Duration, tz: ZoneInfo) -> Schedule:
    return Schedule(repeat=None, start=start, interval=interval, tz=tz)


@settings(max_examples=150, deadline=None)
@given(starts, intervals, PROPERTY_ZONES, st.integers(0, 1500))
def test_occurrences_strictly_increase(
    start: datetime, interval: Duration, tz: ZoneInfo, k: int
) -> None:
    s = _schedule(start, interval, tz)
    k = min(k, int(1000 * 365 * 86400 / interval.approx_seconds()))  # stay before year 9999
    seq = [s.occurrence(i) for i in range(k, k + 4)]
    assert all(a < b for a, b in itertools.pairwise(seq))
    assert all(o.tzinfo is UTC for o in seq)
    assert interval.add_to(start, tz, k) == seq[0]


@settings(max_examples=150, deadline=None)
@given(
    starts,
    intervals,
    PROPERTY_ZONES,
    st.timedeltas(min_value=timedelta(days=-400), max_value=timedelta(days=40_000)),
    st.booleans(),
)
def test_index_lookups_bracket_t(
    start: datetime, interval: Duration, tz: ZoneInfo, offset: timedelta, on_occurrence: bool
) -> None:
    s = _schedule(start, interval, tz)
    t = start + offset
    if on_occurrence:  # land t exactly on an occurrence: the boundary case
        t = s.occurrence(s.index_at_or_after(t))
    k = s.index_at_or_after(t)
    assert s.occurrence(k) >= t
    assert k == 0 or s.occurrence(k - 1) < t
    j = s.index_after(t)
    assert s.occurrence(j) > t
    assert j == 0 or s.occurrence(j - 1) <= t
    assert j in (k, k + 1)
    assert (j == k + 1) == (s.occurrence(k) == t)


@settings(max_examples=150, deadline=None)
@given(
    starts,
    intervals,
    PROPERTY_ZONES,
    st.floats(min_value=-1.0, max_value=60.0, allow_nan=False),
    st.booleans(),
)
def test_index_lookups_match_a_linear_scan(
    start: datetime, interval: Duration, tz: ZoneInfo, periods: float, on_occurrence: bool
) -> None:
    s = _schedule(start, interval, tz)
    t = start + timedelta(seconds=interval.approx_seconds() * periods)
    if on_occurrence:
        t = s.occurrence(max(round(periods), 0))
    k = 0
    while s.occurrence(k) < t:
        k += 1
    assert s.index_at_or_after(t) == k
    expected_after = k + 1 if s.occurrence(k) == t else k
    assert s.index_after(t) == expected_after


@settings(max_examples=100, deadline=None)
@given(starts, PROPERTY_ZONES, st.integers(1, 100_000), st.integers(0, 10_000))
def test_time_units_are_exact_elapsed_time(
    start: datetime, tz: ZoneInfo, seconds: int, k: int
) -> None:
    s = _schedule(start, Duration(seconds=seconds), tz)
    assert s.occurrence(k) == start + k * timedelta(seconds=seconds)


@settings(max_examples=100, deadline=None)
@given(starts, PROPERTY_ZONES, st.integers(1, 10), st.integers(0, 3000))
def test_days_keep_the_local_date_and_wall_time(
    start: datetime, tz: ZoneInfo, days: int, k: int
) -> None:
    s = _schedule(start, Duration(days=days), tz)
    local_start = start.astimezone(tz)
    local = s.occurrence(k).astimezone(tz)
    assert local.date() == local_start.date() + timedelta(days=days * k)
    # the wall time is kept unless it falls in a gap (then it moves forward by the gap)
    wall_shift = datetime.combine(date.min, local.time()) - datetime.combine(
        date.min, local_start.time()
    )
    assert timedelta(0) <= wall_shift <= timedelta(hours=1) or k == 0


@settings(max_examples=100, deadline=None)
@given(starts, st.integers(1, 30), st.integers(0, 1500))
def test_months_clamp_to_the_month_end(start: datetime, months: int, k: int) -> None:
    s = _schedule(start, Duration(months=months), ZoneInfo("UTC"))
    got = s.occurrence(k)
    year, month0 = divmod(start.month - 1 + months * k, 12)
    year += start.year
    month = month0 + 1
    last = (date(year + month // 12, month % 12 + 1, 1) - timedelta(days=1)).day
    assert (got.year, got.month, got.day) == (year, month, min(start.day, last))
    assert got.time() == start.time()


def test_a_finite_zero_interval_runs_a_second_apart_and_stops() -> None:
    """Decision 23: Kala runs R2/…/PT0S back to back; here its 3 runs are a second apart."""
    parsed = parse_schedule(f"R2/{START}/PT0S")
    assert parsed.total_runs == 3
    assert [parsed.occurrence(k) for k in range(3)] == [
        START_DT + timedelta(seconds=k) for k in range(3)]
    assert parsed.index_after(START_DT + timedelta(milliseconds=1500)) == 2
