"""The beat's claim and the publisher against a real Redis and both databases, in process: a
burst larger than one batch goes out as one Celery message per run (or one chain per tree),
each run claimed, counted and marked `sent` once; sent events follow KALA_SENT_EVENTS."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, event, func, select, update

from kala_celery.beat import KalaScheduler
from kala_celery.beat.scheduler import BATCH
from kala_celery.celery_app import make_celery
from kala_celery.config import Settings
from kala_celery.runs import dispatch
from kala_celery.store import jobs
from kala_celery.store.db import store_for
from kala_celery.store.tables import Job, Run, utcnow

FAR = (utcnow() + timedelta(days=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


OWN_DB = "/9"  # a Redis database of its own: no other test's worker consumes from it


@pytest.fixture
def broker(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + OWN_DB)
    client.flushdb()
    yield client
    client.flushdb()


def _settings(db_url: str, redis_url: str, tmp_path: Path, **kw: object) -> Settings:
    broker_url = redis_url.rsplit("/", 1)[0] + OWN_DB
    return Settings(database_url=db_url, broker_url=broker_url, data_dir=tmp_path, **kw)


def _messages(broker: redis.Redis, queue: str) -> list[dict]:
    return [json.loads(raw) for raw in broker.lrange(queue, 0, -1)]


def _body(message: dict) -> list:
    """(args, kwargs, embed) of a Celery protocol-2 message as kombu's Redis transport
    stores it (base64 body)."""
    return json.loads(base64.b64decode(message["body"]))


def _create(settings: Settings, bodies: list[dict]) -> list[str]:
    store = store_for(settings.db_url)
    ids = []
    with store.sessions.begin() as session:
        for body in bodies:
            job, _ = jobs.create_job(session, body, jobs.Rules(), utcnow())
            ids.append(job.id)
    return ids


def _make_due(settings: Settings, job_ids: list[str]) -> None:
    with store_for(settings.db_url).sessions.begin() as session:
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids))
            .values(next_run_at=utcnow() - timedelta(seconds=5))
        )


def test_a_burst_bigger_than_a_batch_is_published_once_each(
    db_url, redis_url, broker, tmp_path
) -> None:
    settings = _settings(db_url, redis_url, tmp_path)
    n = BATCH * 2 + 37
    plain = _create(
        settings,
        [{"name": f"job {i}", "command": "true", "schedule": f"R/{FAR}/PT1H"} for i in range(n)],
    )
    [queued, parent] = _create(
        settings,
        [
            {"name": "queued", "command": "true", "schedule": f"R/{FAR}/PT1H", "queue": "q-pub"},
            {"name": "parent", "command": "true", "schedule": f"R/{FAR}/PT1H"},
        ],
    )
    [child] = _create(settings, [{"name": "child", "command": "true", "parent_jobs": [parent]}])
    _make_due(settings, [*plain, queued, parent])

    scheduler = KalaScheduler(app=make_celery(settings), lazy=True)
    try:
        scheduler.tick()
    finally:
        scheduler.close()

    store = store_for(settings.db_url)
    with store.sessions() as session:
        runs = {r.id: r for r in session.scalars(select(Run))}
        used = dict(session.execute(select(Job.id, Job.runs_used)).all())
        next_runs = session.scalars(select(func.min(Job.next_run_at))).one()
    assert len(runs) == n + 3  # one run per due job, plus the child's run in the parent's tree
    assert {r.state for r in runs.values()} == {"sent"}
    assert {used[j] for j in [*plain, queued, parent]} == {1}
    assert used[child] == 0  # a dependent's run does not use up a schedule
    assert next_runs > utcnow()  # every claimed job moved on to its next occurrence

    default = _messages(broker, "celery")
    assert len(default) == n + 1  # the plain runs and the parent's chain (its head)
    by_id = {m["headers"]["id"]: m for m in default}
    assert len(by_id) == len(default)
    job_of = {r.id: r.job_id for r in runs.values()}
    for run_id, message in by_id.items():
        headers = message["headers"]
        assert headers["task"] == "kala.run"
        args, kwargs, _ = _body(message)
        assert args == [run_id] and kwargs == {"job_id": job_of[run_id]}
    names = {m["headers"]["shadow"] for m in default}
    assert {f"kala: job {i}" for i in range(n)} <= names and "kala: parent" in names
    [head] = [m for m in default if m["headers"]["shadow"] == "kala: parent"]
    _, _, embed = _body(head)
    [link] = embed["chain"]  # the child's run rides in the parent's chain
    [child_run] = [r for r in runs.values() if r.job_id == child]
    assert link["options"]["task_id"] == child_run.id

    [routed] = _messages(broker, "q-pub")
    assert routed["headers"]["shadow"] == "kala: queued"
    assert routed["properties"]["delivery_info"]["routing_key"] == "q-pub"


def test_a_second_tick_publishes_nothing_again(db_url, redis_url, broker, tmp_path) -> None:
    settings = _settings(db_url, redis_url, tmp_path)
    ids = _create(
        settings,
        [{"name": f"j{i}", "command": "true", "schedule": f"R/{FAR}/PT1H"} for i in range(20)],
    )
    _make_due(settings, ids)
    scheduler = KalaScheduler(app=make_celery(settings), lazy=True)
    try:
        scheduler.tick()
        scheduler.tick()
    finally:
        scheduler.close()
    assert broker.llen("celery") == 20


def test_the_wake_up_for_a_due_time_claims_at_once(db_url, redis_url, broker, tmp_path) -> None:
    """A tick that wakes at the due time the previous tick found goes straight to the claim
    (no query for the next due time first: one round trip less between due and start)."""
    settings = _settings(db_url, redis_url, tmp_path)
    [job_id] = _create(settings, [{"name": "soon", "command": "true",
                                   "schedule": f"R/{FAR}/PT1H"}])
    statements: list[str] = []

    def seen(_conn, _cursor, statement, *_args) -> None:
        statements.append(" ".join(statement.split()))

    scheduler = KalaScheduler(app=make_celery(settings), lazy=True)
    try:
        scheduler.tick()  # connects and sweeps; nothing is due
        with store_for(settings.db_url).sessions.begin() as session:
            session.execute(update(Job).where(Job.id == job_id)
                            .values(next_run_at=utcnow() + timedelta(seconds=0.5)))
        wait = scheduler.tick()  # finds the job due in 0.5 s and sleeps until then, as beat does
        assert wait <= 0.5
        time.sleep(wait)
        event.listen(Engine, "before_cursor_execute", seen)
        try:
            scheduler.tick()
        finally:
            event.remove(Engine, "before_cursor_execute", seen)
    finally:
        scheduler.close()
    assert broker.llen("celery") == 1
    selects = [s for s in statements if s.startswith("SELECT")]
    assert "FROM jobs" in selects[0] and "min(jobs.next_run_at)" not in selects[0], statements


def test_the_sweep_leaves_a_job_with_a_run_in_flight_to_that_run(
    db_url, redis_url, broker, tmp_path
) -> None:
    """A job without next_run_at whose run is in flight is not re-armed by the sweep (the run's
    finish decides whether it is done); once the run has ended, it is."""
    settings = _settings(db_url, redis_url, tmp_path)
    [job_id] = _create(settings, [{"name": "busy", "command": "true",
                                   "schedule": f"R/{FAR}/PT1H"}])
    store = store_for(settings.db_url)
    with store.sessions.begin() as session:
        [run_id] = dispatch.record_trees(session, [(job_id, utcnow())], trigger="manual",
                                         now=utcnow())
        session.execute(update(Run).where(Run.id == run_id).values(state="started"))
        session.execute(update(Job).where(Job.id == job_id).values(next_run_at=None))

    def next_run_after_a_sweep():
        scheduler = KalaScheduler(app=make_celery(settings), lazy=True)
        try:
            scheduler.tick()  # a beat's first tick sweeps
        finally:
            scheduler.close()
        with store.sessions() as session:
            return session.get(Job, job_id).next_run_at

    assert next_run_after_a_sweep() is None
    with store.sessions.begin() as session:
        session.execute(update(Run).where(Run.id == run_id).values(state="success"))
    assert next_run_after_a_sweep() is not None


@pytest.mark.parametrize("enabled", [False, True])
def test_sent_events_follow_the_setting(db_url, redis_url, broker, tmp_path, enabled) -> None:
    settings = _settings(db_url, redis_url, tmp_path, sent_events=enabled)
    app = make_celery(settings)
    assert app.conf.task_send_sent_event is enabled
    [job_id] = _create(settings, [{"name": "evt", "command": "true", "schedule": f"R/{FAR}/PT1H"}])
    _make_due(settings, [job_id])
    events = broker.pubsub()
    events.psubscribe("*celeryev*")
    events.get_message(timeout=5)  # the subscription's confirmation
    scheduler = KalaScheduler(app=app, lazy=True)
    try:
        scheduler.tick()
    finally:
        scheduler.close()
    assert broker.llen("celery") == 1
    seen = []
    while (message := events.get_message(timeout=1.0)) is not None:
        if message["type"] == "pmessage":
            seen.append(_body(json.loads(message["data"])))
    events.close()
    sent = [e for e in seen if e.get("type") == "task-sent"]
    if enabled:
        assert [e["name"] for e in sent] == ["kala: evt"]
    else:
        assert sent == []


def test_sent_events_setting_from_the_environment() -> None:
    assert Settings.from_env({}).sent_events is False
    assert Settings.from_env({"KALA_SENT_EVENTS": "true"}).sent_events is True
    assert Settings(sent_events=True).to_env()["KALA_SENT_EVENTS"] == "true"


@pytest.mark.parametrize("enabled", [False, True])
def test_task_events_follow_the_setting(enabled) -> None:
    """Off by default, as in Celery (Flower turns them on while it runs: tests/test_flower.py)."""
    env = {"KALA_TASK_EVENTS": "true"} if enabled else {}
    settings = Settings.from_env(env)
    assert settings.task_events is enabled
    assert Settings.from_env(settings.to_env()).task_events is enabled
    app = make_celery(settings)
    try:
        assert app.conf.worker_send_task_events is enabled
    finally:
        app.close()
