"""Fencing by attempt (Decision 28): superseded_attempts keeps the outcome of an attempt that
came after its run had moved on (its worker was cut off longer than KALA_WORKER_TIMEOUT).

The Decisions cited are those of docs/design.md.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Creates the table unless it is there (a development database made by create_all)."""
    if "superseded_attempts" in sa.inspect(op.get_bind()).get_table_names():
        return
    op.create_table(
        "superseded_attempts",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("run_id", sa.String(36), sa.ForeignKey("runs.id", ondelete="CASCADE"),
                  nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("worker", sa.Text(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=False), nullable=False),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("output", sa.Text(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_superseded_attempts_run_id", "superseded_attempts", ["run_id"])


def downgrade() -> None:
    op.drop_index("ix_superseded_attempts_run_id", table_name="superseded_attempts")
    op.drop_table("superseded_attempts")
