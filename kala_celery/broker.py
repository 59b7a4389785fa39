"""The embedded broker: kombu's SQL transport on a SQLite file, publishing and taking messages
a batch at a time.

kombu's own SQL transport takes one message per write transaction (`BEGIN IMMEDIATE`, an ORM
query, an UPDATE that hides it, a commit), also when the queue is empty, and publishes one
message per transaction. On the embedded default that made every poll of an idle worker a
write, and a burst of runs a queue of transactions behind one lock. This channel keeps
kombu's tables and semantics and changes how they are used:

- a take reads first, outside any transaction: an empty queue costs one indexed SELECT;
- a take moves up to the worker's free prefetch in one transaction (select, delete, commit);
- a taken message is deleted, not hidden: kombu never reads a hidden one again (a run whose
  message is lost is the sweep's to redeliver, docs/design.md "Dispatch protocol"), and the
  hidden rows made the file grow without bound;
- `Producer.batch()` (kombu's publish batches, which publish.py uses) is one transaction;
- a publish wakes a waiting worker on this machine at once (a FIFO beside the file, see
  `Wakeup`): `polling_interval` is only the backstop, so an idle worker polls a few times a
  second and a run still starts within milliseconds of its publish;
- so does an ack that frees room in a worker whose last take filled its prefetch: a burst
  of 200 runs is taken as fast as runs end, not one prefetch (32 runs) per polling
  interval (which made 200 runs due at once start over 1.4 s).

Rows kombu's transport left (hidden ones) are skipped, and kombu's transport reads rows
written here, so either transport can work on the same file. `polling_interval` is an
ordinary transport option here (kombu's SQL channel hands every option to create_engine).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import sqlite3
from collections.abc import Iterable, Sequence
from json import dumps, loads
from queue import Empty
from time import monotonic
from typing import Any

from kombu.transport import sqlalchemy as kombu_sql
from sqlalchemy import create_engine
from sqlalchemy.engine import make_url

from kala_celery.store.db import sqlite_connection

TRANSPORT = "kala_celery.broker:Transport"
TAKE_AT_MOST = 100  # messages one take moves when the worker's prefetch has no limit
_NOT_ENGINE_OPTIONS = ("polling_interval", "queue_tablename", "message_tablename", "callback",
                       "errback", "max_retries", "interval_start", "interval_step",
                       "interval_max", "retry_errors")


class Wakeup:
    """A named pipe beside the broker file: every publish writes a byte to it, and a worker
    waiting between polls reads it and polls at once. The SQLite file cannot be shared
    between machines, so every publisher and worker of the embedded broker are on one.

    The worker opens the pipe read-write (so it never reads end-of-file when publishers come
    and go); a publisher opens it write-only and non-blocking, and gives up silently when no
    worker has it open (ENXIO), the pipe is full (a wake-up is already waiting: EAGAIN) or
    the system has no named pipes."""

    def __init__(self, broker_file: str) -> None:
        self.path = f"{broker_file}.wake"
        self._fd: int | None = None

    def listen(self) -> int | None:
        """Open the pipe for reading (once): from then on a wake-up is kept until read."""
        if self._fd is None:
            try:
                with contextlib.suppress(FileExistsError):
                    os.mkfifo(self.path, 0o600)
                self._fd = os.open(self.path, os.O_RDWR | os.O_NONBLOCK)
            except (OSError, AttributeError):  # no named pipes here: plain polling
                return None
        return self._fd

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, less when a publish wakes us."""
        fd = self.listen()
        if fd is None:
            select.select([], [], [], seconds)
            return
        if select.select([fd], [], [], seconds)[0]:
            with contextlib.suppress(BlockingIOError):
                while os.read(fd, 4096):
                    pass

    def wake(self) -> None:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        except (OSError, AttributeError):  # no worker waiting, or no pipe
            return
        try:
            os.write(fd, b"\0")
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EPIPE):
                raise
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class PublishBatch:
    """kombu's publish-batch protocol (Producer.batch): buffer the inserts, one transaction
    per flush."""

    def __init__(self, channel: Channel, max_size: int) -> None:
        self.channel = channel
        self.max_size = max_size
        self.rows: list[tuple[str, int]] = []

    def publish(self, message: dict[str, Any], **kwargs: Any) -> None:
        self.channel.basic_publish(message, _publish_batch=self, **kwargs)
        if len(self.rows) >= self.max_size:
            self.flush()

    def add(self, queue_id: int, payload: str) -> None:
        self.rows.append((payload, queue_id))

    def flush(self) -> None:
        rows, self.rows = self.rows, []
        if rows:
            self.channel.insert(rows)

    def discard(self) -> None:
        self.rows = []

    def close(self) -> None:
        self.rows = []


