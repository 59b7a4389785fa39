"""The store's version (Decision 34): a number that grows with every committed change the job
documents show, so `GET /job/` can answer 304 to an unchanged list without reading a job.

It is the sum of metric_counts' series that only grow (store/version.py): the runs that ended
and the scheduled starts (0002), missed occurrences (0002), overlap skips (0003), and a new
series "changes" that these triggers add to, for what those do not count: a job added,
removed or edited (its content, schedule, next run, errors), a link between jobs, a run
deleted, and a run that is not a scheduled one starting. The triggers leave out the columns
that only a run's claim and end change (success_count, last_success, number_of_finished_runs,
is_done, last_attempted_run): those statements end or start a run, which the counters
already count, so a run that succeeds at once pays nothing more for the version.

On PostgreSQL the triggers are per statement (a bulk insert or delete, or the beat's claim of
500 jobs, adds once), each transaction to a row of its own (label = its transaction id), so
no writer ever waits for another's count: a count kept in shared rows is held until commit,
and a long transaction holding one (500 manual starts, an apply) deadlocked with workers'
claims waiting for it while holding the job rows it wanted. The beat folds committed rows
into one (store/version.py). On SQLite the triggers are per row on one row (it has one
writer at a time).

The Decisions cited are those of docs/design.md.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

UPSERT_TAIL = (
    " ON CONFLICT (series, label, shard) DO UPDATE"
    " SET n = metric_counts.n + excluded.n, total = metric_counts.total + excluded.total"
)
# Every column of jobs a job document shows, less those only a run's claim and end change.
EDITED = (
    "id, name, command, owner, disabled, on_failure_job, schedule, retries, epsilon, "
    "template_delimiters, resume_at_next_scheduled_time, job_type, remote_url, remote_method, "
    "remote_body, remote_headers, remote_timeout, remote_expected_codes, error_count, "
    "last_error, next_run_at, runs_used, timezone, retry_delay, retry_backoff, run_timeout, "
    "allow_overlap, queue, cron, overlap, celery_task, parents_mode, source, created_at"
)
LINKED = "parent_id, child_id, position"
# A run starting that the "lateness" series does not count (it counts scheduled ones).
OTHER_START = "OLD.started_at IS NULL AND NEW.started_at IS NOT NULL AND NEW.trigger <> 'schedule'"

_POSTGRESQL = [
    """CREATE OR REPLACE FUNCTION kala_count_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM kala_count('changes', txid_current()::text, 0, 1, 0);
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER kala_change_jobs AFTER INSERT OR DELETE ON jobs FOR EACH STATEMENT "
    "EXECUTE PROCEDURE kala_count_change()",
    f"CREATE TRIGGER kala_change_jobs_edited AFTER UPDATE OF {EDITED} ON jobs "
    "FOR EACH STATEMENT EXECUTE PROCEDURE kala_count_change()",
    "CREATE TRIGGER kala_change_links AFTER INSERT OR DELETE ON job_links FOR EACH STATEMENT "
    "EXECUTE PROCEDURE kala_count_change()",
    f"CREATE TRIGGER kala_change_links_edited AFTER UPDATE OF {LINKED} ON job_links "
    "FOR EACH STATEMENT EXECUTE PROCEDURE kala_count_change()",
    "CREATE TRIGGER kala_change_runs_deleted AFTER DELETE ON runs FOR EACH STATEMENT "
    "EXECUTE PROCEDURE kala_count_change()",
    f"CREATE TRIGGER kala_change_runs_started AFTER UPDATE OF started_at ON runs FOR EACH ROW "
    f"WHEN ({OTHER_START}) EXECUTE PROCEDURE kala_count_change()",
]

_ADD = ("INSERT INTO metric_counts (series, label, shard, n, total) "
        f"VALUES ('changes', '', 0, 1, 0){UPSERT_TAIL};")
_SQLITE = [
    f"CREATE TRIGGER kala_change_jobs_added AFTER INSERT ON jobs BEGIN {_ADD} END",
    f"CREATE TRIGGER kala_change_jobs_removed AFTER DELETE ON jobs BEGIN {_ADD} END",
    f"CREATE TRIGGER kala_change_jobs_edited AFTER UPDATE OF {EDITED} ON jobs BEGIN {_ADD} END",
    f"CREATE TRIGGER kala_change_links_added AFTER INSERT ON job_links BEGIN {_ADD} END",
    f"CREATE TRIGGER kala_change_links_removed AFTER DELETE ON job_links BEGIN {_ADD} END",
    f"CREATE TRIGGER kala_change_links_edited AFTER UPDATE OF {LINKED} ON job_links "
    f"BEGIN {_ADD} END",
    f"CREATE TRIGGER kala_change_runs_deleted AFTER DELETE ON runs BEGIN {_ADD} END",
    f"CREATE TRIGGER kala_change_runs_started AFTER UPDATE OF started_at ON runs "
    f"WHEN {OTHER_START} BEGIN {_ADD} END",
]
_TRIGGERS = (
    ("jobs", "kala_change_jobs"), ("jobs", "kala_change_jobs_added"),
    ("jobs", "kala_change_jobs_removed"), ("jobs", "kala_change_jobs_edited"),
    ("job_links", "kala_change_links"), ("job_links", "kala_change_links_added"),
    ("job_links", "kala_change_links_removed"), ("job_links", "kala_change_links_edited"),
    ("runs", "kala_change_runs_deleted"), ("runs", "kala_change_runs_started"),
)


def upgrade() -> None:
    """Made again if there (a development database): dropped first, then created."""
    postgresql = op.get_bind().dialect.name == "postgresql"
    for table, name in _TRIGGERS:
        op.execute(f"DROP TRIGGER IF EXISTS {name}" + (f" ON {table}" if postgresql else ""))
    for statement in _POSTGRESQL if postgresql else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("kala-celery's migrations go forward only: restore a backup")
