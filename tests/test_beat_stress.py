"""Several beats on one PostgreSQL database, killed at random: no duplicate, no gap."""

from __future__ import annotations

import random
import signal
import sys
import time
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import select

from kala_celery.store import jobs
from kala_celery.store.db import make_engine, make_sessionmaker
from kala_celery.store.tables import Run
from tests.processes import Command, wait_for

pytestmark = pytest.mark.alone  # three beats and their timings: nothing beside it (scripts/test.sh)

JOBS = 200
SECONDS = 15  # the long version of this: python -m bench beat-scale / chaos
KILLS = 6


def start_beat(env: dict[str, str], log: Path) -> Command:
    beat = Command([sys.executable, "-m", "celery", "-A", "kala_celery", "beat", "-S", "kala",
                    "-l", "info", "--pidfile="], log, env)
    wait_for(lambda: "beat: Starting" in beat.output() or beat.proc.poll() is not None, 60,
             "beat started")
    return beat


@pytest.mark.timeout(300)
def test_three_beats_killed_at_random_dispatch_every_occurrence_once(
    postgres_server, redis_server, tmp_path: Path
) -> None:
    url = postgres_server.create_database(f"stress_{uuid.uuid4().hex[:8]}")
    redis.Redis.from_url(redis_server.url).flushdb()
    env = {"KALA_DATABASE_URL": url, "KALA_BROKER_URL": redis_server.url,
           "KALA_DATA_DIR": str(tmp_path)}
    engine = make_engine(url)
    from kala_celery.store.db import init_schema

    init_schema(engine)
    sessions = make_sessionmaker(engine)
    start = (datetime.now(UTC) + timedelta(seconds=8)).replace(microsecond=0)
    with sessions.begin() as session:  # allow_overlap: no worker runs them; dispatch is tested
        for n in range(JOBS):
            jobs.create_job(session, {"name": f"j{n}", "command": "true", "allow_overlap": True,
                                      "schedule": f"R/{start:%Y-%m-%dT%H:%M:%SZ}/PT1S"},
                            jobs.Rules(), datetime.now(UTC))
    beats = [start_beat(env, tmp_path / f"beat{i}.log") for i in range(3)]
    logs = [b.log_path for b in beats]

    # 1. Three beats for SECONDS: every occurrence dispatched exactly once.
    wait_for(lambda: datetime.now(UTC) >= start, 30, "the start")
    time.sleep(SECONDS)
    calm_until = datetime.now(UTC) - timedelta(seconds=1)

    # 2. A beat killed at random instants (and replaced at once): never a duplicate.
    rng = random.Random(1234)
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.2, 2.0))
        victim = rng.randrange(len(beats))
        beats[victim].stop(signal.SIGKILL)
        log = tmp_path / f"beat-restart-{len(logs)}.log"
        logs.append(log)
        beats[victim] = start_beat(env, log)

    # 3. Every beat down for a while: the missed occurrences coalesce into one run per job.
    for beat in beats:
        beat.stop(signal.SIGKILL)
    down_at = datetime.now(UTC)
    wait_for(lambda: datetime.now(UTC) >= down_at + timedelta(seconds=3.5), 30,
             "three occurrences falling due with every beat down")
    survivor = start_beat(env, tmp_path / "beat-last.log")
    logs.append(survivor.log_path)
    wait_for(lambda: datetime.now(UTC) > down_at + timedelta(seconds=8), 30, "catch-up")
    survivor.stop(signal.SIGTERM)

    with sessions() as session:
        rows = session.execute(select(Run.job_id, Run.scheduled_for)).all()
    per_job: dict[str, list[datetime]] = defaultdict(list)
    for job_id, scheduled_for in rows:
        per_job[job_id].append(scheduled_for)
    assert len(per_job) == JOBS
    second = timedelta(seconds=1)
    for job_id, times in per_job.items():
        times.sort()
        assert len(times) == len(set(times)), f"duplicate occurrence for {job_id}"
        assert all((t - start) % second == timedelta(0) for t in times)  # anchored
        calm = [t for t in times if t <= calm_until]
        assert calm == [start + k * second for k in range(len(calm))], f"gap in {job_id}"
        assert len(calm) >= SECONDS
        outage = [t for t in times if down_at < t <= down_at + 3 * second]
        assert len(outage) <= 1, (job_id, outage)  # the outage left one catch-up run at most
    for log in logs:
        text = log.read_text(errors="replace")
        assert "IntegrityError" not in text and "Traceback" not in text, log
    engine.dispose()
    postgres_server.drop_database(url.rsplit("/", 1)[1])
