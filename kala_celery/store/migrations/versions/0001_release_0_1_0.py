"""The schema of kala-celery 0.1.0 (commit 71fd7ed): jobs, job_links and runs.

A database made by that release has no alembic_version table; kala_celery/store/schema.py treats
such a database as being at this revision.

Revision ID: 0001
Revises:
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _partial(where: str) -> dict[str, object]:
    return {"sqlite_where": sa.text(where), "postgresql_where": sa.text(where)}


def upgrade() -> None:
    text, big, flag = sa.Text(), sa.BigInteger(), sa.Boolean()
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(128), primary_key=True),
        sa.Column("name", text, nullable=False),
        sa.Column("command", text, nullable=False),
        sa.Column("owner", text, nullable=False),
        sa.Column("disabled", flag, nullable=False),
        sa.Column("on_failure_job", text, nullable=False),
        sa.Column("schedule", text, nullable=False),
        sa.Column("retries", big, nullable=False),
        sa.Column("epsilon", text, nullable=False),
        sa.Column("template_delimiters", text, nullable=False),
        sa.Column("resume_at_next_scheduled_time", flag, nullable=False),
        sa.Column("job_type", sa.Integer(), nullable=False),
        sa.Column("remote_url", text, nullable=False),
        sa.Column("remote_method", text, nullable=False),
        sa.Column("remote_body", text, nullable=False),
        sa.Column("remote_headers", sa.JSON(), nullable=True),
        sa.Column("remote_timeout", big, nullable=False),
        sa.Column("remote_expected_codes", sa.JSON(), nullable=True),
        sa.Column("success_count", big, nullable=False),
        sa.Column("last_success", sa.DateTime(), nullable=True),
        sa.Column("error_count", big, nullable=False),
        sa.Column("last_error", sa.DateTime(), nullable=True),
        sa.Column("last_attempted_run", sa.DateTime(), nullable=True),
        sa.Column("number_of_finished_runs", big, nullable=False),
        sa.Column("is_done", flag, nullable=False),
        sa.Column("next_run_at", sa.DateTime(), nullable=True),
        sa.Column("runs_used", big, nullable=False),
        sa.Column("timezone", sa.String(64), nullable=True),
        sa.Column("retry_delay", sa.String(64), nullable=True),
        sa.Column("retry_backoff", flag, nullable=False),
        sa.Column("run_timeout", sa.String(64), nullable=True),
        sa.Column("allow_overlap", flag, nullable=False),
        sa.Column("queue", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_jobs_due", "jobs", ["next_run_at"],
                    **_partial("next_run_at IS NOT NULL"))
    op.create_index("ix_jobs_unarmed", "jobs", ["id"],
                    **_partial("next_run_at IS NULL AND NOT disabled AND NOT is_done"))

    op.create_table(
        "job_links",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("parent_id", sa.String(128),
                  sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("child_id", sa.String(128),
                  sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.UniqueConstraint("parent_id", "child_id", name="uq_job_links_edge"),
    )
    op.create_index("ix_job_links_parent_id", "job_links", ["parent_id"])
    op.create_index("ix_job_links_child_id", "job_links", ["child_id"])

    op.create_table(
        "runs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("job_id", sa.String(128),
                  sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("scheduled_for", sa.DateTime(), nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("parent_run_id", sa.String(36), nullable=True),
        sa.Column("root_run_id", sa.String(36), nullable=True),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("worker", text, nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("attempt_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("duration_ns", big, nullable=True),
        sa.Column("exit_code", sa.Integer(), nullable=True),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("output", text, nullable=True),
        sa.Column("error", text, nullable=True),
    )
    op.create_index("ix_runs_root_run_id", "runs", ["root_run_id"])
    op.create_index("ix_runs_job_created", "runs", ["job_id", "created_at"])
    op.create_index("ix_runs_state", "runs", ["state", "created_at"])
    op.create_index("uq_runs_scheduled_occurrence", "runs", ["job_id", "scheduled_for"],
                    unique=True, **_partial("trigger = 'schedule'"))


def downgrade() -> None:
    for table in ("runs", "job_links", "jobs"):
        op.drop_table(table)
