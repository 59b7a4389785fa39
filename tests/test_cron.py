"""Cron maths (kala_celery/schedule/cron.py, Decision 18): the DST rules as tables in
America/New_York and Europe/Berlin, the parse errors, and properties of next/latest that the
beat relies on."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kala_celery.schedule import ScheduleError
from kala_celery.schedule.cron import MAX_COUNTED, parse_cron

# 2026: 03-08 02:00 -> 03:00 (07:00Z); 11-01 02:00 -> 01:00 (06:00Z)
NY = ZoneInfo("America/New_York")
# 2026: 03-29 02:00 -> 03:00 (01:00Z); 10-25 03:00 -> 02:00 (01:00Z)
BERLIN = ZoneInfo("Europe/Berlin")
UTC_ZONE = ZoneInfo("UTC")


def z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# (zone, expression, after, the next occurrences in UTC, what it shows)
DST_TABLE = [
    # a fixed time in the spring-forward gap fires once, right after the gap
    (NY, "30 2 * * *", "2026-03-07T12:00:00Z",
     ["2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"], "gap: 02:30 -> 03:00 EDT"),
    (BERLIN, "30 2 * * *", "2026-03-28T12:00:00Z",
     ["2026-03-29T01:00:00Z", "2026-03-30T00:30:00Z"], "gap: 02:30 -> 03:00 CEST"),
    (BERLIN, "0 2 * * *", "2026-03-28T12:00:00Z",
     ["2026-03-29T01:00:00Z", "2026-03-30T00:00:00Z"], "gap: 02:00 -> 03:00 CEST"),
    # a fixed time that occurs twice at fall-back fires once, at its first (summer) pass
    (NY, "30 1 * * *", "2026-10-31T12:00:00Z",
     ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"], "repeat: 01:30 EDT only"),
    (BERLIN, "30 2 * * *", "2026-10-24T12:00:00Z",
     ["2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"], "repeat: 02:30 CEST only"),
    # a wildcard hour or minute follows elapsed time: the gap's wall times never come, the
    # repeated hour fires twice
    (NY, "0 * * * *", "2026-03-08T05:30:00Z",
     ["2026-03-08T06:00:00Z", "2026-03-08T07:00:00Z", "2026-03-08T08:00:00Z"],
     "gap: 01:00 EST, 03:00 EDT, 04:00 EDT"),
    (NY, "*/30 * * * *", "2026-11-01T04:50:00Z",
     ["2026-11-01T05:00:00Z", "2026-11-01T05:30:00Z", "2026-11-01T06:00:00Z",
      "2026-11-01T06:30:00Z", "2026-11-01T07:00:00Z"], "repeat: 01:00/01:30 EDT then EST"),
    (BERLIN, "*/30 * * * *", "2026-10-24T23:50:00Z",
     ["2026-10-25T00:00:00Z", "2026-10-25T00:30:00Z", "2026-10-25T01:00:00Z",
      "2026-10-25T01:30:00Z", "2026-10-25T02:00:00Z"], "repeat: 02:00/02:30 CEST then CET"),
    (BERLIN, "15 * * * *", "2026-03-29T00:00:00Z",
     ["2026-03-29T00:15:00Z", "2026-03-29T01:15:00Z"], "gap: 01:15 CET, then 03:15 CEST"),
    # plain wall-clock days keep their local time across the change
    (NY, "0 9 * * MON-FRI", "2026-03-06T15:00:00Z",
     ["2026-03-09T13:00:00Z", "2026-03-10T13:00:00Z"], "09:00 EST Fri, 09:00 EDT Mon"),
    (UTC_ZONE, "0 9 * * MON-FRI", "2026-12-04T10:00:00Z",
     ["2026-12-07T09:00:00Z", "2026-12-08T09:00:00Z"], "weekdays"),
    (UTC_ZONE, "0 0 L * *", "2027-02-01T00:00:00Z",
     ["2027-02-28T00:00:00Z", "2027-03-31T00:00:00Z"], "last day of the month"),
]


@pytest.mark.parametrize(("zone", "expr", "after", "expected", "why"), DST_TABLE,
                         ids=[row[-1] for row in DST_TABLE])
def test_next_occurrences_around_dst(zone, expr, after, expected, why) -> None:
    cron = parse_cron(expr, zone)
    found = cron.upcoming(z(after), len(expected))
    assert [t.strftime("%Y-%m-%dT%H:%M:%SZ") for t in found] == expected, why
    assert all(t.tzinfo is UTC for t in found)
    # walking back from each occurrence finds the one before it
    for earlier, later in itertools.pairwise(found):
        assert cron.latest_at_or_before(later - timedelta(microseconds=1)) == earlier
        assert cron.latest_at_or_before(later) == later


# (zone, expression, t, latest at or before t, next after t): t inside the repeated hour
FOLD_TABLE = [
    (NY, "30 1 * * *", "2026-11-01T06:10:00Z", "2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"),
    (NY, "30 1 * * *", "2026-11-01T05:10:00Z", "2026-10-31T05:30:00Z", "2026-11-01T05:30:00Z"),
    (NY, "45 1 * * *", "2026-11-01T06:10:00Z", "2026-11-01T05:45:00Z", "2026-11-02T06:45:00Z"),
    (BERLIN, "30 2 * * *", "2026-10-25T01:10:00Z", "2026-10-25T00:30:00Z",
     "2026-10-26T01:30:00Z"),
    (BERLIN, "*/30 * * * *", "2026-10-25T01:10:00Z", "2026-10-25T01:00:00Z",
     "2026-10-25T01:30:00Z"),
]


@pytest.mark.parametrize(("zone", "expr", "t", "latest", "nxt"), FOLD_TABLE)
def test_latest_and_next_inside_the_repeated_hour(zone, expr, t, latest, nxt) -> None:
    cron = parse_cron(expr, zone)
    assert cron.latest_at_or_before(z(t)) == z(latest)
    assert cron.next_after(z(t)) == z(nxt)


def test_count_between_counts_both_passes_of_a_wildcard_hour() -> None:
    every_30 = parse_cron("*/30 * * * *", NY)
    # 00:00 EDT .. 02:00 EST (exclusive start): 00:30 01:00 01:30 01:00 01:30 02:00 -> 6
    assert every_30.count_between(z("2026-11-01T04:00:00Z"), z("2026-11-01T07:00:00Z")) == 6
    fixed = parse_cron("30 1 * * *", NY)
    assert fixed.count_between(z("2026-10-31T12:00:00Z"), z("2026-11-02T12:00:00Z")) == 2
    assert fixed.count_between(z("2026-11-01T05:30:00Z"), z("2026-11-01T05:30:00Z")) == 0


def test_count_between_stops_at_its_bound() -> None:
    minutely = parse_cron("* * * * *", UTC_ZONE)
    start = z("2026-01-01T00:00:00Z")
    assert minutely.count_between(start, start + timedelta(days=365)) == MAX_COUNTED


def test_first_at_or_after_includes_an_exact_occurrence() -> None:
    cron = parse_cron("0 9 * * *", UTC_ZONE)
    assert cron.first_at_or_after(z("2026-12-01T09:00:00Z")) == z("2026-12-01T09:00:00Z")
    assert cron.next_after(z("2026-12-01T09:00:00Z")) == z("2026-12-02T09:00:00Z")
    assert cron.next_after(z("2026-12-01T08:59:59.999999Z")) == z("2026-12-01T09:00:00Z")


def test_no_occurrence_past_year_9999() -> None:
    cron = parse_cron("0 0 1 1 *", UTC_ZONE)
    assert cron.next_after(z("9999-06-01T00:00:00Z")) is None
    assert cron.upcoming(z("9998-06-01T00:00:00Z"), 5) == [z("9999-01-01T00:00:00Z")]


@pytest.mark.parametrize(("text", "reason"), [
    ("", "expected five fields"),
    ("* * * *", "expected five fields"),
    ("0 * * * * *", "expected five fields"),  # seconds are not offered
    ("61 * * * *", "Bad minute"),
    ("0 24 * * *", "Bad hour"),
    ("0 0 31 2 *", "Bad day-of-month"),
    ("0 0 * 13 *", "Bad month"),
    ("0 9 * * MON-XYZ", "Bad day-of-week"),
    ("*/0 * * * *", "Bad minute"),
    ("@daily", "expected five fields"),
])
def test_invalid_expressions_say_why(text: str, reason: str) -> None:
    with pytest.raises(ScheduleError) as refused:
        parse_cron(text, UTC_ZONE)
    assert reason in str(refused.value) and f"invalid cron {text!r}" in str(refused.value)


def test_spaces_are_normalised() -> None:
    assert parse_cron("  0  9 * * mon ", UTC_ZONE).expr == "0 9 * * mon"


instants = st.datetimes(min_value=datetime(2025, 1, 1), max_value=datetime(2028, 1, 1),
                        timezones=st.just(UTC))
expressions = st.sampled_from(["30 2 * * *", "30 1 * * *", "*/30 * * * *", "0 * * * *",
                               "15 2 * * SUN", "0 9 * * MON-FRI", "*/7 1-3 * * *"])


@settings(max_examples=300, deadline=None)
@given(t=instants, expr=expressions, zone=st.sampled_from([NY, BERLIN]))
def test_latest_and_next_bracket_any_instant(t: datetime, expr: str, zone: ZoneInfo) -> None:
    cron = parse_cron(expr, zone)
    latest, nxt = cron.latest_at_or_before(t), cron.next_after(t)
    assert latest is not None and nxt is not None
    assert latest <= t < nxt
    assert cron.next_after(latest) == nxt  # nothing between them
    assert cron.count_between(latest, nxt) == 1
