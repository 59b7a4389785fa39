"""Is a beat or a worker alive? Read from the rows they write: a beat's `beats.last_tick`
(its sweep, every 5 s) and a worker process's `workers.last_seen` (its heartbeat, every sixth
of KALA_WORKER_TIMEOUT, from its first run on). Fresh means within KALA_WORKER_TIMEOUT.
`kala-celery health beat|worker` exits 0 or 1 on it, for compose and Kubernetes."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Engine, select

from kala_celery.store import clock
from kala_celery.store.tables import Beat, Worker

KINDS = {"beat": (Beat, Beat.last_tick), "worker": (Worker, Worker.last_seen)}


def on_host(name: str, host: str) -> bool:
    """Whether a process row belongs to `host`: beats are `<hostname>/<pid>`, workers
    `<celery node name>/<pid>` with the node `celery@<hostname>` unless renamed with -n."""
    node = name.rpartition("/")[0]
    return node == host or node.endswith("@" + host)


@dataclass(frozen=True)
class Verdict:
    alive: bool
    message: str


def check(engine: Engine, kind: str, silence: timedelta, *, host: str | None = None,
          now: datetime | None = None) -> Verdict:
    """Is a `kind` ("beat" or "worker") process on `host` (None: on any host) fresh?"""
    table, stamp = KINDS[kind]
    with engine.connect() as conn:
        rows = conn.execute(select(table.name, stamp)).all()
        now = now or clock.read(conn)
    mine = [(name, seen) for name, seen in rows if host is None or on_host(name, host)]
    where = "" if host is None else f" on {host}"
    if not mine:
        return Verdict(False, f"no {kind}{where} has written its row yet")
    name, seen = max(mine, key=lambda row: row[1])
    age = (now - seen).total_seconds()
    if seen >= now - silence:
        return Verdict(True, f"{kind} {name}: heard from {age:.1f} s ago")
    return Verdict(False, f"no {kind}{where} heard from within {silence.total_seconds():.0f} s "
                          f"(latest: {name}, {age:.0f} s ago)")


def this_host() -> str:
    return socket.gethostname()
