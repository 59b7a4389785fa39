"""The heartbeat rows of workers and beats, and the runs whose worker is gone: what the sweep
reads to take a run from a dead worker (KALA_WORKER_TIMEOUT), and what `health` checks.
"""


from __future__ import annotations

import os
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite

from kala_celery.store.tables import (
    Beat,
    Run,
    Worker,
)

_runs = Run.__table__

HEARTBEAT_MARGIN = timedelta(seconds=1)  # clock steps between a claim and a heartbeat


def worker_id(hostname: str) -> str:
    """A worker process's name in runs and heartbeats: its host and pid."""
    return f"{hostname}/{os.getpid()}"


def died_here(worker: str | None, hostname: str) -> bool:
    """The run's worker process was on this host and is gone (killed mid-run)."""
    host, _, pid = (worker or "").rpartition("/")
    if host != hostname or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _upsert(conn: Connection, table: Any, values: dict[str, Any], update: tuple[str, ...]) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = dialect.insert(table).values(**values)
    conn.execute(
        statement.on_conflict_do_update(
            index_elements=[table.primary_key.columns.values()[0]],
            set_={name: statement.excluded[name] for name in update},
        )
    )


def record_heartbeat(conn: Connection, name: str, now: datetime, running: list[str]) -> None:
    """Upsert the heartbeat row of worker process `name` with the runs it is executing."""
    values = {"name": name, "started_at": now, "last_seen": now, "running": " ".join(running)}
    _upsert(conn, Worker.__table__, values, ("last_seen", "running"))


def record_beat(conn: Connection, name: str, now: datetime) -> None:
    """Upsert the liveness row of beat process `name`."""
    _upsert(conn, Beat.__table__, {"name": name, "started_at": now, "last_tick": now},
            ("last_tick",))


def orphaned(engine: Engine, now: datetime, timeout: timedelta) -> list[tuple[str, str]]:
    """Started runs that no live worker is executing, with the reason: their worker process
    has written no heartbeat for `timeout` (killed, its machine gone), or it is alive and its
    latest heartbeat, written after the run's attempt began, does not list the run (its task
    ended without recording an outcome). A long run on a live worker is never taken."""
    workers = Worker.__table__
    query = (
        select(
            _runs.c.id,
            _runs.c.worker,
            _runs.c.attempt_at,
            workers.c.last_seen,
            workers.c.running,
        )
        .join_from(_runs, workers, workers.c.name == _runs.c.worker, isouter=True)
        .where(_runs.c.state == "started", _runs.c.attempt_at < now - HEARTBEAT_MARGIN)
    )
    found = []
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    for run_id, worker, attempt_at, last_seen, running in rows:
        if last_seen is None or last_seen < now - timeout:
            if attempt_at < now - timeout:
                seconds = int(timeout.total_seconds())
                found.append((run_id, f"worker {worker} silent for over {seconds} s (worker lost)"))
        elif last_seen > attempt_at + HEARTBEAT_MARGIN and run_id not in running.split():
            found.append((run_id, f"worker {worker} is alive but no longer running it"))
    return found


def prune_workers(engine: Engine, before: datetime) -> None:
    """Forget worker and beat processes silent since `before` (their runs were swept)."""
    with engine.begin() as conn:
        conn.execute(Worker.__table__.delete().where(Worker.__table__.c.last_seen < before))
        conn.execute(Beat.__table__.delete().where(Beat.__table__.c.last_tick < before))
