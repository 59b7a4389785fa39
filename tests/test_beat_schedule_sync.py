"""A team's own Celery app with a beat_schedule (tests/beat_schedule_app.py), started with two
real `celery -A ... beat -S kala` processes and a worker of that app on a real Redis: every
entry becomes one job (Decision 30 in docs/design.md), runs on time once per occurrence, and
a restart with changed code updates and disables jobs without touching their runs."""

from __future__ import annotations

import sys
import uuid
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import select

from kala_celery.beat.beat_schedule import job_id_for
from kala_celery.store.tables import Job, Run
from tests.processes import Command, wait_for

pytestmark = pytest.mark.timeout(180)

APP = "tests.beat_schedule_app"
TICK = job_id_for("tick every 2 s")
NUMBER = job_id_for("number of seconds")
SIGNAL = job_id_for("from on_after_configure")
CRON = job_id_for("quarter hours")
MINUTE = job_id_for("every minute")


def _beats(cluster: object, tmp_path: Path, variant: str, n: int = 1) -> list[Command]:
    """n beats of the app's code `variant`, started at once (their syncs race)."""
    commands = [Command(
        [sys.executable, "-m", "celery", "-A", APP, "beat", "-S", "kala", "-l", "info",
         "--pidfile="],
        tmp_path / f"beat-{variant}-{uuid.uuid4().hex[:6]}.log",
        {**cluster.env, "BEAT_VARIANT": variant},
    ) for _ in range(n)]
    for command in commands:
        cluster.started.append(command)
        wait_for(lambda c=command: "beat: Starting" in c.output() or c.proc.poll() is not None,
                 60, "celery beat started")
        assert command.proc.poll() is None, command.output()
    return commands


def _jobs(cluster: object) -> dict[str, Job]:
    with cluster.api.state.sessions() as session:
        found = session.scalars(select(Job)).all()
        session.expunge_all()
    return {job.id: job for job in found}


def _runs(cluster: object, job_id: str) -> list[Run]:
    with cluster.api.state.sessions() as session:
        found = session.scalars(select(Run).where(Run.job_id == job_id)
                                .order_by(Run.scheduled_for)).all()
        session.expunge_all()
    return list(found)


def _on_time(runs: list[Run], every: timedelta) -> None:
    """One run per occurrence: consecutive occurrences of one anchor, each started within a
    few seconds of its time."""
    times = [run.scheduled_for for run in runs]
    assert len(set(times)) == len(times), times
    for earlier, later in pairwise(times):
        assert later - earlier == every, times
    for run in runs:
        assert run.state == "success", (run.state, run.error)
        assert run.started_at is not None
        assert timedelta(0) <= run.started_at - run.scheduled_for < timedelta(seconds=4), run


