"""The embedded broker's channel (kala_celery/broker.py) on a real SQLite file, through kombu's
own Producer and Consumer: batches, deletion on take, interplay with kombu's SQL transport,
idle polls that write nothing, and the wake-up of a waiting worker by a publish and by an
ack that frees room."""

from __future__ import annotations

import os
import queue
import sqlite3
import threading
from pathlib import Path

import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

from kala_celery import broker
from tests.processes import wait_for

QUEUE = Queue("runs", Exchange("runs", type="direct"), routing_key="runs")


def ours(path: Path, poll: float = 0.05) -> Connection:
    return Connection(f"sqlite:///{path}", transport=broker.TRANSPORT,
                      transport_options={"polling_interval": poll})


def take(connection: Connection, count: int, timeout: float = 10.0) -> list[dict]:
    got: list[dict] = []
    with Consumer(connection, [QUEUE], accept=["json"],
                  callbacks=[lambda body, message: (got.append(body), message.ack())]):
        while len(got) < count:
            connection.drain_events(timeout=timeout)
    return got


def rows(path: Path, visible_only: bool = False) -> int:
    where = " WHERE visible = 1" if visible_only else ""
    with sqlite3.connect(path) as conn:
        return conn.execute(f"SELECT count(*) FROM kombu_message{where}").fetchone()[0]


