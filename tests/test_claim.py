"""Several beats claiming the same due jobs at once, in process, on both databases: every job is
claimed exactly once per occurrence, counted once, and moved on once (PostgreSQL: SKIP LOCKED
rows; SQLite: one claim holds the write lock at a time)."""

from __future__ import annotations

import threading
from collections import Counter
from datetime import timedelta

from sqlalchemy import select, update

from kala_celery.beat.claim import claim_batch, claim_due
from kala_celery.store import jobs
from kala_celery.store.db import init_schema, make_engine, make_sessionmaker
from kala_celery.store.tables import Job, Run, utcnow

FAR = (utcnow() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")
JOBS = 600
BEATS = 3
BATCH = 40


def test_concurrent_claims_take_each_due_job_once(db_url) -> None:
    engines = [make_engine(db_url) for _ in range(BEATS)]
    init_schema(engines[0])
    sessions = [make_sessionmaker(engine) for engine in engines]
    with sessions[0].begin() as session:
        for i in range(JOBS):
            body = {"name": f"c{i}", "command": "true", "schedule": f"R/{FAR}/PT1H"}
            jobs.create_job(session, body, jobs.Rules(), utcnow())
        session.execute(update(Job).values(next_run_at=utcnow() - timedelta(seconds=5)))
    now = utcnow()
    claimed: list[list[str]] = [[] for _ in range(BEATS)]
    errors: list[BaseException] = []
    start = threading.Barrier(BEATS)

    def beat(k: int) -> None:
        try:
            start.wait()
            while True:
                with sessions[k].begin() as session:
                    runs = claim_batch(session, now, BATCH, "UTC")
                claimed[k] += runs
                if len(runs) < BATCH:
                    return
        except BaseException as exc:  # reported below, with the thread's name
            errors.append(exc)

    threads = [threading.Thread(target=beat, args=(k,)) for k in range(BEATS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    assert not any(thread.is_alive() for thread in threads)

    with sessions[0]() as session:
        per_job = Counter(session.scalars(select(Run.job_id)))
        used = set(session.scalars(select(Job.runs_used)))
        missed = set(session.scalars(select(Job.missed_occurrences)))
        due_left = session.scalar(select(Job.id).where(Job.next_run_at <= now).limit(1))
    assert sum(len(c) for c in claimed) == JOBS
    assert len(per_job) == JOBS and set(per_job.values()) == {1}
    assert used == {1} and missed == {0}
    assert due_left is None
    assert sum(1 for c in claimed if c) >= 1
    for engine in engines:
        engine.dispose()


def test_a_claim_counts_the_occurrences_it_coalesces_or_skips(db_url) -> None:
    engine = make_engine(db_url)
    init_schema(engine)
    sessions = make_sessionmaker(engine)
    start = utcnow().replace(microsecond=0) - timedelta(seconds=10)
    ids = {}
    with sessions.begin() as session:
        for name, resume in (("coalesced", False), ("skipped", True)):
            body = {"name": name, "command": "true", "schedule": f"R/{FAR}/PT1S",
                    "resume_at_next_scheduled_time": resume}
            job, _ = jobs.create_job(session, body, jobs.Rules(), utcnow())
            ids[name] = job.id
        session.execute(update(Job).values(  # down for 10.5 s: 11 occurrences have passed
            schedule=f"R/{start:%Y-%m-%dT%H:%M:%SZ}/PT1S", next_run_at=start))
    with sessions.begin() as session:
        claim_batch(session, start + timedelta(seconds=10.5), BATCH, "UTC")
    with sessions() as session:
        missed = {job.name: job.missed_occurrences for job in session.scalars(select(Job))}
        runs = session.scalars(select(Run.scheduled_for)).all()
    assert missed == {"coalesced": 10, "skipped": 11}
    assert runs == [start + timedelta(seconds=10)]  # one catch-up run, for the latest
    engine.dispose()


def test_a_claim_says_what_each_run_without_dependents_sends(db_url) -> None:
    """The publisher sends these without reading them back; a run with dependents is left
    to it (its chain is read from the database)."""
    engine = make_engine(db_url)
    init_schema(engine)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        made = {}
        for name, queue in (("alone", "q-a"), ("parent", None)):
            body = {"name": name, "command": "true", "schedule": f"R/{FAR}/PT1H"}
            if queue:
                body["queue"] = queue
            made[name], _ = jobs.create_job(session, body, jobs.Rules(), utcnow())
        jobs.create_job(session, {"name": "child", "command": "true",
                                  "parent_jobs": [made["parent"].id]}, jobs.Rules(), utcnow())
        session.execute(update(Job).where(Job.id.in_([j.id for j in made.values()]))
                        .values(next_run_at=utcnow() - timedelta(seconds=1)))
    with sessions.begin() as session:
        claimed = claim_due(session, utcnow(), BATCH, "UTC")
    with sessions() as session:
        root_of = dict(session.execute(select(Run.job_id, Run.id)
                                       .where(Run.root_run_id.is_(None))).all())
    alone, parent = root_of[made["alone"].id], root_of[made["parent"].id]
    assert sorted(claimed.run_ids) == sorted([alone, parent])
    assert claimed.alone == {alone: (alone, None, made["alone"].id, "alone", "q-a")}
    engine.dispose()
