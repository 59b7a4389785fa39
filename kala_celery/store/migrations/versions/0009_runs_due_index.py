"""The dashboard's charts (issue 28): ix_runs_due on runs (scheduled_for, state, trigger,
started_at, job_id), so the aggregates over the last 24 h (kala_celery/store/activity.py) read
a range of one index, every column they group by in it, instead of the whole runs table.

On PostgreSQL the build holds a write lock on runs while it reads them (a few seconds per
million runs); `kala-celery db upgrade` runs it before the new version starts.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

NAME = "ix_runs_due"
COLUMNS = ["scheduled_for", "state", "trigger", "started_at", "job_id"]


def upgrade() -> None:
    """Create the index unless a development database has it already."""
    if NAME not in {ix["name"] for ix in sa.inspect(op.get_bind()).get_indexes("runs")}:
        op.create_index(NAME, "runs", COLUMNS)


def downgrade() -> None:
    op.drop_index(NAME, table_name="runs")
