"""Alembic migrations (kala_celery/store/migrations, kala_celery/store/schema.py), on SQLite and
PostgreSQL: head equals the models, 0001 equals 0.1.0's tables, a 0.1.0 database upgrades to
head and its jobs still list, claim and run, and who upgrades or refuses a database behind
head."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import uuid
from datetime import timedelta
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from kala_celery.api import create_app
from kala_celery.beat.claim import claim_batch
from kala_celery.config import Settings
from kala_celery.store import schema
from kala_celery.store.db import init_schema, make_engine, make_sessionmaker, sqlite_connection
from kala_celery.store.tables import Base, Run, utcnow
from kala_celery.tasks.runner import execute_run
from tests import schema_0_1_0 as old

pytestmark = pytest.mark.timeout(120)


def diff(engine, metadata) -> list:
    with engine.connect() as conn:
        return compare_metadata(MigrationContext.configure(conn), metadata)


def test_head_is_the_models(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        init_schema(engine)  # an empty database: created by running the migrations
        assert schema.revision_of(engine) == schema.head() == "0011"
        assert diff(engine, Base.metadata) == []
    finally:
        engine.dispose()


def test_0001_is_the_0_1_0_schema(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        with engine.begin() as conn:
            config = schema.alembic_config()
            config.attributes["connection"] = conn
            command.upgrade(config, "0001")
        assert diff(engine, old.Base.metadata) == []
        assert diff(engine, Base.metadata) != []  # and 0002 has work to do
    finally:
        engine.dispose()


def make_0_1_0_database(url: str) -> dict[str, str]:
    """Tables as 0.1.0's create_all made them, with a due job, its child, a disabled job and a
    finished scheduled run."""
    engine = make_engine(url)
    old.Base.metadata.create_all(engine)
    now = utcnow().replace(microsecond=0)
    due = now - timedelta(seconds=5)
    ids = {"due": "old-due", "child": "old-child", "off": "old-off"}
    start = (now - timedelta(hours=1, seconds=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    with Session(engine) as session, session.begin():
        session.add(old.Job(id=ids["due"], name="nightly", command="true", owner="ops",
                            schedule=f"R3/{start}/PT1H", next_run_at=due, runs_used=1,
                            created_at=now, success_count=1, number_of_finished_runs=1))
        session.add(old.Job(id=ids["child"], name="after", command="true", created_at=now))
        session.add(old.Job(id=ids["off"], name="off", command="true", disabled=True,
                            schedule=f"R2/{start}/PT1H", created_at=now, allow_overlap=True))
        session.flush()
        session.add(old.JobLink(parent_id=ids["due"], child_id=ids["child"], position=0))
        session.add(old.Run(id=str(uuid.uuid4()), job_id=ids["due"], trigger="schedule",
                            scheduled_for=due - timedelta(hours=1), state="success", attempts=1,
                            created_at=due - timedelta(hours=1),
                            started_at=due - timedelta(hours=1) + timedelta(seconds=0.3),
                            finished_at=due - timedelta(hours=1) + timedelta(seconds=1)))
    engine.dispose()
    return ids


def kala(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "kala_celery", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def metric(body: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    raise KeyError(name, labels)


def test_a_0_1_0_database_upgrades_and_its_jobs_still_run(db_url: str, tmp_path: Path) -> None:
    ids = make_0_1_0_database(db_url)
    engine = make_engine(db_url)
    assert schema.revision_of(engine) == "0001"  # no alembic_version: 0.1.0's tables

    done = kala("db", "current", "--db", db_url)
    assert done.returncode == 1 and "kala-celery db upgrade" in done.stdout
    done = kala("db", "upgrade", "--db", db_url)
    assert done.returncode == 0, done.stderr
    assert "upgraded from 0001 to 0011" in done.stdout
    assert kala("db", "current", "--db", db_url).stdout.strip() == "0011 (head)"
    assert diff(engine, Base.metadata) == []

    # the rows survived and read through today's API
    published: list[str] = []
    settings = Settings(database_url=db_url, data_dir=tmp_path)
    app = create_app(settings, publish=lambda runs: published.extend(r.id for r in runs) or [])
    client = app.test_client()
    jobs = client.get("/api/v1/job/").get_json()["jobs"]
    assert set(jobs) == set(ids.values())
    assert jobs[ids["due"]]["name"] == "nightly" and jobs[ids["due"]]["owner"] == "ops"
    assert jobs[ids["due"]]["metadata"]["success_count"] == 1
    assert jobs[ids["due"]]["dependent_jobs"] == [ids["child"]]
    assert jobs[ids["off"]]["disabled"] is True
    # 0003: allow_overlap became the overlap policy "allow", and stays as its alias
    assert (jobs[ids["off"]]["allow_overlap"], jobs[ids["off"]]["overlap"]) == (True, "allow")
    assert "overlap" not in jobs[ids["due"]] and "cron" not in jobs[ids["due"]]
    body = client.get("/metrics").get_data(as_text=True)  # seeded from the old rows
    assert metric(body, "kala_jobs", state="active") == 2
    assert metric(body, "kala_jobs", state="disabled") == 1
    assert metric(body, "kala_runs_total", state="success") == 1
    assert metric(body, "kala_run_lateness_seconds_bucket", le="0.5") == 1
    assert metric(body, "kala_run_lateness_seconds_sum") == pytest.approx(0.3, abs=0.01)

    # the beat claims the due job, and its run runs (in process, as a worker would)
    sessions = make_sessionmaker(engine)
    with sessions.begin() as session:
        [run_id] = claim_batch(session, utcnow(), 10, "UTC")
    execute_run(sessions, run_id, hostname="test@host", settings=settings)
    with sessions() as session:
        run = session.get(Run, run_id)
        assert (run.job_id, run.trigger, run.state) == (ids["due"], "schedule", "success")
        assert run.sent_at is None or run.sent_at <= utcnow()  # the new column is there
        children = session.scalar(select(func.count()).select_from(Run)
                                  .where(Run.root_run_id == run_id, Run.job_id == ids["child"]))
        assert children == 1  # its dependent was recorded with it
    body = client.get("/metrics").get_data(as_text=True)
    assert metric(body, "kala_runs_total", state="success") == 2
    assert metric(body, "kala_run_lateness_seconds_count") == 2
    app.extensions["kala"].engine.dispose()
    engine.dispose()


def test_who_upgrades_a_database_behind_head(db_url: str, tmp_path: Path) -> None:
    """SQLite (the embedded default, `serve`): any process upgrades it. Another database:
    the API, beat and worker refuse it, naming the command."""
    make_0_1_0_database(db_url)
    settings = Settings(database_url=db_url, data_dir=tmp_path)
    if db_url.startswith("sqlite"):
        app = create_app(settings, publish=lambda runs: [])
        assert schema.revision_of(app.extensions["kala"].engine) == schema.head()
        assert len(app.test_client().get("/api/v1/job/").get_json()["jobs"]) == 3
        app.extensions["kala"].engine.dispose()
        return
    with pytest.raises(schema.SchemaBehind, match="run `kala-celery db upgrade`"):
        create_app(settings, publish=lambda runs: [])
    env = {"KALA_DATABASE_URL": db_url, "KALA_BROKER_URL": "memory://",
           "KALA_DATA_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    celery = [sys.executable, "-m", "celery", "-A", "kala_celery"]
    started = [subprocess.Popen([*celery, "worker", "--pool", "solo"], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT),
               subprocess.Popen([*celery, "beat", "-S", "kala", "--pidfile="], env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)]
    for process, what in zip(started, ("worker", "beat"), strict=True):
        out = process.communicate(timeout=60)[0]
        assert process.returncode == 1, out
        assert f"{what} refuses to start" in out and "kala-celery db upgrade" in out, out
    engine = make_engine(db_url)
    assert schema.revision_of(engine) == "0001"  # nothing was changed
    engine.dispose()


def test_a_database_from_a_newer_version_is_refused(db_url: str) -> None:
    engine = make_engine(db_url)
    try:
        init_schema(engine)
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0999'"))
        with pytest.raises(schema.SchemaAhead, match="0999"):
            schema.ensure(engine, upgrade=True)
        done = kala("db", "current", "--db", db_url)
        assert done.returncode == 1 and "0999 (newer than this kala-celery" in done.stdout
    finally:
        engine.dispose()


def test_processes_starting_together_create_the_schema_once(db_url: str) -> None:
    engines = [make_engine(db_url) for _ in range(4)]
    errors: list[BaseException] = []

    def start(engine) -> None:
        try:
            init_schema(engine)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        assert schema.revision_of(engines[0]) == schema.head()
        with engines[0].connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM alembic_version")).scalar() == 1
    finally:
        for engine in engines:
            engine.dispose()


def test_connections_opened_together_on_a_new_sqlite_file_all_put_it_in_wal(
        tmp_path: Path) -> None:
    """Switching a new file to WAL answers "database is locked" at once, busy timeout or not,
    when another connection switches it at the same instant (serve's API, beat and worker
    starting together): every connection must still open, and the file end in WAL."""
    errors: list[BaseException] = []
    for attempt in range(25):
        path = str(tmp_path / f"new{attempt}.db")
        together = threading.Barrier(4)

        def open_one(path: str = path, together: threading.Barrier = together) -> None:
            together.wait()
            try:
                sqlite_connection(path).close()
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=open_one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == [], f"attempt {attempt}"
        connection = sqlite3.connect(path)
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        connection.close()


@pytest.mark.timeout(20)
def test_an_in_memory_sqlite_database_opens_without_wal() -> None:
    """WAL is asked for once: an in-memory database answers "memory" and stays so."""
    engine = make_engine("sqlite://")
    try:
        with engine.connect() as conn:
            assert conn.execute(text("PRAGMA journal_mode")).scalar() == "memory"
    finally:
        engine.dispose()


def test_a_development_database_between_0_1_0_and_0002_upgrades(db_url: str) -> None:
    """Made by create_all of a version after 0.1.0 (already with workers, beats, sent_at and
    missed_occurrences, no alembic_version): 0002 adds only what is missing."""
    engine = make_engine(db_url)
    try:
        tables = [t for t in Base.metadata.sorted_tables if t.name != "metric_counts"]
        Base.metadata.create_all(engine, tables=tables)
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO beats (name, started_at, last_tick) VALUES "
                              "('b/1', '2026-12-01 00:00:00', '2026-12-01 00:00:00')"))
        assert schema.ensure(engine, upgrade=True) == "0001"
        assert diff(engine, Base.metadata) == []
        with engine.begin() as conn:
            assert conn.execute(text("SELECT count(*) FROM beats")).scalar() == 1
            conn.execute(text(
                "INSERT INTO jobs (id, name, command, owner, disabled, on_failure_job, schedule, "
                "retries, epsilon, template_delimiters, resume_at_next_scheduled_time, job_type, "
                "remote_url, remote_method, remote_body, remote_timeout, success_count, "
                "error_count, number_of_finished_runs, is_done, runs_used, missed_occurrences, "
                "retry_backoff, allow_overlap, created_at) VALUES ('j', '', 'true', '', true, "
                "'', '', 0, '', '', false, 0, '', '', '', 0, 0, 0, 0, false, 0, 4, false, false, "
                "'2026-12-01 00:00:00')"))
            conn.execute(text("UPDATE jobs SET overlap_skipped = overlap_skipped + 3"))
            counts = dict(conn.execute(text(
                "SELECT series || '/' || label, sum(n) FROM metric_counts "
                "WHERE series <> 'changes' GROUP BY 1")).all())  # 'changes': 0007's version
        # the triggers are there (0002's and 0003's)
        assert counts == {"jobs/disabled": 1, "missed/": 4, "overlap_skipped/": 3}
    finally:
        engine.dispose()
