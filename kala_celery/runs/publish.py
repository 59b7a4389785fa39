"""Publish recorded runs to the broker (task id = run id) and mark them `sent`.

A run with dependents goes out as one Celery chain of immutable signatures (the tree in
depth-first order); each link decides from its parent run's recorded state whether to run.
A run that could not be published stays `pending`; the beat's sweep publishes it later, and
workers ignore a run that is already past `sent`, so publishing twice is harmless.

A burst is thousands of messages: they go out on one producer inside kombu's
`Producer.batch()` (on Redis, one pipeline round trip per `BATCH` messages instead of one per
message), and a run without dependents is built with Celery's own `create_task_message` and
sent with `send_task_message` (the two halves of `send_task`, minus its per-call routing
and argument repr work). Celery's publish retry is off: a refused publish leaves the run
pending for the beat's own retry and sweep, instead of blocking the beat.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from celery import Celery, chain
from celery.canvas import Signature
from kombu import Producer
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from kala_celery.celery_app import RUN_TASK
from kala_celery.store import bulk
from kala_celery.store.clock import now as db_now
from kala_celery.store.db import engine_of, read_sessions
from kala_celery.store.tables import Job, Run

log = logging.getLogger(__name__)

BATCH = 500  # messages per pipeline round trip
UNRUN = ("pending", "sent")  # a chain link not run yet (sent: its message may be lost)


class CeleryPublisher:
    def __init__(self, celery: Celery, sessions: sessionmaker[Session]) -> None:
        self.celery = celery
        self.sessions = sessions
        self._reads = read_sessions(engine_of(sessions))  # the read before a publish
        self._routes: dict[str | None, dict[str, Any]] = {}
        self.broker_error: Exception | None = None  # the last publish failed with this

    def __call__(self, runs: Sequence[Run]) -> list[str]:
        return self.publish_ids(run.id for run in runs)

    def _route(self, queue: str | None) -> dict[str, Any]:
        """Where `send_task` would send a run for `queue` (task_routes apply), once per queue."""
        route = self._routes.get(queue)
        if route is None:
            options = {"queue": queue} if queue else {}
            route = self._routes[queue] = self.celery.amqp.router.route(options, RUN_TASK)
        return route

    def idle_queues(self, queues: set[str | None]) -> set[str | None] | None:
        """Which of these job queues (None: the default) have no message waiting on the
        broker; None when the broker cannot be asked."""
        idle: set[str | None] = set()
        try:
            with self.celery.connection_for_write() as connection:
                channel = connection.default_channel
                for queue in queues:
                    name = self._route(queue)["queue"].name
                    # not passive: Redis has no key for an empty queue (a passive declare
                    # says "not found"); declaring an existing queue changes nothing
                    if channel.queue_declare(queue=name).message_count == 0:
                        idle.add(queue)
        except Exception as exc:  # broker away: nothing to publish to anyway
            log.debug("queue lengths unavailable: %s", exc)
            return None
        return idle

    def _signature(self, run_id: str, job_id: str, name: str, queue: str | None) -> Signature:
        return self.celery.signature(
            RUN_TASK,
            args=[run_id],
            kwargs={"job_id": job_id},
            task_id=run_id,
            queue=queue or None,
            shadow=f"kala: {name}",
            immutable=True,
        )

    def _send(
        self, producer: Producer, run: tuple, declared: set[str | None], sent_event: bool
    ) -> None:
        run_id, _root, job_id, name, queue = run
        args, kwargs = [run_id], {"job_id": job_id}
        amqp = self.celery.amqp
        message = amqp.create_task_message(
            run_id,
            RUN_TASK,
            args,
            kwargs,
            shadow=f"kala: {name}",
            argsrepr=repr(args),
            kwargsrepr=repr(kwargs),
            create_sent_event=sent_event,
        )
        # The queue is declared (as send_task would) with the first run for it in a call; the
        # rest skip kombu's maybe_declare, which costs as much as building the message.
        declare = [] if queue in declared else None
        declared.add(queue)
        route = self._route(queue)
        amqp.send_task_message(producer, RUN_TASK, message, retry=False, declare=declare, **route)

    def _pending(self, ids: list[str]) -> tuple[list[tuple], dict[str, list[tuple]]]:
        """The pending runs among `ids` and, for each, the rest of its chain: the runs after
        it in its tree's depth-first order that have not run (pending, or `sent` with a
        message that was lost). One query when every run is a root (the usual case); a run
        that is in the chain of another one given is sent in that chain only."""
        columns = (Run.id, Run.root_run_id, Job.id, Job.name, Job.queue, Run.seq, Run.state)
        with self._reads() as session:
            rows = session.execute(
                select(*columns)
                .join(Job, Job.id == Run.job_id)
                .where(
                    or_(
                        bulk.one_of(session, Run.id, ids) & (Run.state == "pending"),
                        bulk.one_of(session, Run.root_run_id, ids) & Run.state.in_(UNRUN),
                    )
                )
                .order_by(Run.seq)
            ).all()
            wanted = set(ids)
            heads = [row for row in rows if row[0] in wanted and row[6] == "pending"]
            inner = list({row[1] for row in heads if row[1] is not None})
            if inner:  # dependents sent again: their chain is the rest of their root's tree
                rows += session.execute(
                    select(*columns)
                    .join(Job, Job.id == Run.job_id)
                    .where(bulk.one_of(session, Run.root_run_id, inner), Run.state.in_(UNRUN))
                    .order_by(Run.seq)
                ).all()
        trees: dict[str, dict[str, tuple]] = {}
        for row in sorted(rows, key=lambda row: row[5]):
            if row[1] is not None:
                trees.setdefault(row[1], {}).setdefault(row[0], row)
        roots: list[tuple] = []
        links: dict[str, list[tuple]] = {}
        chained: set[str] = set()
        for head in heads:
            if head[0] in chained:
                continue
            tree = trees.get(head[0] if head[1] is None else head[1])
            roots.append(head[:5])
            if tree:
                rest = [row[:5] for row in tree.values() if row[5] > head[5]]
                if rest:
                    links[head[0]] = rest
                    chained.update(row[0] for row in rest)
        return roots, links

    def publish_ids(
        self, run_ids: Iterable[str], known: Mapping[str, tuple] | None = None
    ) -> list[str]:
        """Send the pending runs among `run_ids` (each with its dependents' runs, as a chain)
        on one producer; returns the ids of every run sent. `known`: runs the caller has just
        recorded without dependents, each with its message's (run id, None, job id, job
        name, queue), sent without reading them back (the beat's claim gives these)."""
        ids = list(run_ids)
        if not ids:
            return []
        known = known or {}
        unknown = [run_id for run_id in ids if run_id not in known]
        roots, links = self._pending(unknown) if unknown else ([], {})
        roots += [known[run_id] for run_id in dict.fromkeys(ids) if run_id in known]
        sent: list[str] = []
        declared: set[str | None] = set()
        sent_event = bool(self.celery.conf.task_send_sent_event)
        try:
            with self.celery.producer_or_acquire() as producer:
                for start in range(0, len(roots), BATCH):
                    done: list[str] = []
                    with producer.batch(max_size=BATCH * 2):  # a sent event is a second op
                        for run in roots[start : start + BATCH]:
                            run_id, _root, job_id, name, queue = run
                            tree = links.get(run_id)
                            if tree:
                                head = self._signature(run_id, job_id, name, queue)
                                rest = [self._signature(r[0], r[2], r[3], r[4]) for r in tree]
                                chain(head, *rest).apply_async(producer=producer, retry=False)
                                done += [run_id, *(r[0] for r in tree)]
                            else:
                                self._send(producer, run, declared, sent_event)
                                done.append(run_id)
                    sent += done  # flushed: on the broker
        except Exception as exc:  # broker down: what was not sent stays pending for the sweep
            self._broker_failed(exc, len(roots) - len(sent))
        else:
            self._broker_ok()
        if sent:
            with self.sessions.begin() as session:
                session.execute(
                    update(Run)
                    .where(bulk.one_of(session, Run.id, sent), Run.state.in_(UNRUN))
                    .values(state="sent", sent_at=db_now())
                )
        return sent

    def _broker_failed(self, exc: Exception, left: int) -> None:
        """Log the first failure of an outage (a line, not a trace back per attempt)."""
        if self.broker_error is None:
            log.error("publishing runs failed (%s: %s); %d left pending, sent when the broker "
                      "is back", type(exc).__name__, exc, left)
        else:
            log.debug("publishing runs failed again: %s", exc)
        self.broker_error = exc

    def _broker_ok(self) -> None:
        if self.broker_error is not None:
            log.warning("the broker is back; publishing again")
            self.broker_error = None
