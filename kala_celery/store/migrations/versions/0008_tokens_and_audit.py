"""Who may do what (Decisions 31 and 32 of docs/design.md): api_tokens (named tokens
with scopes, their secrets' digests), audit_log (every change, written in the change's
transaction) and sign_in_failures (the dashboard's sign-in slowed down per address).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

ID_LENGTH = 128  # frozen copy of wire.limits.ID_LENGTH


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if "api_tokens" not in existing:
        op.create_table(
            "api_tokens",
            sa.Column("name", sa.String(100), primary_key=True),
            sa.Column("digest", sa.String(64), nullable=False, unique=True),
            sa.Column("scopes", sa.String(64), nullable=False),
            sa.Column("created_at", sa.DateTime(), nullable=False),
        )
    if "audit_log" not in existing:
        op.create_table(
            "audit_log",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("at", sa.DateTime(), nullable=False),
            sa.Column("token", sa.String(100), nullable=True),
            sa.Column("address", sa.String(300), nullable=True),
            sa.Column("via", sa.String(64), nullable=False),
            sa.Column("action", sa.String(32), nullable=False),
            sa.Column("job_id", sa.String(ID_LENGTH), nullable=True),
            sa.Column("job_name", sa.Text, nullable=True),
            sa.Column("changes", sa.JSON, nullable=False),
        )
        op.create_index("ix_audit_log_at", "audit_log", ["at"])
        op.create_index("ix_audit_log_job_id", "audit_log", ["job_id"])
    if "sign_in_failures" not in existing:
        op.create_table(
            "sign_in_failures",
            sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
            sa.Column("address", sa.String(300), nullable=False),
            sa.Column("at", sa.DateTime(), nullable=False),
        )
        op.create_index("ix_sign_in_failures_address", "sign_in_failures", ["address"])


def downgrade() -> None:
    op.drop_table("sign_in_failures")
    op.drop_table("audit_log")
    op.drop_table("api_tokens")
