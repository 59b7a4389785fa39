"""Cron jobs (Decision 18) and the overlap policy (Decision 21) in the beat: the pure claim
rules, claim_batch on SQLite and PostgreSQL with a fixed clock, and real `celery beat` and
`celery worker` processes firing a cron job and skip/allow jobs."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from kala_celery import schedule
from kala_celery.beat.claim import Advance, advance, claim_batch
from kala_celery.schedule import cron
from kala_celery.store.tables import Job, Run
from tests.processes import wait_for
from tests.test_migrations import metric
from tests.test_worker_runs import finished

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
S = timedelta(seconds=1)
M = timedelta(minutes=1)
MINUTELY = cron.parse_cron("* * * * *", schedule.resolve_zone("UTC"))


def every_second(repeat: str = "R") -> schedule.Schedule:
    return schedule.parse_schedule(f"{repeat}/2026-12-01T09:00:00Z/PT1S")


# ---------------------------------------------------------------- pure


@pytest.mark.parametrize(("now", "resume", "expected"), [
    (T0, False, Advance(T0, T0 + M)),  # on time
    (T0 + 20 * S, False, Advance(T0, T0 + M)),  # a little late, nothing missed
    (T0 + 3.5 * M, False, Advance(T0 + 3 * M, T0 + 4 * M, 3)),  # one catch-up run, 3 missed
    (T0 + 3.5 * M, True, Advance(None, T0 + 4 * M, 4)),  # resume: all 4 skipped
    (T0 + 20 * S, True, Advance(T0, T0 + M)),  # late, nothing missed: runs
])
def test_a_cron_job_coalesces_as_an_iso_one(now, resume, expected) -> None:
    assert advance(MINUTELY, T0, 0, now, resume) == expected
    assert advance(MINUTELY, T0, 10**9, now, resume) == expected  # it never runs out


@pytest.mark.parametrize(("parsed", "now", "expected"), [
    (every_second(), T0, Advance(None, T0 + S, skipped=1)),
    (every_second(), T0 + 3.5 * S, Advance(None, T0 + 4 * S, skipped=4)),
    (every_second("R2"), T0 + 3.5 * S, Advance(None, T0 + 4 * S, skipped=4)),  # runs unused
    (MINUTELY, T0 + 3.5 * M, Advance(None, T0 + 4 * M, skipped=4)),
    (schedule.parse_schedule("R0/2026-12-01T09:00:00Z/"), T0, Advance(None, None, skipped=1)),
])
def test_skip_with_a_run_in_flight_drops_every_passed_occurrence(parsed, now, expected) -> None:
    assert advance(parsed, T0, 0, now, resume=False, busy=True) == expected
    assert advance(parsed, T0, 0, now, resume=True, busy=True) == expected


# ---------------------------------------------------------------- claim_batch, fixed clock


def in_an_hour() -> datetime:
    return (datetime.now(UTC) + timedelta(hours=1)).replace(minute=0, second=0, microsecond=0)


def claim(api, now: datetime) -> list[tuple[str, datetime]]:
    with api.state.sessions.begin() as session:
        ids = claim_batch(session, now, 100, "UTC")
    with api.state.sessions() as session:
        return [(r.job_id, r.scheduled_for) for r in map(session.get, [Run] * len(ids), ids)]


def row(api, job_id: str) -> Job:
    with api.state.sessions() as session:
        return session.get(Job, job_id)


def test_claim_of_cron_jobs_coalesces_and_resumes(api) -> None:
    """A minutely cron job, and one with resume_at_next_scheduled_time, claimed 3.5 minutes
    after their first occurrence (the beat was away): as ISO jobs, one catch-up run for the
    latest, or none; both then wait for the next minute, and the job is not done."""
    catch_up = api.create(name="c", command="true", cron="* * * * *")
    resume = api.create(name="r", command="true", cron="* * * * *",
                        resume_at_next_scheduled_time=True)
    first = row(api, catch_up).next_run_at
    assert first == row(api, resume).next_run_at and first.second == 0 and first > T0
    assert claim(api, first + 3.5 * M) == [(catch_up, first + 3 * M)]
    for job_id, missed in ((catch_up, 3), (resume, 4)):
        job = row(api, job_id)
        assert (job.next_run_at, job.missed_occurrences, job.is_done) == (first + 4 * M,
                                                                           missed, False)
    assert claim(api, first + 3.9 * M) == []  # nothing more until the next minute
    # the catch-up job's run is still in flight (never run here): it waits (buffer)
    assert claim(api, first + 4 * M) == [(resume, first + 4 * M)]


def test_claim_by_overlap_policy(api) -> None:
    """Three PT1S jobs with a run in flight (claimed at their start, never run), claimed
    again 3.5 s later: buffer waits, skip drops the three passed occurrences and counts them
    (jobs.overlap_skipped and kala_overlap_skipped_total), allow coalesces them into a run."""
    start = in_an_hour()
    text = f"R/{start.strftime('%Y-%m-%dT%H:%M:%SZ')}/PT1S"
    buffer = api.create(name="b", command="true", schedule=text)
    skip = api.create(name="s", command="true", schedule=text, overlap="skip")
    allow = api.create(name="a", command="true", schedule=text, overlap="allow")
    assert sorted(claim(api, start)) == sorted((j, start) for j in (buffer, skip, allow))
    assert sorted(claim(api, start + 3.5 * S)) == [(allow, start + 3 * S)]
    jobs = {job_id: row(api, job_id) for job_id in (buffer, skip, allow)}
    assert jobs[buffer].next_run_at == start + S  # waits for the run in flight
    assert (jobs[skip].next_run_at, jobs[skip].overlap_skipped,
            jobs[skip].missed_occurrences, jobs[skip].runs_used) == (start + 4 * S, 3, 0, 1)
    assert (jobs[allow].next_run_at, jobs[allow].missed_occurrences) == (start + 4 * S, 2)
    body = api.raw.get("/metrics").text
    assert metric(body, "kala_overlap_skipped_total") == 3
    assert metric(body, "kala_missed_occurrences_total") == 2
    # once nothing is in flight, skip fires its next occurrence as any job
    with api.state.sessions.begin() as session:
        for run in session.scalars(select(Run).where(Run.job_id == skip)):
            run.state = "success"
    assert sorted(claim(api, start + 4 * S)) == sorted([(allow, start + 4 * S),
                                                        (skip, start + 4 * S)])


OVERLAP_KEYS = [
    ({}, {}),
    ({"overlap": "buffer"}, {}),
    ({"overlap": "skip"}, {"overlap": "skip"}),
    ({"overlap": "allow"}, {"allow_overlap": True, "overlap": "allow"}),
    ({"allow_overlap": True}, {"allow_overlap": True, "overlap": "allow"}),
    ({"allow_overlap": True, "overlap": "allow"}, {"allow_overlap": True, "overlap": "allow"}),
    ({"allow_overlap": False, "overlap": "skip"}, {"overlap": "skip"}),
]


def test_overlap_and_its_alias_in_the_job_document(api) -> None:
    for given, shown in OVERLAP_KEYS:
        job_id = api.create(name="o", command="true", cron="0 9 * * *", **given)
        doc = api.job(job_id)
        keys = list(doc)
        assert {k: doc[k] for k in ("allow_overlap", "overlap") if k in doc} == shown, given
        # allow_overlap where it always was, cron and overlap after the older extension keys
        expected = (["allow_overlap"] * ("allow_overlap" in shown) + ["cron"]
                    + ["overlap"] * bool(shown))
        assert keys[keys.index("is_done") + 1:] == expected
        assert api.http.get("/job/").json()["jobs"][job_id] == doc  # the fast list agrees


REFUSED = [
    ({"overlap": "never"}, 'overlap \'never\' must be "buffer", "skip" or "allow"'),
    ({"overlap": "skip", "allow_overlap": True}, "allow_overlap: true contradicts overlap"),
    ({"cron": "0 9 * * *", "schedule": "R/2030-01-01T00:00:00Z/PT1H"},
     "a job has either a schedule or a cron expression, not both"),
    ({"cron": "0 9 * * * *"}, "invalid cron '0 9 * * * *': expected five fields"),
    ({"cron": "0 9 * * SUN-FUN"}, "invalid cron '0 9 * * SUN-FUN': Bad day-of-week"),
]


def test_refused_cron_and_overlap_bodies(api) -> None:
    for body, reason in REFUSED:
        got = api.http.post("/job/", json={"name": "x", "command": "true", **body})
        assert got.status_code == 400 and reason in got.json()["error"], got.text
    assert api.http.get("/job/").json()["jobs"] == {}


def test_replace_moves_a_job_between_cron_and_iso(api) -> None:
    job_id = api.create(name="x", command="true", cron="0 9 * * *", timezone="Europe/Berlin")
    assert api.job(job_id)["next_run_at"].endswith(("T08:00:00Z", "T07:00:00Z"))
    start = in_an_hour().strftime("%Y-%m-%dT%H:%M:%SZ")
    got = api.http.put(f"/job/{job_id}/", json={"name": "x", "command": "true",
                                                "schedule": f"R/{start}/PT1H"})
    assert got.status_code == 200 and "cron" not in got.json()["job"]
    assert got.json()["job"]["next_run_at"] == start
    got = api.http.put(f"/job/{job_id}/", json={"name": "x", "command": "true",
                                                "cron": "30 6 * * *"})
    assert got.json()["job"]["cron"] == "30 6 * * *" and got.json()["job"]["schedule"] == ""
    assert got.json()["job"]["next_run_at"].endswith("T06:30:00Z")


# ---------------------------------------------------------------- real beat and worker


def test_cron_and_overlap_policies_with_a_real_beat_and_worker(cluster) -> None:
    """A minutely cron job fires at the minute (a real minute: up to 60 s), runs, stays armed
    for the next minute and is not done. Meanwhile PT1S jobs running 2.5 s: skip starts a run
    only once the previous one ended and counts the dropped occurrences; allow overlaps."""
    cluster.worker(concurrency=4)
    cluster.beat()
    api = cluster.api
    minutely = api.create(name="cron", command="true", cron="* * * * *")
    start = (datetime.now(UTC) + 2 * S).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")
    skip = api.create(name="skip", command="sleep 2.5", schedule=f"R/{start}/PT1S",
                      overlap="skip")
    allow = api.create(name="allow", command="sleep 2.5", schedule=f"R/{start}/PT1S",
                       allow_overlap=True)
    finished(api, skip, count=2, timeout=60)
    finished(api, allow, count=2, timeout=60)
    api.http.post(f"/job/disable/{skip}/")
    api.http.post(f"/job/disable/{allow}/")
    with api.state.sessions() as session:
        def runs(job_id: str) -> list[Run]:
            return list(session.scalars(select(Run).where(Run.job_id == job_id)
                                        .order_by(Run.scheduled_for)))
        skipped = [r for r in runs(skip) if r.finished_at is not None]
        for earlier, later in itertools.pairwise(skipped):
            assert later.created_at >= earlier.finished_at  # never two at once
            assert later.scheduled_for - earlier.scheduled_for >= 2 * S  # some were dropped
        overlapping = runs(allow)
        assert overlapping[1].started_at < overlapping[0].finished_at  # ran side by side
        assert session.get(Job, skip).overlap_skipped >= 2
        assert session.get(Job, skip).missed_occurrences == 0
    assert metric(api.raw.get("/metrics").text, "kala_overlap_skipped_total") >= 2

    [run] = finished(api, minutely, count=1, timeout=75)
    assert run["state"] == "success" and run["trigger"] == "schedule"
    fired = datetime.fromisoformat(run["scheduled_for"].replace("Z", "+00:00"))
    assert (fired.second, fired.microsecond) == (0, 0)
    job = wait_for(lambda: (j := api.job(minutely))["metadata"]["success_count"] == 1 and j,
                   10, "the cron run counted")
    assert job["is_done"] is False
    assert job["next_run_at"] == (fired + M).strftime("%Y-%m-%dT%H:%M:%SZ")
