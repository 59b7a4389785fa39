"""Many stored jobs for the dashboard's tests and benchmark, written straight to SQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import Engine, insert

from kala_celery.store.tables import Job, Run

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