def test_beat_schedule_entries_become_jobs_that_run_once_per_occurrence(
    cluster: object, tmp_path: Path
) -> None:
    record = tmp_path / "calls.txt"
    record.touch()
    cluster.env["RECORD_FILE"] = str(record)
    cluster.worker(app=APP, concurrency=4, extra_env={"RECORD_FILE": str(record)})
    beats = _beats(cluster, tmp_path, "a", 2)

    def ran(job_id: str, n: int) -> list[Run]:
        done = [r for r in _runs(cluster, job_id) if r.state == "success"]
        return done if len(done) >= n else []

    wait_for(lambda: ran(TICK, 4) and ran(NUMBER, 3) and ran(SIGNAL, 2), 40,
             "runs of the interval entries")
    for beat in beats:
        beat.stop()
    jobs = _jobs(cluster)
    assert set(jobs) == {TICK, NUMBER, SIGNAL, CRON, MINUTE}  # each made once by two beats
    made = [beat.output().count("beat: beat_schedule: 5 jobs created") for beat in beats]
    assert sorted(made) == [0, 1], made  # one beat made them, the other found them made
    assert all(job.source == "config" for job in jobs.values())
    tick = jobs[TICK]
    assert tick.name == "tick every 2 s" and tick.job_type == 2
    assert tick.celery_task == {"name": f"{APP}.record", "args": ["tick"], "kwargs": {}}
    assert tick.schedule.startswith("R/") and tick.schedule.endswith("/PT2S")
    assert jobs[NUMBER].queue == "celery" and jobs[NUMBER].schedule.endswith("/PT3S")
    assert jobs[SIGNAL].schedule.endswith("/PT4S")
    cron = jobs[CRON]
    assert (cron.cron, cron.timezone, cron.schedule) == ("*/15 8-18 * * *", "Europe/Paris", "")
    paris = cron.created_at.astimezone(ZoneInfo("Europe/Paris"))
    expected = _next_quarter_hour_8_to_18(paris)
    assert cron.next_run_at == expected.astimezone(UTC)

    # every occurrence ran once, on time, and each run called the task once
    settled = {job_id: [r for r in _runs(cluster, job_id) if r.state != "pending"]
               for job_id in (TICK, NUMBER, SIGNAL)}
    _on_time([r for r in settled[TICK] if r.state == "success"], timedelta(seconds=2))
    _on_time([r for r in settled[NUMBER] if r.state == "success"], timedelta(seconds=3))
    _on_time([r for r in settled[SIGNAL] if r.state == "success"], timedelta(seconds=4))
    wait_for(lambda: all(r.state == "success" for job_id in (TICK, NUMBER, SIGNAL)
                         for r in _runs(cluster, job_id)), 15, "the last runs to finish")
    calls = record.read_text().split()
    for job_id, word in ((TICK, "tick"), (NUMBER, "number"), (SIGNAL, "signal")):
        assert calls.count(word) == len(_runs(cluster, job_id)), (word, calls)

    # a restart with the same code changes nothing, not even the anchor
    [again] = _beats(cluster, tmp_path, "a")
    wait_for(lambda: len(_runs(cluster, TICK)) > len(settled[TICK]) + 1, 20, "ticks again")
    again.stop()
    assert _jobs(cluster)[TICK].schedule == tick.schedule
    assert "jobs created" not in again.output()

    # changed code: the interval entry is updated, the removed one disabled, its runs kept
    number_runs = len(_runs(cluster, NUMBER))
    [changed] = _beats(cluster, tmp_path, "b")
    wait_for(lambda: _jobs(cluster)[NUMBER].disabled, 20, "the removed entry's job disabled")
    jobs = _jobs(cluster)
    assert jobs[TICK].schedule.endswith("/PT3S") and jobs[TICK].schedule != tick.schedule
    assert jobs[NUMBER].next_run_at is None
    assert len(_runs(cluster, NUMBER)) == number_runs
    assert "0 jobs created, 1 updated, 1 disabled" in changed.output()
    since = datetime.now(UTC)
    wait_for(lambda: len([r for r in _runs(cluster, TICK) if r.scheduled_for > since
                          and r.state == "success"]) >= 2, 20, "ticks every 3 s")
    # the crontab entry runs too: its first whole minute while this beat runs, once, on time
    # (earlier minutes may have fallen between this test's beats, and started late)
    assert jobs[MINUTE].cron == "* * * * *"
    [minute] = wait_for(lambda: [r for r in _runs(cluster, MINUTE) if r.scheduled_for > since
                                 and r.state == "success"], 75, "an every-minute run")
    assert minute.scheduled_for.second == 0 and minute.scheduled_for.microsecond == 0
    _on_time([minute], timedelta(minutes=1))
    wait_for(lambda: all(r.state == "success" for r in _runs(cluster, MINUTE)), 15,
             "every minute run to finish")
    assert record.read_text().split().count("minute") == len(_runs(cluster, MINUTE))
    changed.stop()
    new = [r for r in _runs(cluster, TICK) if r.scheduled_for > since and r.state == "success"]
    _on_time(new, timedelta(seconds=3))



def _next_quarter_hour_8_to_18(t: datetime) -> datetime:
    """The first */15 minute of hours 8-18 after t (cron's next), in t's zone."""
    candidate = t.replace(second=0, microsecond=0) + timedelta(minutes=1)
    while not (candidate.minute % 15 == 0 and 8 <= candidate.hour <= 18):
        candidate += timedelta(minutes=1)
    return candidate
