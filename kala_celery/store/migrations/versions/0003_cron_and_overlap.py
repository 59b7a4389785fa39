"""Cron schedules and the overlap policy (Decisions 18 and 21): jobs.cron, jobs.overlap,
jobs.overlap_skipped, and the triggers that add a rise of overlap_skipped to
("overlap_skipped", "") in metric_counts (read by /metrics as kala_overlap_skipped_total).

Jobs with allow_overlap get overlap = 'allow' (allow_overlap stays, as its alias). Each step
checks what is there, like 0002, so a database made by create_all of a development version
is upgraded as well.

The Decisions cited are those of docs/design.md.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

SHARDS = 16  # as 0002
UPSERT_TAIL = (
    " ON CONFLICT (series, label, shard) DO UPDATE"
    " SET n = metric_counts.n + excluded.n, total = metric_counts.total + excluded.total"
)
_RISE = "NEW.overlap_skipped - OLD.overlap_skipped"

_POSTGRESQL = [
    "DROP TRIGGER IF EXISTS kala_count_jobs_overlap ON jobs",
    f"""CREATE OR REPLACE FUNCTION kala_count_jobs_overlap() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM kala_count('overlap_skipped', '', hashtext(NEW.id) & {SHARDS - 1}, {_RISE}, 0);
        RETURN NULL;
    END $$""",
    "CREATE TRIGGER kala_count_jobs_overlap AFTER UPDATE OF overlap_skipped ON jobs FOR EACH "
    "ROW WHEN (NEW.overlap_skipped > OLD.overlap_skipped) "
    "EXECUTE PROCEDURE kala_count_jobs_overlap()",
]
_SQLITE = [
    "DROP TRIGGER IF EXISTS kala_count_jobs_overlap",
    "CREATE TRIGGER kala_count_jobs_overlap AFTER UPDATE OF overlap_skipped ON jobs "
    "WHEN NEW.overlap_skipped > OLD.overlap_skipped BEGIN "
    "INSERT INTO metric_counts (series, label, shard, n, total) "
    f"SELECT 'overlap_skipped', '', 0, {_RISE}, 0 WHERE 1{UPSERT_TAIL}; END",
]


def upgrade() -> None:
    bind = op.get_bind()
    columns = {c["name"] for c in sa.inspect(bind).get_columns("jobs")}
    if "cron" not in columns:
        op.add_column("jobs", sa.Column("cron", sa.Text(), nullable=True))
    if "overlap" not in columns:
        op.add_column("jobs", sa.Column("overlap", sa.String(16), nullable=True))
    if "overlap_skipped" not in columns:
        op.add_column("jobs", sa.Column("overlap_skipped", sa.BigInteger(), nullable=False,
                                        server_default="0"))
    op.execute("UPDATE jobs SET overlap = 'allow' WHERE allow_overlap AND overlap IS NULL")
    for statement in _POSTGRESQL if bind.dialect.name == "postgresql" else _SQLITE:
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("kala-celery's migrations go forward only: restore a backup")
