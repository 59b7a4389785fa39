"""Previews (Decision 24): Parsed.upcoming as tables around DST, and the two routes
(GET /job/{id}/next/, POST /schedule/preview/) over real HTTP on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from kala_celery.beat.claim import advance
from kala_celery.schedule import occurrences

T = "%Y-%m-%dT%H:%M:%SZ"


def z(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def texts(times: list[datetime]) -> list[str]:
    return [t.strftime(T) for t in times]


# (schedule, cron, zone, first occurrence, runs used, count, expected)
UPCOMING = [
    # ISO: P1D keeps 09:00 local across both changes; PT24H is elapsed time
    ("R/2026-03-07T14:00:00Z/P1D", None, "America/New_York", "2026-03-07T14:00:00Z", 0, 3,
     ["2026-03-07T14:00:00Z", "2026-03-08T13:00:00Z", "2026-03-09T13:00:00Z"]),
    ("R/2026-03-07T14:00:00Z/PT24H", None, "America/New_York", "2026-03-07T14:00:00Z", 0, 3,
     ["2026-03-07T14:00:00Z", "2026-03-08T14:00:00Z", "2026-03-09T14:00:00Z"]),
    ("R/2026-10-24T07:00:00Z/P1D", None, "Europe/Berlin", "2026-10-24T07:00:00Z", 0, 3,
     ["2026-10-24T07:00:00Z", "2026-10-25T08:00:00Z", "2026-10-26T08:00:00Z"]),
    # ISO repetitions: R2 = 3 runs, one already used
    ("R2/2030-01-01T00:00:00Z/PT1H", None, None, "2030-01-01T01:00:00Z", 1, 10,
     ["2030-01-01T01:00:00Z", "2030-01-01T02:00:00Z"]),
    ("R0/2030-01-01T00:00:00Z/", None, None, "2030-01-01T00:00:00Z", 0, 5,
     ["2030-01-01T00:00:00Z"]),
    # cron: the DST rules of Decision 18
    (None, "30 2 * * *", "America/New_York", "2026-03-07T07:30:00Z", 0, 3,
     ["2026-03-07T07:30:00Z", "2026-03-08T07:00:00Z", "2026-03-09T06:30:00Z"]),
    (None, "30 2 * * *", "Europe/Berlin", "2026-10-24T00:30:00Z", 0, 3,
     ["2026-10-24T00:30:00Z", "2026-10-25T00:30:00Z", "2026-10-26T01:30:00Z"]),
    (None, "30 * * * *", "Europe/Berlin", "2026-10-24T23:30:00Z", 0, 4,
     ["2026-10-24T23:30:00Z", "2026-10-25T00:30:00Z", "2026-10-25T01:30:00Z",
      "2026-10-25T02:30:00Z"]),
    (None, "0 9 * * *", "UTC", "2030-01-01T09:00:00Z", 99, 2,  # cron never runs out
     ["2030-01-01T09:00:00Z", "2030-01-02T09:00:00Z"]),
]


@pytest.mark.parametrize(("text", "cron", "zone", "first", "used", "count", "expected"), UPCOMING)
def test_upcoming_is_what_the_claim_advances_through(text, cron, zone, first, used, count,
                                                     expected) -> None:
    parsed = occurrences.parse(text, cron, zone, "UTC")
    assert texts(parsed.upcoming(z(first), used, count)) == expected
    # the beat, claiming each on time, records exactly these and moves to the next
    due, runs_used, fired = z(first), used, []
    while due is not None and len(fired) < count:
        step = advance(parsed.rule, due, runs_used, due, False)
        fired.append(step.run_for)
        due, runs_used = step.next_run_at, runs_used + 1
    assert texts(fired) == expected


def test_first_of_a_cron_is_at_or_after_now_and_of_an_iso_its_start() -> None:
    now = z("2026-12-01T09:00:00Z")
    cron = occurrences.parse(None, "0 9 * * *", None, "UTC")
    assert (cron.kind, cron.first(now)) == ("cron", now)
    iso = occurrences.parse("R/2026-12-05T00:00:00Z/P1D", None, None, "UTC")
    assert (iso.kind, iso.first(now)) == ("iso8601", z("2026-12-05T00:00:00Z"))
    assert iso.upcoming(None, 0, 5) == []


# ---------------------------------------------------------------- the routes over HTTP


def future(days: int = 30) -> str:
    return (datetime.now(UTC) + timedelta(days=days)).replace(microsecond=0).strftime(T)


def test_preview_of_a_cron_and_of_an_iso_schedule(api) -> None:
    got = api.http.post("/schedule/preview/",
                        json={"cron": "0 9 * * MON-FRI", "timezone": "Europe/Berlin", "count": 7})
    assert got.status_code == 200, got.text
    times = [z(t) for t in got.json()["next"]]
    assert len(times) == 7 and times == sorted(times) and times[0] > datetime.now(UTC)
    berlin = [t.astimezone(occurrences.schedule.resolve_zone("Europe/Berlin")) for t in times]
    assert all(t.hour == 9 and t.minute == 0 and t.weekday() < 5 for t in berlin)
    start = future()
    got = api.http.post("/schedule/preview/", json={"schedule": f"R2/{start}/P1D", "count": 5})
    assert got.json() == {"next": [start, (z(start) + timedelta(days=1)).strftime(T),
                                   (z(start) + timedelta(days=2)).strftime(T)]}
    # count defaults to 10
    assert len(api.http.post("/schedule/preview/", json={"cron": "* * * * *"}).json()["next"]) \
        == 10


def test_job_next_lists_what_the_beat_fires(api) -> None:
    start = future()
    iso = api.create(name="iso", command="true", schedule=f"R/{start}/PT1H")
    assert api.http.get(f"/job/{iso}/next/?count=3").json() == {"next": [
        start, (z(start) + timedelta(hours=1)).strftime(T),
        (z(start) + timedelta(hours=2)).strftime(T)]}
    cron = api.create(name="cron", command="true", cron="15 4 * * *", timezone="Asia/Tokyo")
    listed = api.http.get(f"/job/{cron}/next/?count=100").json()["next"]
    assert len(listed) == 100 and listed[0] == api.job(cron)["next_run_at"]
    assert all(t.endswith("T19:15:00Z") for t in listed)  # 04:15 in Tokyo (no DST)
    api.http.post(f"/job/disable/{cron}/")
    assert api.http.get(f"/job/{cron}/next/").json() == {"next": []}
    one_off = api.create(name="once", command="true")
    assert api.http.get(f"/job/{one_off}/next/").json() == {"next": []}
    assert api.http.get("/job/nope/next/").status_code == 404


def test_a_count_out_of_range_or_not_a_number_is_refused(api) -> None:
    job_id = api.create(name="c", command="true", cron="* * * * *")
    refused = {"error": "count must be a whole number from 1 to 100"}
    for count in ("0", "101", "-1", "x", "1.5", "", "\u0661", "1e2"):
        got = api.http.get(f"/job/{job_id}/next/", params={"count": count})
        assert (got.status_code, got.json()) == (400, refused), count
    for value in ("0", "x", 0, 101, -3, True, 2.0, [5]):
        got = api.http.post("/schedule/preview/", json={"cron": "* * * * *", "count": value})
        assert (got.status_code, got.json()) == (400, refused), value
    for value in ("3", 3, " 3 "):
        got = api.http.post("/schedule/preview/", json={"cron": "* * * * *", "count": value})
        assert len(got.json()["next"]) == 3
    assert len(api.http.get(f"/job/{job_id}/next/?count=100").json()["next"]) == 100


BAD_TIMING = [
    {"cron": "61 * * * *"},
    {"cron": "0 9 * *"},
    {"schedule": "R5/2026-01-01T00:00:00Z/PT1H"},  # in the past
    {"schedule": "5/2030-01-01T00:00:00Z/PT1H"},
    {"schedule": "R/2030-01-01T00:00:00Z/PT0S"},
    {"cron": "0 9 * * *", "schedule": "R/2030-01-01T00:00:00Z/PT1H"},
    {"cron": "0 9 * * *", "timezone": "Mars/Olympus"},
    {"schedule": "R/2030-01-01T00:00:00Z/P1D", "timezone": "nowhere"},
]


def test_an_invalid_schedule_gets_the_message_a_create_gives(api) -> None:
    for timing in BAD_TIMING:
        created = api.http.post("/job/", json={"name": "x", "command": "true", **timing})
        previewed = api.http.post("/schedule/preview/", json=timing)
        assert created.status_code == previewed.status_code == 400, timing
        assert previewed.json() == created.json()
        assert created.json()["error"].startswith("Error occurred when initializing the job: ")
    assert api.http.get("/job/").json()["jobs"] == {}  # the creates stored nothing


BAD_BODIES = [
    (b"[1]", 'the body must be a JSON object with "schedule" or "cron"'),
    (b"{", "the body must be a JSON object like"),
    (b"\xff\xfe", "the body must be a JSON object like"),
    (b"", 'the body must be a JSON object with "schedule" or "cron"'),
    (b'{"cron": 5}', "cron must be a string"),
    (b'{"timezone": ["UTC"], "cron": "* * * * *"}', "timezone must be a string"),
    (b"{}", "give a schedule or a cron expression"),
]


def test_a_bad_preview_body_is_a_clear_400(api) -> None:
    for body, message in BAD_BODIES:
        got = api.http.post("/schedule/preview/", content=body,
                            headers={"Content-Type": "application/json"})
        assert got.status_code == 400 and message in got.json()["error"], (body, got.text)


def test_a_dashboard_preview_parses_its_schedule_once(monkeypatch) -> None:
    """One parse gives the check, the occurrences and the words (issue 23's parse-once)."""
    from kala_celery.schedule import iso8601
    from kala_celery.web import describe

    calls = []
    real = iso8601.parse_schedule
    monkeypatch.setattr(iso8601, "parse_schedule", lambda text, tz=None: calls.append(text)
                        or real(text, tz))
    occurrences.parse.cache_clear()  # a parse kept from an earlier test would hide one
    shown = describe.preview("R3/2099-03-01T09:00:00Z/PT1H", "Europe/Berlin", "UTC",
                             now=z("2026-12-01T00:00:00Z"), count=2)
    assert shown["ok"] and shown["words"].startswith("every hour from 1 Mar 2099 10:00 ")
    assert shown["occurrences"] == ["1 Mar 2099 10:00 Europe/Berlin",
                                    "1 Mar 2099 11:00 Europe/Berlin"]
    assert calls == ["R3/2099-03-01T09:00:00Z/PT1H"]
