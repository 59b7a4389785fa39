"""Celery-task jobs (Decision 19) and parents_mode (Decision 20): jobs.celery_task,
jobs.parents_mode, job_links.satisfied and runs.redeliveries.

The Decisions cited are those of docs/design.md.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


COLUMNS = (
    ("jobs", sa.Column("celery_task", sa.JSON(), nullable=True)),
    ("jobs", sa.Column("parents_mode", sa.String(8), nullable=True)),
    ("job_links", sa.Column("satisfied", sa.Boolean(), nullable=False,
                            server_default=sa.false())),
    ("runs", sa.Column("redeliveries", sa.Integer(), nullable=False,
                       server_default=sa.text("0"))),
)


def upgrade() -> None:
    """Plain ADD COLUMN (a batch table copy on SQLite would drop 0002's triggers), of the
    columns that are missing (a development database may have them already)."""
    inspector = sa.inspect(op.get_bind())
    for table, column in COLUMNS:
        if column.name not in {c["name"] for c in inspector.get_columns(table)}:
            op.add_column(table, column)


def downgrade() -> None:
    op.drop_column("runs", "redeliveries")
    op.drop_column("job_links", "satisfied")
    op.drop_column("jobs", "parents_mode")
    op.drop_column("jobs", "celery_task")
