"""The sweep's SQL (kala_celery/runs/sweep.py, heartbeats.py) on SQLite and PostgreSQL, in
process: which runs have lost their message, which started runs no live worker is executing, and
what taking a run from a dead worker does. The clock is passed in, so every bound is tested
exactly."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import select, update

from kala_celery.celery_app import make_celery
from kala_celery.config import Settings
from kala_celery.runs import attempts, dispatch, heartbeats, sweep
from kala_celery.runs.publish import CeleryPublisher
from kala_celery.store import jobs
from kala_celery.store.db import Store, store_for
from kala_celery.store.tables import Job, Run, Worker, utcnow
from tests.test_publish import OWN_DB, _body, _messages, broker  # noqa: F401 - fixture

FOREVER = "R/2099-01-01T00:00:00Z/PT1H"
GRACE = timedelta(seconds=10)
AFTER = timedelta(seconds=30)
SILENCE = timedelta(seconds=30)


@pytest.fixture
def store(db_url: str) -> Store:
    return store_for(db_url)


@pytest.fixture
def settings(db_url: str, tmp_path) -> Settings:
    return Settings(database_url=db_url, data_dir=tmp_path)


def job(store: Store, **data: object) -> str:
    data = {"name": "j", "command": "true", "schedule": FOREVER, **data}
    with store.sessions.begin() as session:
        created, _ = jobs.create_job(session, data, jobs.Rules(), utcnow())
        return created.id


def tree(store: Store, job_id: str, when=None) -> list[str]:
    """Record a run of `job_id` and its dependents; their ids in chain order."""
    now = when or utcnow()
    with store.sessions.begin() as session:
        [root] = dispatch.record_trees(session, [(job_id, now)], trigger="manual", now=now)
        dependents = session.scalars(
            select(Run.id).where(Run.root_run_id == root).order_by(Run.seq)
        ).all()
    return [root, *dependents]


def set_run(store: Store, run_id: str, **values: object) -> None:
    with store.sessions.begin() as session:
        session.execute(update(Run).where(Run.id == run_id).values(**values))


def state(store: Store, run_id: str) -> str:
    with store.sessions() as session:
        return session.get(Run, run_id).state


def redeliverable(store: Store, now) -> list[str]:
    """What the beat's sweep publishes, when every queue is idle."""
    pending, lost = sweep.missing(
        store.engine, now, pending_grace=GRACE, redeliver_after=AFTER, limit=100
    )
    return pending + sweep.reopen(store.engine, now, [run_id for run_id, _ in lost])


def test_runs_without_a_message_are_found_after_their_bound_and_once(store) -> None:
    now = utcnow()
    job_id = job(store)
    tree(store, job_id)  # pending, but its publisher may still be at it
    [old_pending] = tree(store, job_id, when=now - GRACE - timedelta(seconds=1))
    [fresh_sent] = tree(store, job_id)
    set_run(store, fresh_sent, state="sent", sent_at=now - AFTER + timedelta(seconds=1))
    [lost] = tree(store, job_id)
    set_run(store, lost, state="sent", sent_at=now - AFTER - timedelta(seconds=1))
    [retry_later] = tree(store, job_id)  # a retry's message falls due in the future
    set_run(store, retry_later, state="sent", sent_at=now + timedelta(hours=1))
    [started] = tree(store, job_id, when=now - timedelta(hours=1))
    set_run(store, started, state="started", sent_at=now - timedelta(hours=1))

    assert sorted(redeliverable(store, now)) == sorted([old_pending, lost])
    assert state(store, lost) == "pending"  # reopened, to be published with its chain
    assert redeliverable(store, now) == [old_pending]  # a second sweep: not reopened twice
    assert state(store, fresh_sent) == state(store, retry_later) == "sent"


def test_a_dependent_is_redelivered_only_after_its_predecessor_ended(store) -> None:
    now = utcnow()
    parent = job(store, name="parent")
    child = job(store, name="child", parent_jobs=[parent], schedule="")
    job(store, name="grandchild", parent_jobs=[child], schedule="")
    root, first, second = tree(store, parent, when=now - timedelta(hours=1))
    long_ago = now - timedelta(hours=1)
    for run_id in (root, first, second):
        set_run(store, run_id, state="sent", sent_at=long_ago)
    set_run(store, root, state="started")  # the chain is on its way: nothing to do
    assert redeliverable(store, now) == []
    set_run(store, root, state="success", finished_at=now - timedelta(seconds=5))
    assert redeliverable(store, now) == []  # its end was recent: the next link is on its way
    set_run(store, root, finished_at=long_ago)
    assert redeliverable(store, now) == [first]  # first in line; the grandchild follows it
    assert state(store, second) == "sent"


