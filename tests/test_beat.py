"""The Kala beat scheduler: pure coalescing rules, and real `celery beat` + worker processes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select

from kala_celery import schedule
from kala_celery.beat.claim import Advance, advance, claim_batch
from kala_celery.store import audit
from kala_celery.store.tables import AuditEntry, Job, Run
from tests.processes import wait_for
from tests.test_worker_runs import finished, runs_of

pytestmark = pytest.mark.serial  # asserts timings: after the parallel part (scripts/test.sh)

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
S = timedelta(seconds=1)


def every_second(repeat: str = "R") -> schedule.Schedule:
    return schedule.parse_schedule(f"{repeat}/2026-12-01T09:00:00Z/PT1S")


@pytest.mark.parametrize(
    ("now", "resume", "used", "expected"),
    [
        (T0, False, 0, Advance(T0, T0 + S)),  # on time
        (T0 + 0.3 * S, False, 0, Advance(T0, T0 + S)),  # a little late, nothing missed
        # missed: one catch-up run for the latest, three counted as missed
        (T0 + 3.5 * S, False, 0, Advance(T0 + 3 * S, T0 + 4 * S, 3)),
        (T0 + 3.5 * S, True, 0, Advance(None, T0 + 4 * S, 4)),  # missed + resume: skip all 4
        (T0 + 0.3 * S, True, 0, Advance(T0, T0 + S)),  # late but nothing missed: runs
    ],
)
def test_advance_coalesces_missed_occurrences(now, resume, used, expected) -> None:
    assert advance(every_second(), T0, used, now, resume) == expected


def test_advance_stops_when_runs_are_used_up() -> None:
    assert advance(every_second("R2"), T0 + 2 * S, 2, T0 + 2 * S, False) == Advance(T0 + 2 * S,
                                                                                    None)
    assert advance(every_second("R2"), T0 + S, 1, T0 + S, False) == Advance(T0 + S, T0 + 2 * S)
    r0 = schedule.parse_schedule("R0/2026-12-01T09:00:00Z/")
    assert advance(r0, T0, 0, T0 + 99 * S, True) == Advance(T0, None)


def soon(seconds: float = 2) -> str:
    """A whole second at least `seconds` from now (rounded up: a start in the past is a 400)."""
    t = datetime.now(UTC) + timedelta(seconds=seconds)
    if t.microsecond:
        t = t.replace(microsecond=0) + timedelta(seconds=1)
    return t.strftime("%Y-%m-%dT%H:%M:%SZ")


def scheduled_times(api, job_id: str) -> list[datetime]:
    with api.state.sessions() as session:
        return list(session.scalars(select(Run.scheduled_for).where(Run.job_id == job_id)
                                    .order_by(Run.scheduled_for)))


def test_r2_runs_three_times_a_second_apart_then_is_done(cluster) -> None:
    cluster.worker()
    cluster.beat()
    api = cluster.api
    start = soon()
    job_id = api.create(name="r2", command="true", schedule=f"R2/{start}/PT1S")
    runs = finished(api, job_id, count=3, timeout=30)
    assert [r["status"] for r in runs] == ["Success"] * 3
    first = datetime.fromisoformat(start)
    assert scheduled_times(api, job_id) == [first, first + S, first + 2 * S]
    started = [datetime.fromisoformat(r["ran_at"]) for r in runs]
    for occurrence, ran in zip([first, first + S, first + 2 * S], started, strict=True):
        assert timedelta(0) <= ran - occurrence < timedelta(seconds=1), (occurrence, ran)
    job = wait_for(lambda: (j := api.job(job_id))["is_done"] and j, 10, "is_done")
    assert job["next_run_at"] == "0001-01-01T00:00:00Z"
    assert job["metadata"]["success_count"] == 3
    with pytest.raises(TimeoutError):
        finished(api, job_id, count=4, timeout=2)


def test_forever_keeps_going_and_a_future_one_off_runs_once(cluster) -> None:
    cluster.worker()
    cluster.beat()
    api = cluster.api
    forever = api.create(name="r", command="true", schedule=f"R/{soon()}/PT1S")
    once = api.create(name="r0", command="true", schedule=f"R0/{soon()}/")
    finished(api, forever, count=4, timeout=30)
    assert api.job(forever)["is_done"] is False
    assert len(finished(api, once, timeout=10)) == 1
    assert api.job(once)["is_done"] is True


def test_api_edits_take_effect_within_a_second(cluster) -> None:
    cluster.worker()
    cluster.beat()
    api = cluster.api
    job_id = api.create(name="edit", command="true", schedule=f"R/{soon(1)}/PT1S")
    finished(api, job_id, count=2, timeout=30)
    api.http.post(f"/job/disable/{job_id}/")
    settled = len(runs_of(api, job_id))
    with pytest.raises(TimeoutError):
        wait_for(lambda: len(runs_of(api, job_id)) > settled + 1, 3, "no runs while disabled")
    # a new schedule (a far start) replaces the old one at once
    far = soon(3600)
    api.http.put(f"/job/{job_id}/", json={"name": "edit", "command": "true",
                                          "schedule": f"R/{far}/PT1S"})
    assert api.job(job_id)["next_run_at"] == far
    count = len(runs_of(api, job_id))
    with pytest.raises(TimeoutError):
        wait_for(lambda: len(runs_of(api, job_id)) > count, 2, "no runs before the new start")
    api.http.delete(f"/job/{job_id}/")
    assert api.http.get(f"/job/{job_id}/").status_code == 404


def test_claim_coalesces_missed_occurrences_and_resume_skips_them(api) -> None:
    """claim_batch against the real database with a fixed clock: 3.5 s after the start of two
    PT1S jobs (beat down meanwhile), one catch-up run for the latest occurrence; the resume
    job records none. Both continue at the anchored occurrences."""
    start = soon(3600)
    first = datetime.fromisoformat(start)
    catch_up = api.create(name="catch-up", command="true", schedule=f"R/{start}/PT1S")
    resume = api.create(name="resume", command="true", schedule=f"R/{start}/PT1S",
                        resume_at_next_scheduled_time=True)
    now = first + 3.5 * S
    with api.state.sessions.begin() as session:
        runs = claim_batch(session, now, 100, "UTC")
    with api.state.sessions() as session:
        recorded = [(r.job_id, r.scheduled_for) for r in map(session.get, [Run] * len(runs), runs)]
    assert recorded == [(catch_up, first + 3 * S)]
    for job_id in (catch_up, resume):
        assert api.job(job_id)["next_run_at"] == (first + 4 * S).strftime("%Y-%m-%dT%H:%M:%SZ")
    with api.state.sessions.begin() as session:  # nothing more is due until the next one
        assert claim_batch(session, now + 0.4 * S, 100, "UTC") == []


def test_claim_twice_never_duplicates(api) -> None:
    start = soon(3600)
    job_id = api.create(name="once", command="true", schedule=f"R/{start}/PT1S",
                        allow_overlap=True)
    now = datetime.fromisoformat(start)
    for _ in range(3):
        with api.state.sessions.begin() as session:
            claim_batch(session, now, 100, "UTC")
    assert scheduled_times(api, job_id) == [now]


def test_no_overlap_by_default(cluster) -> None:
    cluster.worker(concurrency=4)
    cluster.beat()
    api = cluster.api
    job_id = api.create(name="slow", command="sleep 2.5", schedule=f"R/{soon(1)}/PT1S")
    runs = finished(api, job_id, count=2, timeout=40)
    first, second = runs[0], runs[1]
    # the second run waited for the first to end, then fired right away (within a tick)
    with api.state.sessions() as session:
        rows = session.scalars(select(Run).where(Run.job_id == job_id)
                               .order_by(Run.created_at)).all()
    assert rows[1].created_at >= rows[0].finished_at
    assert rows[1].created_at - rows[0].finished_at < timedelta(seconds=1.5)
    assert first["status"] == second["status"] == "Success"


def test_an_unparseable_stored_schedule_is_disabled_and_the_beat_goes_on(cluster) -> None:
    cluster.worker()
    beat = cluster.beat()
    api = cluster.api
    poisoned = api.create(name="poison", command="true", schedule=f"R/{soon(3600)}/PT1S")
    healthy = api.create(name="healthy", command="true", schedule=f"R/{soon(1)}/PT1S")
    with api.state.sessions.begin() as session:  # a bulk SQL edit outside the API
        job = session.get(Job, poisoned)
        job.schedule = "5/garbage"
        job.next_run_at = datetime.now(UTC)
    finished(api, healthy, count=3, timeout=30)
    job = api.job(poisoned)
    assert job["disabled"] is True and runs_of(api, poisoned) == []
    assert "unusable schedule" in beat.output()


def test_sweep_gives_up_on_runs_whose_worker_vanished(cluster) -> None:
    cluster.worker()
    api = cluster.api
    long_ago = datetime.now(UTC) - timedelta(minutes=5)
    ids = {}
    for name, retries in (("no-retry", 0), ("retry", 1)):
        ids[name] = api.create(name=name, command="true", retries=retries,
                               schedule=f"R/{soon(3600)}/PT1H")
        with api.state.sessions.begin() as session:  # a worker on another box died mid-run
            session.add(Run(id=f"ghost-{name}", job_id=ids[name], scheduled_for=long_ago,
                            trigger="manual", state="started", attempts=1, worker="gone@box/1",
                            created_at=long_ago, started_at=long_ago, attempt_at=long_ago))
    cluster.beat(extra_env={"KALA_WORKER_TIMEOUT": "PT2S"})  # no heartbeat from gone@box/1
    [lost] = finished(api, ids["no-retry"], timeout=30)
    assert lost["state"] == "lost" and "worker lost" in lost["error"]
    assert api.job(ids["no-retry"])["metadata"]["error_count"] == 1
    [retried] = finished(api, ids["retry"], timeout=30)  # its second attempt ran on our worker
    assert (retried["state"], retried["number_of_retries"]) == ("success", 1)


def test_sweep_rearms_jobs_unscheduled_by_bulk_sql(cluster) -> None:
    cluster.worker()
    api = cluster.api
    job_id = api.create(name="bulk", command="true", schedule=f"R/{soon(1)}/PT1S")
    with api.state.sessions.begin() as session:
        session.get(Job, job_id).next_run_at = None
    cluster.beat()
    finished(api, job_id, count=2, timeout=30)
    assert api.job(job_id)["next_run_at"] != "0001-01-01T00:00:00Z"


def test_sweep_prunes_finished_runs_and_audit_rows_past_retention(cluster) -> None:
    api = cluster.api
    job_id = api.create(name="old", command="true", schedule=f"R/{soon(3600)}/PT1H")
    ancient = datetime.now(UTC) - timedelta(days=31)  # KALA_RUN_RETENTION is P30D
    recent = datetime.now(UTC) - timedelta(days=29)
    who = audit.Actor(token="t", address="127.0.0.1", via="api")
    with api.state.sessions.begin() as session:  # KALA_AUDIT_RETENTION is P365D
        for name, days in (("audit-ancient", 366), ("audit-recent", 364)):
            audit.record(session, who, "create", job_id=name,
                         now=datetime.now(UTC) - timedelta(days=days))
    with api.state.sessions.begin() as session:
        for name, when, state in (("ancient", ancient, "success"), ("recent", recent, "success"),
                                  ("ancient-pending", ancient, "pending")):
            session.add(Run(id=name, job_id=job_id, scheduled_for=when, trigger="manual",
                            state=state, attempts=1, created_at=when))
    cluster.beat()

    def remaining() -> set[str]:
        with api.state.sessions() as session:
            return set(session.scalars(select(Run.id).where(Run.job_id == job_id)))

    wait_for(lambda: "ancient" not in remaining(), 30, "the ancient run pruned")
    assert {"recent", "ancient-pending"} <= remaining()

    def audited() -> set[str | None]:
        with api.state.sessions() as session:
            return set(session.scalars(select(AuditEntry.job_id)))

    wait_for(lambda: "audit-ancient" not in audited(), 30, "the ancient audit row pruned")
    assert audited() == {"audit-recent", job_id}
