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
from collections.abc import Iterable, Sequence
from typing import Any

from celery import Celery, chain
from celery.canvas import Signature
from kombu import Producer
from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from kala_celery import bulk
from kala_celery.celery_app import RUN_TASK
from kala_celery.db import engine_of, read_sessions
from kala_celery.models import Job, Run

log = logging.getLogger(__name__)

BATCH = 500  # messages per pipeline round trip


class CeleryPublisher:
    def __init__(self, celery: Celery, sessions: sessionmaker[Session]) -> None:
        self.celery = celery
        self.sessions = sessions
        self._reads = read_sessions(engine_of(sessions))  # the read before a publish
        self._routes: dict[str | None, dict[str, Any]] = {}

    def __call__(self, runs: Sequence[Run]) -> None:
        self.publish_ids(run.id for run in runs)

    def _route(self, queue: str | None) -> dict[str, Any]:
        """Where `send_task` would send a run for `queue` (task_routes apply), once per queue."""
        route = self._routes.get(queue)
        if route is None:
            options = {"queue": queue} if queue else {}
            route = self._routes[queue] = self.celery.amqp.router.route(options, RUN_TASK)
        return route

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
        """The pending runs among `ids` and, per root, its pending dependents in tree order
        (one query for both)."""
        columns = (Run.id, Run.root_run_id, Job.id, Job.name, Job.queue)
        with self._reads() as session:
            rows = session.execute(
                select(*columns)
                .join(Job, Job.id == Run.job_id)
                .where(
                    or_(
                        bulk.one_of(session, Run.id, ids),
                        bulk.one_of(session, Run.root_run_id, ids),
                    ),
                    Run.state == "pending",
                )
                .order_by(Run.seq)
            ).all()
        wanted = set(ids)
        roots = [row for row in rows if row[0] in wanted]
        links: dict[str, list[tuple]] = {}
        for row in rows:
            if row[1] in wanted and row[0] not in wanted:
                links.setdefault(row[1], []).append(row)
        return roots, links

    def publish_ids(self, run_ids: Iterable[str]) -> list[str]:
        """Send the pending runs among `run_ids` (each with its dependents' runs, as a chain)
        on one producer; returns the ids of every run sent."""
        ids = list(run_ids)
        if not ids:
            return []
        roots, links = self._pending(ids)
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
        except Exception:  # broker down: what was not sent stays pending for the sweep
            log.exception("publishing runs failed; %d left pending", len(roots) - len(sent))
        if sent:
            with self.sessions.begin() as session:
                session.execute(
                    update(Run)
                    .where(bulk.one_of(session, Run.id, sent), Run.state == "pending")
                    .values(state="sent")
                )
        return sent