def test_a_redelivered_dependent_goes_out_with_the_rest_of_its_chain(
    store, db_url, redis_url, broker, tmp_path  # noqa: F811
) -> None:
    settings = Settings(database_url=db_url, data_dir=tmp_path,
                        broker_url=redis_url.rsplit("/", 1)[0] + OWN_DB)
    parent = job(store, name="parent")
    child = job(store, name="child", parent_jobs=[parent], schedule="")
    job(store, name="grandchild", parent_jobs=[child], schedule="")
    long_ago = utcnow() - timedelta(hours=1)
    root, first, second = tree(store, parent, when=long_ago)
    set_run(store, root, state="success", finished_at=long_ago)
    for run_id in (first, second):
        set_run(store, run_id, state="sent", sent_at=long_ago)
    heads = redeliverable(store, utcnow())
    publisher = CeleryPublisher(make_celery(settings), store.sessions)
    assert sorted(publisher.publish_ids(heads)) == sorted([first, second])
    [message] = _messages(broker, "celery")
    assert message["headers"]["id"] == first
    [link] = _body(message)[2]["chain"]
    assert link["options"]["task_id"] == second
    with store.sessions() as session:
        sent = session.scalars(select(Run.sent_at).where(Run.id.in_([first, second]))).all()
    assert all(when > long_ago for when in sent)
    assert {state(store, first), state(store, second)} == {"sent"}


def beat(store: Store, name: str, when, running: list[str]) -> None:
    with store.engine.begin() as conn:
        heartbeats.record_heartbeat(conn, name, when, running)


def test_a_started_run_is_orphaned_only_when_no_live_worker_runs_it(store) -> None:
    now = utcnow()
    job_id = job(store)
    began = now - timedelta(minutes=10)

    def started(worker: str) -> str:
        [run_id] = tree(store, job_id, when=began)
        set_run(store, run_id, state="started", worker=worker, attempts=1, attempt_at=began,
                started_at=began)
        return run_id

    long_run = started("alive@a/1")
    forgotten = started("alive@a/1")
    dead = started("dead@b/2")
    never_beat = started("old@c/3")
    beat(store, "alive@a/1", now - timedelta(seconds=2), [long_run])
    beat(store, "dead@b/2", now - SILENCE - timedelta(seconds=1), [dead])
    found = dict(heartbeats.orphaned(store.engine, now, SILENCE))
    assert set(found) == {forgotten, dead, never_beat}  # the long run on a live worker stays
    assert "alive but no longer running it" in found[forgotten]
    assert "worker lost" in found[dead] and "worker lost" in found[never_beat]

    # a run claimed after the worker's latest heartbeat is not judged by that heartbeat
    just_claimed = started("alive@a/1")
    set_run(store, just_claimed, attempt_at=now - timedelta(seconds=2, milliseconds=500))
    assert just_claimed not in dict(heartbeats.orphaned(store.engine, now, SILENCE))


def test_heartbeats_upsert_one_row_per_worker_process(store) -> None:
    now = utcnow()
    beat(store, "w@h/9", now - timedelta(seconds=10), ["a"])
    beat(store, "w@h/9", now, ["a", "b"])
    with store.sessions() as session:
        [row] = session.scalars(select(Worker)).all()
    assert (row.running, row.last_seen) == ("a b", now)
    assert row.started_at == now - timedelta(seconds=10)
    heartbeats.prune_workers(store.engine, now + timedelta(seconds=1))
    with store.sessions() as session:
        assert session.scalars(select(Worker)).all() == []


def test_a_dead_workers_run_is_retried_within_epsilon_else_lost(store, settings) -> None:
    handler = job(store, name="handler")
    now = utcnow()
    for epsilon, expected in (("PT1H", "pending"), ("PT1S", "lost")):
        job_id = job(store, retries=1, epsilon=epsilon, on_failure_job=handler)
        with store.sessions.begin() as session:
            [run_id] = dispatch.record_trees(
                session, [(job_id, now - timedelta(minutes=1))], trigger="schedule", now=now
            )
        set_run(store, run_id, state="started", worker="dead@x/1", attempts=1, attempt_at=now)
        follow = attempts.abandon(store.sessions, run_id, settings, now, "worker lost")
        assert state(store, run_id) == expected
        with store.sessions() as session:
            counted = session.get(Job, job_id).error_count
        assert counted == 1  # the dead worker's attempt failed either way
        if expected == "lost":
            [on_failure] = follow
            with store.sessions() as session:
                assert session.get(Run, on_failure).job_id == handler
        else:
            assert follow == [run_id]


def test_only_queues_with_no_message_waiting_are_idle(
    store, db_url, redis_url, broker, tmp_path  # noqa: F811
) -> None:
    """The sweep sends a lost run again only once its queue has drained: a message for it
    may still be waiting there (a backlog), and one sent now would only queue behind it."""
    settings = Settings(database_url=db_url, data_dir=tmp_path,
                        broker_url=redis_url.rsplit("/", 1)[0] + OWN_DB)
    publisher = CeleryPublisher(make_celery(settings), store.sessions)
    [run_id] = tree(store, job(store))
    assert publisher.publish_ids([run_id]) == [run_id]
    assert publisher.idle_queues({None, "elsewhere"}) == {"elsewhere"}
    broker.flushdb()  # the broker restarted empty
    assert publisher.idle_queues({None, "elsewhere"}) == {None, "elsewhere"}
    down = Settings(database_url=db_url, data_dir=tmp_path, broker_url="redis://127.0.0.1:1/0")
    assert CeleryPublisher(make_celery(down), store.sessions).idle_queues({None}) is None
