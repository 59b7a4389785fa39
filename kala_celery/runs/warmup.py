"""A worker's PostgreSQL connections opened warm (docs/design.md, the run lifecycle, and
Decision 36): at the start of each process that executes runs, each connection its claims and
ends run on has compiled the run path's triggers and planned its statements for good, so the
first burst after a start costs the server what a later one does."""

from __future__ import annotations

from contextlib import ExitStack
from datetime import datetime
from uuid import uuid4

from sqlalchemy import Connection, Engine, insert, select

from kala_celery.runs.attempts import CLAIM_IN_ONE, end_statement
from kala_celery.store.db import autocommit_engine
from kala_celery.store.driver import driven
from kala_celery.store.tables import Job, Run

_jobs = Job.__table__
_runs = Run.__table__
NO_RUN = "00000000-0000-0000-0000-000000000000"  # the id of no run

_WARM = {"p_me": NO_RUN, "p_state": "success", "p_duration": 0, "p_output": "",
         "p_error": None, "p_exit": 0, "p_http": None, "p_total": 1, "p_attempts": None}
# PostgreSQL plans a prepared statement (and each statement of a PL/pgSQL function) for its
# parameters at each of its first five executions, then builds the generic plan it keeps.
PLANNED_EXECUTIONS = 6


def _fire_triggers(conn: Connection, now: datetime) -> list[tuple[str, bool]]:
    """Claim and end runs of jobs of its own on `conn` (a connection of the autocommit
    sibling) in a transaction it rolls back, as many as PostgreSQL plans a statement for
    before it keeps one plan, and one manual run: so that its backend has compiled the
    triggers a run's claim and end fire (`kala_runs_changed`, `kala_count_jobs`: PL/pgSQL,
    each compiled at its first firing in a backend) and planned their statements for good.
    Returns each run's state and its job's `is_done` as they were in it (the test's proof
    that the triggers fired: each changed what they count); nothing of it is kept."""
    triggers = ["schedule"] * PLANNED_EXECUTIONS + ["manual"]
    job_ids = [str(uuid4()) for _ in triggers]
    run_ids = [str(uuid4()) for _ in triggers]
    params = {**_WARM, "p_now": now, "p_ready": now, "p_attempt": 1}
    with conn.connection.driver_connection.transaction(force_rollback=True):  # type: ignore[union-attr]
        conn.execute(insert(_jobs), [  # used up and unscheduled: the end marks each done
            {"id": job_id, "name": "warm", "runs_used": 1, "created_at": now}
            for job_id in job_ids])
        conn.execute(insert(_runs), [
            {"id": run_id, "job_id": job_id, "scheduled_for": now, "trigger": trigger,
             "created_at": now}
            for run_id, job_id, trigger in zip(run_ids, job_ids, triggers, strict=True)])
        for run_id, job_id in zip(run_ids, job_ids, strict=True):
            step = {**params, "p_run": run_id, "p_job": job_id}
            driven(CLAIM_IN_ONE, conn.dialect).first(conn, step)
            driven(end_statement("success", False, "total", False), conn.dialect).first(
                conn, step)
        reached = conn.execute(
            select(_runs.c.state, _jobs.c.is_done).join_from(
                _runs, _jobs, _jobs.c.id == _runs.c.job_id).where(_runs.c.id.in_(run_ids)))
        return [tuple(row) for row in reached]


def warm(engine: Engine, connections: int, now: datetime) -> None:
    """Open `connections` of the pool the claims and ends run on (the engine's autocommit
    sibling, at most its size) on PostgreSQL, and get each past PostgreSQL's first
    executions: a new backend loads its catalogs, compiles each trigger function at its
    first firing and plans each statement for its parameters at its first five executions,
    which otherwise fell on the worker's first runs (the first burst after a start; in one
    process a connection's first eight runs cost the server 14.3 ms of CPU with one claim
    and one end warmed, 6.0 ms so: docs/design.md, the run lifecycle). On each connection
    the run path's triggers fire (_fire_triggers), then the claim and a success's ends run
    as many times for a run that does not exist (they change nothing; psycopg prepares them
    again after the ROLLBACK)."""
    if engine.dialect.name != "postgresql":
        return
    params = {**_WARM, "p_run": NO_RUN, "p_now": now, "p_ready": now, "p_job": NO_RUN,
              "p_attempt": 1}
    size = min(connections, engine.pool.size())  # type: ignore[attr-defined]  # QueuePool
    statements = [driven(CLAIM_IN_ONE, engine.dialect)] + [  # a success's end, by schedule
        driven(end_statement("success", False, done, False), engine.dialect)
        for done in ("total", "child", "yes")]
    alone = autocommit_engine(engine)  # where the claims and ends run (store/driver.py)
    with ExitStack() as held:  # all open at once: each a connection of its own
        for _ in range(size):
            conn = held.enter_context(alone.connect())
            _fire_triggers(conn, now)  # first: psycopg forgets what it prepared at a ROLLBACK
            for _ in range(PLANNED_EXECUTIONS):
                for statement in statements:
                    statement.first(conn, params)
