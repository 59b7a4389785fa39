"""A kala-celery deployment on one box for the lateness and throughput suites: a fresh job store,
a fresh Redis database, real `celery -A kala_celery worker` / `beat -S kala` processes, and the
in-process domain layer (what the API calls) to create jobs and start runs."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench.common import Proc, Servers, celery_worker, kala_env, log, utcnow, wait_worker_ready
from kala_celery import wire
from kala_celery.api import create_app
from kala_celery.config import Settings
from kala_celery.runs import start
from kala_celery.store.tables import Run


class Cluster:
    def __init__(self, servers: Servers, store: str, label: str) -> None:
        self.servers = servers
        self.store = store
        self.dir: Path = servers.dir(f"{label}-{store}")
        self.db_url = servers.database(store, label)
        self.redis_url = servers.fresh_redis()
        self.settings = Settings(
            database_url=self.db_url, broker_url=self.redis_url, data_dir=self.dir
        )
        self.state = create_app(self.settings).extensions["kala"]
        self.env = kala_env(self.db_url, self.redis_url, self.dir)
        self.procs: list[Proc] = []

    # -- processes --------------------------------------------------------------------

    def start_worker(self, concurrency: int, pool: str = "prefork") -> Proc:
        log(f"starting a celery worker (-P {pool} -c {concurrency}) on {self.store}")
        proc = celery_worker(self.env, self.dir / f"worker{len(self.procs)}.log", concurrency,
                             pool)
        self.procs.append(proc)
        wait_worker_ready(self.redis_url, proc)
        return proc

    def start_beat(self) -> Proc:
        log(f"starting celery beat -S kala on {self.store}")
        proc = Proc(
            [sys.executable, "-m", "celery", "-A", "kala_celery", "beat", "-S", "kala",
             "-l", "info", "--pidfile=", "-s", str(self.dir / "celerybeat-schedule")],
            self.dir / f"beat{len(self.procs)}.log",
            self.env,
        )
        self.procs.append(proc)
        proc.wait_for_output("beat: Starting", 60)
        return proc

    # -- jobs and runs (the API's own code paths, without HTTP) -----------------------

    def create_job(self, body: dict[str, Any]) -> str:
        data = wire.decode_job(json.dumps(body).encode())
        with self.state.sessions.begin() as session:
            job, run = start.create(session, data, self.state.rules, utcnow())
        if run is not None:
            self.state.publish([run])
        return job.id

    def create_jobs(self, bodies: Sequence[dict[str, Any]]) -> list[str]:
        """Several jobs in one transaction (faster set-up; same rules)."""
        ids = []
        with self.state.sessions.begin() as session:
            for body in bodies:
                data = wire.decode_job(json.dumps(body).encode())
                job, run = start.create(session, data, self.state.rules, utcnow())
                assert run is None, "set-up jobs must not run at once"
                ids.append(job.id)
        return ids

    def start_runs(self, job_ids: Sequence[str]) -> int:
        """A manual start of each job (as POST /job/start/{id}/?wait=false), published after
        the commit."""
        with self.state.sessions.begin() as session:
            runs = [start.manual(session, jid, self.state.rules, utcnow()) for jid in job_ids]
        self.state.publish(runs)
        return len(runs)

    def runs(self) -> list[Run]:
        from sqlalchemy import select

        with self.state.sessions() as session:
            return list(session.scalars(select(Run)))

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.state.engine.connect() as conn:
            return conn.execute(text(sql), params).scalar()

    def queue_length(self) -> int:
        import redis

        return int(redis.Redis.from_url(self.redis_url).llen("celery"))

    # -- the end ----------------------------------------------------------------------

    def close(self) -> None:
        for proc in reversed(self.procs):
            with contextlib.suppress(Exception):
                proc.stop(signal.SIGTERM, timeout=15)
        self.procs.clear()
        with contextlib.suppress(Exception):
            self.state.engine.dispose()
        self.servers.drop(self.db_url)


def worker_children(pid: int) -> list[int]:
    """Pids of a process's direct children (a prefork worker's pool)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


def cores() -> int:
    return os.cpu_count() or 1