class Channel(kombu_sql.Channel):
    _raw: sqlite3.Connection | None = None

    def __init__(self, connection: Any, **kwargs: Any) -> None:
        super().__init__(connection, **kwargs)
        self._queue_ids: dict[str, int] = {}
        self._more_waiting = False  # the last take was as big as the room: more may wait

    # ------------------------------------------------------------ connections

    def _engine_from_config(self) -> Any:
        options = dict(self.connection.client.transport_options)
        for name in _NOT_ENGINE_OPTIONS:
            options.pop(name, None)
        options.setdefault("creator", lambda: sqlite_connection(self._path))
        return create_engine(self.connection.client.hostname, **options)

    @property
    def _path(self) -> str:
        return make_url(self.connection.client.hostname).database or ""

    @property
    def raw(self) -> sqlite3.Connection:
        """This channel's own connection, in autocommit mode: transactions are explicit."""
        if self._raw is None:
            self._open()  # kombu creates the tables
            self._raw = sqlite_connection(self._path)
            self._raw.isolation_level = None
        return self._raw

    def close(self) -> None:
        super().close()
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def _queue_id(self, queue: str) -> int:
        queue_id = self._queue_ids.get(queue)
        if queue_id is None:
            row = self.raw.execute(
                f"SELECT id FROM {self.queue_tablename} WHERE name = ?", (queue,)
            ).fetchone()
            if row is None:
                kombu_sql.Channel._get_or_create(self, queue)
                self.session.commit()  # the ORM session must not hold a read transaction
                return self._queue_id(queue)
            queue_id = self._queue_ids[queue] = row[0]
        return queue_id

    def _new_queue(self, queue: str, **kwargs: Any) -> None:
        self._queue_id(queue)

    # ------------------------------------------------------------ publish

    def create_publish_batch(self, max_size: int) -> PublishBatch:
        return PublishBatch(self, max_size)

    def _put(self, queue: str, payload: dict[str, Any], **kwargs: Any) -> None:
        batch: PublishBatch | None = kwargs.get("_publish_batch")
        if batch is not None:
            batch.add(self._queue_id(queue), dumps(payload))
        else:
            self.insert([(dumps(payload), self._queue_id(queue))])

    def insert(self, rows: Sequence[tuple[str, int]]) -> None:
        """(payload, queue id) rows, in one transaction."""
        raw = self.raw
        raw.execute("BEGIN IMMEDIATE")
        try:
            raw.executemany(
                f"INSERT INTO {self.message_tablename} (visible, payload, version, queue_id) "
                "VALUES (1, ?, 1, ?)",
                rows,
            )
        except BaseException:
            raw.execute("ROLLBACK")
            raise
        raw.execute("COMMIT")
        self.connection.wakeup.wake()

    # ------------------------------------------------------------ take

    def _take(self, queues: Iterable[str], limit: int) -> list[tuple[str, dict[str, Any]]]:
        """Up to `limit` messages of `queues`, oldest first, removed from the file."""
        names = {self._queue_id(queue): queue for queue in queues}
        if not names:
            return []
        marks = ",".join("?" * len(names))
        where = f"FROM {self.message_tablename} WHERE visible = 1 AND queue_id IN ({marks})"
        raw = self.raw
        if raw.execute(f"SELECT 1 {where} LIMIT 1", tuple(names)).fetchone() is None:
            return []  # the cheap answer of an idle poll: no transaction, no lock
        raw.execute("BEGIN IMMEDIATE")
        try:
            rows = raw.execute(
                f"SELECT id, queue_id, payload {where} ORDER BY id LIMIT ?", (*names, limit)
            ).fetchall()
            raw.executemany(
                f"DELETE FROM {self.message_tablename} WHERE id = ?", [(row[0],) for row in rows]
            )
        except BaseException:
            raw.execute("ROLLBACK")
            raise
        raw.execute("COMMIT")
        return [(names[queue_id], loads(payload)) for _id, queue_id, payload in rows]

    def _get(self, queue: str) -> dict[str, Any]:
        taken = self._take([queue], 1)
        if not taken:
            raise Empty()
        return taken[0][1]

    def _get_many(self, queues: Iterable[str], timeout: float | None = None) -> None:
        """kombu's hook for channels that deliver more than one message per poll."""
        room = self.qos.can_consume_max_estimate()
        limit = TAKE_AT_MOST if room is None else max(room, 1)
        taken = self._take(queues, limit)
        self._more_waiting = len(taken) >= limit
        if not taken:
            raise Empty()
        for queue, payload in taken:
            self.connection._deliver(payload, queue)

    def basic_ack(self, delivery_tag: Any, multiple: bool = False) -> None:
        """kombu's ack; then, when the last take filled the room the prefetch left, wake this
        worker's drain loop: it has room again, and messages may be waiting."""
        super().basic_ack(delivery_tag, multiple)
        if self._more_waiting:
            self.connection.wakeup.wake()

    def _size(self, queue: str) -> int:
        row = self.raw.execute(
            f"SELECT count(*) FROM {self.message_tablename} WHERE visible = 1 AND queue_id = ?",
            (self._queue_id(queue),),
        ).fetchone()
        return int(row[0])


class Transport(kombu_sql.Transport):
    Channel = Channel
    connection_errors = (*kombu_sql.Transport.connection_errors, sqlite3.OperationalError)

    def __init__(self, client: Any, **kwargs: Any) -> None:
        super().__init__(client, **kwargs)
        self.wakeup = Wakeup(make_url(client.hostname).database or "")

    def drain_events(self, connection: Any, timeout: float | None = None) -> None:
        """kombu's virtual drain loop, with the pause between empty polls cut short by a
        publish or an ack (Wakeup). The pipe is open before the first take, so an ack of what it
        took finds it."""
        self.wakeup.listen()
        started = monotonic()
        while True:
            try:
                self.cycle.get(self._deliver, timeout=timeout)
                return
            except Empty:
                left = None if timeout is None else timeout - (monotonic() - started)
                if left is not None and left <= 0:
                    raise TimeoutError() from None
                pause = self.polling_interval or 0
                self.wakeup.wait(pause if left is None else min(pause, left))

    def close_connection(self, connection: Any) -> None:
        super().close_connection(connection)
        self.wakeup.close()
