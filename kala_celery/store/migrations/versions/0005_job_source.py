"""Jobs from code (Decision 30): jobs.source, "config" for a job a kala beat made from a
Celery app's beat_schedule, "apply" for one `kala-celery apply` made, NULL for the API's.

The Decisions cited are those of docs/design.md.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


COLUMNS = (("jobs", sa.Column("source", sa.String(16), nullable=True)),)


def upgrade() -> None:
    """Plain ADD COLUMN (a batch table copy on SQLite would drop 0002's triggers), of the
    columns that are missing (a development database may have them already)."""
    inspector = sa.inspect(op.get_bind())
    for table, column in COLUMNS:
        if column.name not in {c["name"] for c in inspector.get_columns(table)}:
            op.add_column(table, column)


def downgrade() -> None:
    op.drop_column("jobs", "source")
