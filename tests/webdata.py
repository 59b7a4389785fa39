"""Many stored jobs for the dashboard's tests and benchmark, written straight to SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert, select

from kala_celery.store.tables import Beat, Job, Run, Worker

TEAMS = ("billing", "search", "ops", "data", "mail", "reports", "auth", "media")
TASKS = ("sync", "backup", "reindex", "cleanup", "export", "digest", "rotate-keys", "warm-cache")


def _stamp(t: datetime) -> str:
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def insert_jobs(engine: Engine, n: int, *, now: datetime | None = None) -> list[str]:
    """n scheduled jobs with varied names and owners; every 7th disabled, every 11th failing,
    every 13th done. Returns their ids."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    rows = []
    for i in range(n):
        team, task = TEAMS[i % len(TEAMS)], TASKS[(i // len(TEAMS)) % len(TASKS)]
        start = now + timedelta(minutes=5 + i % 1440)
        disabled, failing, done = i % 7 == 3, i % 11 == 5, i % 13 == 6
        rows.append({
            "id": f"job-{i:06d}",
            "name": f"{team} {task} #{i}",
            "command": f"echo {team} {task}",
            "owner": f"{team}@example.com",
            "disabled": disabled,
            "on_failure_job": "",
            "schedule": f"R/{_stamp(start)}/PT{1 + i % 12}H" if i % 5 else
                        f"R{i % 40}/{_stamp(start)}/P1D",
            "retries": i % 3,
            "epsilon": "",
            "template_delimiters": "",
            "resume_at_next_scheduled_time": False,
            "job_type": 0,
            "remote_url": "", "remote_method": "", "remote_body": "", "remote_timeout": 0,
            "success_count": i % 50,
            "error_count": 3 if failing else 0,
            "last_success": now - timedelta(hours=2),
            "last_error": now - timedelta(hours=1) if failing else None,
            "last_attempted_run": now - timedelta(hours=1),
            "number_of_finished_runs": i % 50 + (3 if failing else 0),
            "is_done": done,
            "next_run_at": None if disabled or done else start,
            "runs_used": 0,
            "retry_backoff": False,
            "allow_overlap": False,
            "created_at": now,
        })
    with engine.begin() as conn:
        for lo in range(0, n, 5000):
            conn.execute(insert(Job.__table__), rows[lo:lo + 5000])
    return [row["id"] for row in rows]


def insert_runs(engine: Engine, job_id: str, count: int, *, output: str = "ok",
                now: datetime | None = None) -> None:
    """`count` finished runs of one job, alternately successful and failed."""
    now = now or datetime.now(UTC)
    rows = []
    for k in range(count):
        at = now - timedelta(minutes=count - k)
        ok = k % 2 == 0
        rows.append({
            "id": f"{job_id[:20]}-run-{k:06d}", "job_id": job_id, "scheduled_for": at,
            "trigger": "schedule", "seq": 0, "state": "success" if ok else "failed",
            "attempts": 1 if ok else 2, "created_at": at, "started_at": at,
            "attempt_at": at, "finished_at": at + timedelta(seconds=2),
            "duration_ns": 2_000_000_000 + k, "exit_code": 0 if ok else 1,
            "output": output, "error": None if ok else "exit status 1",
        })
    with engine.begin() as conn:
        conn.execute(insert(Run.__table__), rows)


def insert_day_of_runs(engine: Engine, job_ids: list[str], *, now: datetime | None = None,
                       every: timedelta = timedelta(minutes=15), hours: int = 24) -> int:
    """A day of varied history for the charts: each job ran every `every` over the last
    `hours`, due on a phase of its own; most succeeded in 1-40 s and started 0.1-3 s late, a
    few failed or were lost (a bad hour 6 h ago fails a third of them and starts them late),
    a few were skipped; each job's newest run is still running or queued. Returns the runs
    written."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    rows = []
    steps = int(timedelta(hours=hours) / every)
    for j, job_id in enumerate(job_ids):
        phase = every * (j / max(len(job_ids), 1))
        for k in range(steps):
            due = now - timedelta(hours=hours) + phase + k * every
            if due > now:
                break
            bad_hour = timedelta(hours=6) <= now - due < timedelta(hours=7)
            h = (j * 7919 + k * 104729) % 1000  # a fixed spread, the same on every run
            late = 0.113 + (h % 29) / 10 + (45 + h % 60 if bad_hour else 0)  # off the bounds
            took = 1 + (h * 37 % 400) / 10 * (1 + j % 3)
            state = ("failed" if h < 20 or (bad_hour and h % 3 == 0) else "lost" if h < 25
                     else "skipped" if h < 35 else "success")
            newest = due + every > now
            if newest:
                state = "started" if j % 2 else "sent"
            started = None if state in ("skipped", "sent") else due + timedelta(seconds=late)
            ended = state not in ("started", "sent")
            rows.append({
                "id": f"{job_id[:20]}-day-{k:05d}", "job_id": job_id, "scheduled_for": due,
                "trigger": "schedule", "seq": 0, "state": state,
                "attempts": 0 if started is None else 1, "created_at": due,
                "started_at": started, "attempt_at": started,
                "finished_at": started + timedelta(seconds=took) if ended and started else None,
                "duration_ns": int(took * 1e9) if ended and started else None,
                "exit_code": None if not ended or started is None else 0 if state == "success"
                else 1,
                "output": "ok" if state == "success" else None,
                "error": "exit status 1" if state == "failed" else "worker lost"
                if state == "lost" else None,
            })
    with engine.begin() as conn:
        for lo in range(0, len(rows), 5000):
            conn.execute(insert(Run.__table__), rows[lo:lo + 5000])
    return len(rows)


def insert_heartbeats(engine: Engine, *, now: datetime | None = None) -> None:
    """A beat and three workers, the third silent for 10 minutes; the first lists the runs
    that are `started` (at most ten) as running."""
    now = (now or datetime.now(UTC)).replace(microsecond=0)
    with engine.begin() as conn:
        started = conn.execute(select(Run.id).where(Run.state == "started").limit(10))
        running = " ".join(started.scalars())
        conn.execute(insert(Beat.__table__), [
            {"name": "kala-beat-1/41", "started_at": now - timedelta(hours=30),
             "last_tick": now - timedelta(seconds=2)}])
        conn.execute(insert(Worker.__table__), [
            {"name": f"celery@worker-{i}/{300 + i}", "started_at": now - timedelta(hours=30),
             "last_seen": now - timedelta(seconds=3 if i < 2 else 600),
             "running": running if i == 0 else ""}
            for i in range(3)])
