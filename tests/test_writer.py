"""The worker process's writer of run ends (tasks/writer.py, docs/design.md Decision 29): ends
handed while it writes are written together, a lone end at once, a bad end alone, and a run
stays in the heartbeat until its end is written. On both stores."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime

import pytest

from kala_celery.config import Settings
from kala_celery.runs.attempts import Ending, claim
from kala_celery.runs.heartbeats import worker_id
from kala_celery.store.db import Store, store_for
from kala_celery.store.tables import utcnow
from kala_celery.tasks import heartbeat
from kala_celery.tasks import writer as writer_module
from kala_celery.tasks.writer import Handed, Writer
from tests.processes import wait_for
from tests.test_runner_sql import FOREVER, OK, create, job_row, record, run_row

ME = worker_id("host")


@pytest.fixture
def store(db_url: str) -> Store:
    return store_for(db_url)


@pytest.fixture
def settings(db_url: str, tmp_path) -> Settings:
    return Settings(database_url=db_url, data_dir=tmp_path)


def ending(store: Store, settings: Settings, job_id: str, **change: object) -> Ending:
    """A run of `job_id` claimed by this worker, and its end as a success."""
    run_id = record(store, job_id)
    run, job, _parent = claim(store.engine, run_id, ME, "host", utcnow())
    return Ending(replace(run, **change), job, ME, "success", OK, settings, utcnow())


class Gate:
    """Holds every write the writer begins until opened, and says when one is waiting: the
    writer held up, as on a busy database. A write is an end written alone or ends written
    together (tasks/writer.py's `end` and `end_together`)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.waiting = threading.Event()
        self._open = threading.Event()
        for name in ("end", "end_together"):
            write = getattr(writer_module, name)
            monkeypatch.setattr(writer_module, name, self._held(write))

    def _held(self, write):
        def held(*args):
            if not self._open.is_set():
                self.waiting.set()
                assert self._open.wait(30)
            return write(*args)

        return held

    def open(self) -> None:
        self._open.set()


class Batches:
    """The sizes of the groups the writer wrote together (a lone end is written alone)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.sizes: list[int] = []
        together = writer_module.end_together

        def spy(engine, endings):
            self.sizes.append(len(endings))
            return together(engine, endings)

        monkeypatch.setattr(writer_module, "end_together", spy)


def hand_all(writer: Writer, endings: list[Ending]) -> None:
    """Hand each end, keeping its run in the heartbeat until it is written."""
    for e in endings:
        writer.hand(Handed(e, heartbeat.keep(e.run.id)))


def test_ends_handed_while_the_writer_writes_are_written_together(store, settings,
                                                                 monkeypatch) -> None:
    job_id = create(store, schedule=FOREVER)
    endings = [ending(store, settings, job_id) for _ in range(10)]
    writer = Writer(store.engine, publish=lambda ids: None)
    batches = Batches(monkeypatch)
    # a lone end is written at once, alone
    hand_all(writer, endings[:1])
    wait_for(lambda: run_row(store, endings[0].run.id).state == "success", 10, "a lone end")
    assert batches.sizes == []
    # the writer is held up with the next end; eight more arrive meanwhile and go in the
    # transaction after it, together
    gate = Gate(monkeypatch)
    try:
        hand_all(writer, endings[1:2])
        assert gate.waiting.wait(10)
        hand_all(writer, endings[2:])
        for e in endings[1:]:  # kept in the heartbeat until written
            assert e.run.id in heartbeat._running
    finally:
        gate.open()
    wait_for(lambda: all(run_row(store, e.run.id).state == "success" for e in endings), 10,
             "every end")
    # the one held up went alone, the eight after it together; on PostgreSQL each end stays
    # its own statement (two transactions ending runs of several jobs could deadlock)
    assert batches.sizes == ([8] if store.engine.dialect.name == "sqlite" else [])
    assert job_row(store, job_id).success_count == 10
    writer.flush()
    assert not any(e.run.id in heartbeat._running for e in endings)


def test_a_bad_end_fails_alone(store, settings, monkeypatch) -> None:
    job_id = create(store, schedule=FOREVER)
    good = [ending(store, settings, job_id) for _ in range(2)]
    # a duration no column can hold (started in year 1): the statement fails on both stores
    bad = ending(store, settings, job_id, started_at=datetime(1, 1, 1, tzinfo=UTC))
    writer = Writer(store.engine, publish=lambda ids: None)
    gate = Gate(monkeypatch)
    try:
        hand_all(writer, [good[0]])
        assert gate.waiting.wait(10)
        hand_all(writer, [bad, good[1]])  # written together after the first, and failing
    finally:
        gate.open()
    assert writer.flush(30)
    assert [run_row(store, e.run.id).state for e in (*good, bad)] == [
        "success", "success", "started"]
    assert bad.run.id not in heartbeat._running  # released: the sweep takes it back