def test_a_batch_is_published_in_order_and_taken_messages_are_deleted(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    with ours(path) as connection:
        producer = Producer(connection, serializer="json")
        with producer.batch(max_size=7):  # flushed every 7, and at the end
            for i in range(20):
                producer.publish({"n": i}, exchange=QUEUE.exchange, routing_key="runs",
                                 declare=[QUEUE])
        assert rows(path) == 20
        assert [body["n"] for body in take(connection, 20)] == list(range(20))
    assert rows(path) == 0  # deleted, not hidden: the file does not grow


def test_a_failed_batch_publishes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    with ours(path) as connection:
        producer = Producer(connection, serializer="json")
        with pytest.raises(RuntimeError), producer.batch(max_size=100):
            producer.publish({"n": 1}, exchange=QUEUE.exchange, routing_key="runs",
                             declare=[QUEUE])
            raise RuntimeError("the caller failed mid-batch")
    assert rows(path) == 0


def test_a_take_moves_no_more_than_the_consumer_may_hold(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    with ours(path) as connection:
        producer = Producer(connection, serializer="json")
        for i in range(10):
            producer.publish({"n": i}, exchange=QUEUE.exchange, routing_key="runs",
                             declare=[QUEUE])
        held = []
        consumer = Consumer(connection, [QUEUE], accept=["json"],
                            callbacks=[lambda body, message: held.append(message)])
        consumer.qos(prefetch_count=3)
        with consumer:
            connection.drain_events(timeout=5)
            assert len(held) == 3  # one take, bounded by the free prefetch
            assert rows(path) == 7
            for message in held:
                message.ack()


def test_kombus_own_sql_transport_and_ours_share_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    with Connection(f"sqla+sqlite:///{path}") as kombus:
        Producer(kombus, serializer="json").publish(
            {"from": "kombu"}, exchange=QUEUE.exchange, routing_key="runs", declare=[QUEUE])
    with ours(path) as connection:
        assert take(connection, 1) == [{"from": "kombu"}]
        Producer(connection, serializer="json").publish(
            {"from": "ours"}, exchange=QUEUE.exchange, routing_key="runs", declare=[QUEUE])
    with Connection(f"sqla+sqlite:///{path}") as kombus:
        message = kombus.SimpleQueue("runs").get(timeout=5)
        assert message.payload == {"from": "ours"}
        message.ack()  # else kombu puts it back when the connection closes
    # kombu hides what it takes; ours skips hidden rows
    assert rows(path, visible_only=True) == 0
    with ours(path) as connection, pytest.raises(TimeoutError):
        take(connection, 1, timeout=0.3)


def test_idle_polls_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "broker.db"
    with ours(path, poll=0.01) as connection:
        Producer(connection).declare()
        QUEUE(connection.default_channel).declare()
        with sqlite3.connect(path) as watcher:
            before = watcher.execute("PRAGMA data_version").fetchone()[0]
            with pytest.raises(TimeoutError):
                take(connection, 1, timeout=0.5)  # about 50 empty polls
            assert watcher.execute("PRAGMA data_version").fetchone()[0] == before


def test_a_publish_wakes_a_worker_waiting_between_polls(tmp_path: Path) -> None:
    """The consumer polls once a minute and drains with no timeout: only the wake-up can
    bring the message before the 20 s deadline."""
    path = tmp_path / "broker.db"
    with ours(path, poll=60) as worker, ours(path) as publisher:
        QUEUE(worker.default_channel).declare()
        got: list[dict] = []
        consumer = Consumer(worker, [QUEUE], accept=["json"],
                            callbacks=[lambda body, message: (got.append(body), message.ack())])
        consumer.consume()
        draining = threading.Thread(target=worker.drain_events, daemon=True)
        draining.start()
        wait_for(lambda: worker.transport.wakeup._fd is not None, 10, "the worker to wait")
        Producer(publisher, serializer="json").publish(
            {"n": 1}, exchange=QUEUE.exchange, routing_key="runs", declare=[QUEUE])
        draining.join(20)
        assert not draining.is_alive() and got == [{"n": 1}]
        consumer.cancel()


def test_an_ack_that_frees_room_wakes_a_worker_whose_take_filled_it(tmp_path: Path) -> None:
    """Prefetch 2, a poll once a minute, 6 messages waiting, acked by another thread (as a
    pool thread acks a late-acked task): the first take fills the room, and each ack wakes the
    drain loop, so all 6 arrive before the 20 s deadline. Without the wake-up the second take
    waits for the next poll, a minute later."""
    path = tmp_path / "broker.db"
    with ours(path, poll=60) as worker:
        producer = Producer(worker, serializer="json")
        for i in range(6):
            producer.publish({"n": i}, exchange=QUEUE.exchange, routing_key="runs",
                             declare=[QUEUE])
        got: list[dict] = []
        to_ack: queue.Queue = queue.Queue()
        consumer = Consumer(worker, [QUEUE], accept=["json"],
                            callbacks=[lambda body, message: (got.append(body),
                                                              to_ack.put(message))])
        consumer.qos(prefetch_count=2)

        def ack_each() -> None:
            while (message := to_ack.get()) is not None:
                message.ack()

        def drain_all() -> None:
            while len(got) < 6:
                worker.drain_events()  # no timeout: between empty polls it waits a minute

        acking = threading.Thread(target=ack_each, daemon=True)
        draining = threading.Thread(target=drain_all, daemon=True)
        acking.start()
        try:
            with consumer:
                draining.start()
                draining.join(20)
                assert not draining.is_alive(), f"{len(got)} of 6 taken in 20 s"
        finally:
            to_ack.put(None)
            acking.join(10)
    assert [body["n"] for body in got] == list(range(6))
    assert rows(path) == 0


def test_a_wake_up_with_no_worker_or_no_pipe_is_silent(tmp_path: Path) -> None:
    broker.Wakeup(str(tmp_path / "broker.db")).wake()  # no pipe at all
    waiting = broker.Wakeup(str(tmp_path / "broker.db"))
    waiting.wait(0)
    waiting.close()
    broker.Wakeup(str(tmp_path / "broker.db")).wake()  # a pipe nobody has open
    waiting = broker.Wakeup(str(tmp_path / "broker.db"))
    waiting.wait(0)
    for _ in range(70_000):  # past a pipe's 64 KiB buffer: a full pipe is a wake-up too
        broker.Wakeup(str(tmp_path / "broker.db")).wake()
    waiting.wait(0)  # drains every byte at once
    fd = waiting.listen()
    assert fd is not None
    with pytest.raises(BlockingIOError):
        os.read(fd, 1)
    waiting.close()
    missing_dir = broker.Wakeup(str(tmp_path / "no" / "such" / "broker.db"))
    missing_dir.wait(0)  # falls back to a plain pause
    missing_dir.wake()
