"""GET /metrics (kala_celery/api/metrics.py) on SQLite and PostgreSQL: runs claimed and run in
process as the beat and a worker do, then the Prometheus text read back with
prometheus_client's own parser."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from flask import Flask
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import delete, select, text, update

from kala_celery.api import create_app, init_kala
from kala_celery.beat.claim import claim_batch
from kala_celery.config import Settings
from kala_celery.runs.heartbeats import record_beat, record_heartbeat
from kala_celery.store.tables import Job, Run, utcnow
from kala_celery.tasks.runner import execute_run

pytestmark = pytest.mark.timeout(120)


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def value(found: dict, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def test_metrics_follow_runs_and_jobs(db_url: str, tmp_path: Path) -> None:
    settings = Settings(database_url=db_url, data_dir=tmp_path, worker_timeout="PT30S")
    app = create_app(settings, publish=lambda runs: [])  # runs stay pending: no broker here
    other = create_app(settings, publish=lambda runs: [])  # another API process
    client = app.test_client()
    state = app.extensions["kala"]
    start = (utcnow() + timedelta(hours=1)).replace(microsecond=0)
    iso = start.strftime("%Y-%m-%dT%H:%M:%SZ")

    def create(name: str, command: str, schedule: str = "", **extra: object) -> str:
        body = {"name": name, "command": command, "schedule": schedule, **extra}
        response = client.post("/api/v1/job/", json=body)
        assert response.status_code == 201, response.text
        return response.get_json()["id"]

    good = create("good", "true", f"R5/{iso}/PT1H")
    bad = create("bad", "false", f"R5/{iso}/PT1H")
    once = create("once", "true", f"R1/{iso}/PT1H")
    off = create("off", "true", f"R5/{iso}/PT1H")
    manual = create("one-off", "true")
    assert client.post(f"/api/v1/job/disable/{off}/").status_code == 204
    with state.sessions() as session:  # a one-off runs at once, and is done once it ran
        [(manual_run, due_at)] = session.execute(
            select(Run.id, Run.scheduled_for).where(Run.job_id == manual)).all()
    execute_run(state.sessions, manual_run, hostname="w@test", settings=settings,
                clock=lambda: due_at + timedelta(seconds=0.2))

    # the beat claims the three due jobs at their occurrence; workers start them 0.7 s late
    with state.sessions.begin() as session:
        claimed = claim_batch(session, start, 10, "UTC")
    assert len(claimed) == 3
    late = start + timedelta(seconds=0.7)
    for run_id in claimed:
        execute_run(state.sessions, run_id, hostname="w@test", settings=settings,
                    clock=lambda: late)
    assert client.post(f"/api/v1/job/start/{bad}/?wait=false").status_code == 202  # pending
    with state.engine.begin() as conn:
        conn.execute(update(Job).where(Job.id == bad).values(missed_occurrences=2))
        now = utcnow()
        record_beat(conn, "beat-host/1", now)
        record_beat(conn, "beat-host/2", now - timedelta(minutes=5))
        record_heartbeat(conn, "celery@w1/10", now, [])

    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=")
    body = response.get_data(as_text=True)
    assert other.test_client().get("/metrics").get_data(as_text=True) == body  # same figures
    found = samples(body)
    assert {state: value(found, "kala_jobs", state=state)
            for state in ("active", "disabled", "done")} == {"active": 3, "disabled": 1, "done": 1}
    assert {state: value(found, "kala_runs_total", state=state)
            for state in ("success", "failed", "lost", "skipped")} == {
        "success": 3, "failed": 1, "lost": 0, "skipped": 0}
    assert {state: value(found, "kala_runs_open", state=state)
            for state in ("pending", "sent", "started")} == {"pending": 1, "sent": 0, "started": 0}
    # the one-off's run was due when it was created and started 0.2 s later; the others 0.7 s
    assert value(found, "kala_run_lateness_seconds_bucket", le="0.1") == 0
    assert value(found, "kala_run_lateness_seconds_bucket", le="0.25") == 1
    assert value(found, "kala_run_lateness_seconds_bucket", le="0.5") == 1
    assert value(found, "kala_run_lateness_seconds_bucket", le="1.0") == 4
    assert value(found, "kala_run_lateness_seconds_bucket", le="+Inf") == 4
    assert value(found, "kala_run_lateness_seconds_count") == 4
    assert value(found, "kala_run_lateness_seconds_sum") == pytest.approx(2.3, abs=0.01)
    assert value(found, "kala_missed_occurrences_total") == 2
    assert value(found, "kala_beat_last_tick_timestamp_seconds", beat="beat-host/1") == (
        pytest.approx(now.timestamp(), abs=0.01))
    assert value(found, "kala_beats", state="alive") == 1
    assert value(found, "kala_beats", state="silent") == 1
    assert value(found, "kala_workers", state="alive") == 1
    assert ("kala_worker_last_seen_timestamp_seconds", (("worker", "celery@w1/10"),)) in found

    # counters only grow: pruning old runs or lowering a job's count takes nothing back
    with state.engine.begin() as conn:
        conn.execute(delete(Run).where(Run.state.in_(("success", "failed"))))
        conn.execute(update(Job).where(Job.id == bad).values(missed_occurrences=0))
        conn.execute(update(Job).where(Job.id == bad).values(missed_occurrences=1))
    assert client.delete(f"/api/v1/job/{good}/").status_code == 204
    assert client.post(f"/api/v1/job/enable/{off}/").status_code == 204
    found = samples(client.get("/metrics").get_data(as_text=True))
    assert value(found, "kala_runs_total", state="success") == 3
    assert value(found, "kala_runs_total", state="failed") == 1
    assert value(found, "kala_missed_occurrences_total") == 3
    assert {state: value(found, "kala_jobs", state=state)
            for state in ("active", "disabled", "done")} == {"active": 3, "disabled": 0, "done": 1}
    with state.engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM jobs WHERE is_done")).scalars().all() == [manual]
        assert once in conn.execute(text("SELECT id FROM jobs")).scalars().all()
    for each in (app, other):
        each.extensions["kala"].engine.dispose()


def test_metrics_need_the_token_and_answer_503_without_the_database(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'kala.db'}", data_dir=tmp_path,
                        api_token="s3cret")
    client = create_app(settings, publish=lambda runs: []).test_client()
    assert client.get("/metrics").status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200 and b"kala_jobs" in ok.data

    away = Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:1/nowhere",
                    data_dir=tmp_path, broker_url="memory://")
    down = create_app(away, publish=lambda runs: []).test_client()
    response = down.get("/metrics")
    assert response.status_code == 503 and response.headers["Retry-After"] == "5"


def test_init_kala_mounts_metrics_only_when_asked(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'kala.db'}", data_dir=tmp_path)
    plain = Flask("theirs")
    init_kala(plain, settings, url_prefix="/kala/api/v1", publish=lambda runs: [])
    assert plain.test_client().get("/metrics").status_code == 404
    asked = Flask("theirs")
    init_kala(asked, settings, url_prefix="/kala/api/v1", publish=lambda runs: [],
              metrics_path="/kala/metrics", health_path="/kala/health")
    client = asked.test_client()
    assert b"kala_runs_total" in client.get("/kala/metrics").data
    assert client.get("/kala/health").get_json()["database"] == "ok"


def test_counters_stay_exact_under_concurrent_writers(db_url: str, tmp_path: Path) -> None:
    """Four threads enable, disable and finish jobs and end runs at once, in transactions
    that touch several counter rows: no deadlock, and the counters equal a full count."""
    import random
    import threading
    import uuid

    from kala_celery.api.metrics import KalaCollector
    from kala_celery.store.db import init_schema, make_engine, make_sessionmaker

    engine = make_engine(db_url)
    init_schema(engine)
    now = utcnow()
    job_ids = [f"job-{i}" for i in range(40)]
    with engine.begin() as conn:
        conn.execute(text(
            "INSERT INTO jobs (id, name, command, owner, disabled, on_failure_job, schedule, "
            "retries, epsilon, template_delimiters, resume_at_next_scheduled_time, job_type, "
            "remote_url, remote_method, remote_body, remote_timeout, success_count, error_count, "
            "number_of_finished_runs, is_done, runs_used, missed_occurrences, retry_backoff, "
            "allow_overlap, created_at) VALUES (:id, '', 'true', '', false, '', '', 0, '', '', "
            "false, 0, '', '', '', 0, 0, 0, 0, false, 0, 0, false, false, :now)"),
            [{"id": job_id, "now": now} for job_id in job_ids])
    sessions = make_sessionmaker(engine)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        try:
            for _ in range(40):
                job_id = rng.choice(job_ids)
                with sessions.begin() as session:
                    run_id = str(uuid.uuid4())
                    session.add(Run(id=run_id, job_id=job_id, scheduled_for=now,
                                    trigger="manual", state="started", attempts=1,
                                    created_at=now, started_at=now))
                    session.flush()
                    session.execute(update(Run).where(Run.id == run_id).values(
                        state=rng.choice(("success", "failed", "lost", "skipped"))))
                    session.execute(update(Job).where(Job.id == job_id).values(
                        disabled=rng.random() < 0.5, is_done=rng.random() < 0.2,
                        missed_occurrences=Job.missed_occurrences + rng.randint(0, 2)))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        families = {f.name: f for f in KalaCollector(engine, timedelta(seconds=30)).collect()}
        counted = {s.labels["state"]: s.value for s in families["kala_jobs"].samples}
        runs_total = {s.labels["state"]: s.value for s in families["kala_runs"].samples
                      if s.name == "kala_runs_total"}
        with engine.connect() as conn:
            truth = dict(conn.execute(text(
                "SELECT CASE WHEN is_done THEN 'done' WHEN disabled THEN 'disabled' "
                "ELSE 'active' END, count(*) FROM jobs GROUP BY 1")).all())
            ended = dict(conn.execute(text(
                "SELECT state, count(*) FROM runs GROUP BY state")).all())
            missed = conn.execute(text("SELECT sum(missed_occurrences) FROM jobs")).scalar()
        assert counted == {state: float(truth.get(state, 0))
                           for state in ("active", "disabled", "done")}
        assert runs_total == {state: float(ended.get(state, 0))
                              for state in ("success", "failed", "lost", "skipped")}
        assert sum(runs_total.values()) == 160
        [sample] = families["kala_missed_occurrences"].samples
        assert sample.value == missed
    finally:
        engine.dispose()
