"""SQLAlchemy tables: jobs, job_links (parent -> child, ordered), runs, the workers' and
beats' liveness rows, metric_counts (kept by triggers, read by /metrics), and who may do
what: api_tokens, audit_log and sign_in_failures (Decisions 31 and 32, migration 0007).

Times are stored as naive UTC (portable between SQLite and PostgreSQL) and read back as
aware UTC datetimes.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Double,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from kala_celery.wire.limits import ID_LENGTH


def utcnow() -> datetime:
    """Now, as the aware UTC datetime every column holds."""
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Aware UTC datetimes in, aware UTC datetimes out; naive UTC in the column."""

    impl = DateTime(timezone=False)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: object) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is not None:
            value = value.astimezone(UTC).replace(tzinfo=None)
        return value

    def process_result_value(self, value: datetime | None, dialect: object) -> datetime | None:
        return None if value is None else value.replace(tzinfo=UTC)


class Base(DeclarativeBase):
    pass


UNARMED = "next_run_at IS NULL AND NOT disabled AND NOT is_done"
JOB_LOCAL = 0
JOB_REMOTE = 1
JOB_CELERY_TASK = 2  # Decision 19: runs a task of the worker's Celery app by name
PARENTS_ALL = "all"  # Decision 20: parents_mode of a child that waits for all its parents
SOURCE_CONFIG = "config"  # Decision 30: a job made from a Celery app's beat_schedule
SOURCE_APPLY = "apply"  # Decision 30: a job made by `kala-celery apply`


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)
    name: Mapped[str] = mapped_column(Text, default="")
    command: Mapped[str] = mapped_column(Text, default="")
    owner: Mapped[str] = mapped_column(Text, default="")
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    on_failure_job: Mapped[str] = mapped_column(Text, default="")
    schedule: Mapped[str] = mapped_column(Text, default="")
    retries: Mapped[int] = mapped_column(BigInteger, default=0)
    epsilon: Mapped[str] = mapped_column(Text, default="")
    template_delimiters: Mapped[str] = mapped_column(Text, default="")
    resume_at_next_scheduled_time: Mapped[bool] = mapped_column(Boolean, default=False)
    job_type: Mapped[int] = mapped_column(Integer, default=JOB_LOCAL)

    remote_url: Mapped[str] = mapped_column(Text, default="")
    remote_method: Mapped[str] = mapped_column(Text, default="")
    remote_body: Mapped[str] = mapped_column(Text, default="")
    remote_headers: Mapped[dict[str, list[str]] | None] = mapped_column(JSON, nullable=True)
    remote_timeout: Mapped[int] = mapped_column(BigInteger, default=0)
    remote_expected_codes: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)

    # Kala's metadata counters, updated in SQL (never read-modify-write in Python).
    success_count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_success: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    error_count: Mapped[int] = mapped_column(BigInteger, default=0)
    last_error: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    last_attempted_run: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    number_of_finished_runs: Mapped[int] = mapped_column(BigInteger, default=0)
    is_done: Mapped[bool] = mapped_column(Boolean, default=False)

    # Scheduling state: the next occurrence to fire (NULL when nothing is due: disabled,
    # done, one-off or child) and how many of the schedule's runs are used (docs/design.md
    # Decision 4).
    next_run_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    runs_used: Mapped[int] = mapped_column(BigInteger, default=0)
    # Occurrences that did not get a run of their own: coalesced into a catch-up run, or
    # skipped by resume_at_next_scheduled_time (docs/design.md Decision 5), after an outage or
    # a long run.
    missed_occurrences: Mapped[int] = mapped_column(BigInteger, default=0)

    # Extensions (Decisions 3, 6, 7, 11, 17, 18, 21 in docs/design.md).
    timezone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    retry_delay: Mapped[str | None] = mapped_column(String(64), nullable=True)
    retry_backoff: Mapped[bool] = mapped_column(Boolean, default=False)
    run_timeout: Mapped[str | None] = mapped_column(String(64), nullable=True)
    allow_overlap: Mapped[bool] = mapped_column(Boolean, default=False)
    queue: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # Decision 18: a cron expression instead of `schedule` (NULL: none).
    cron: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Decision 21: "skip" or "allow" (NULL: buffer, Decision 6); allow_overlap is true exactly
    # when this is "allow" (the older key, kept as an alias).
    overlap: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # Occurrences dropped by overlap "skip" because a run was in flight (kala_overlap_skipped).
    overlap_skipped: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # Decision 19: {"name": ..., "args": [...], "kwargs": {...}} of a type 2 job.
    celery_task: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    # Decision 20: NULL (Kala's: after any parent's success) or "all".
    parents_mode: Mapped[str | None] = mapped_column(String(8), nullable=True)
    # Decision 30: "config" (made by a beat from the Celery app's beat_schedule), "apply"
    # (made by `kala-celery apply`), NULL (the API's).
    source: Mapped[str | None] = mapped_column(String(16), nullable=True)

    created_at: Mapped[datetime] = mapped_column(UTCDateTime)

    __table_args__ = (
        Index(
            "ix_jobs_due",
            "next_run_at",
            sqlite_where=text("next_run_at IS NOT NULL"),
            postgresql_where=text("next_run_at IS NOT NULL"),
        ),
        # Enabled jobs with nothing scheduled and not done: one-offs and children before
        # their run, and rows written outside the API that the beat's sweep re-arms.
        Index(
            "ix_jobs_unarmed",
            "id",
            sqlite_where=text(UNARMED),
            postgresql_where=text(UNARMED),
        ),
    )


class JobLink(Base):
    """A parent -> child edge; `position` orders a parent's children (Kala's FIFO)."""

    __tablename__ = "job_links"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    parent_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    child_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("jobs.id", ondelete="CASCADE"), index=True
    )
    position: Mapped[int] = mapped_column(Integer)
    # Decision 20: the parent has succeeded since the child's last run (parents_mode "all").
    satisfied: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (UniqueConstraint("parent_id", "child_id", name="uq_job_links_edge"),)


RUN_STATES = ("pending", "sent", "started", "success", "failed", "skipped", "lost")
TERMINAL_STATES = frozenset({"success", "failed", "skipped", "lost"})
TRIGGERS = ("schedule", "manual", "parent", "on_failure")


class Run(Base):
    """One run of a job (Kala's "stat", NextKala's "execution"); id = the Celery task id."""

    __tablename__ = "runs"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(
        String(ID_LENGTH), ForeignKey("jobs.id", ondelete="CASCADE")
    )
    scheduled_for: Mapped[datetime] = mapped_column(UTCDateTime)
    trigger: Mapped[str] = mapped_column(String(16))
    parent_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # A dependent run belongs to the tree dispatched with its root run; `seq` is its place in
    # that tree's depth-first order (the order of the Celery chain).
    root_run_id: Mapped[str | None] = mapped_column(String(36), nullable=True, index=True)
    seq: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)  # latest
    # When the run's latest message went to the broker (a retry's: when it falls due). A run
    # still `sent` long after it is published again (runs.redeliverable): its message was lost.
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    duration_ns: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Times the sweep published the run again because no worker took it (Decision 19 bounds
    # it for Celery-task jobs).
    redeliveries: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))

    __table_args__ = (
        Index("ix_runs_job_created", "job_id", "created_at"),
        Index("ix_runs_state", "state", "created_at"),
        # The dashboard's charts (store/activity.py): the runs due in a window, with every
        # column their GROUP BY reads (migration 0008).
        Index("ix_runs_due", "scheduled_for", "state", "trigger", "started_at", "job_id"),
        # The last guard against a scheduled occurrence being dispatched twice.
        Index(
            "uq_runs_scheduled_occurrence",
            "job_id",
            "scheduled_for",
            unique=True,
            sqlite_where=text("trigger = 'schedule'"),
            postgresql_where=text("trigger = 'schedule'"),
        ),
    )


class SupersededAttempt(Base):
    """An attempt whose outcome came after its run had moved on (docs/design.md Decision 28):
    its worker was cut off from the database for longer than KALA_WORKER_TIMEOUT, the sweep
    took the run back, and another attempt (or the sweep's verdict) is the run's state now.
    The late outcome is kept here, on the attempt it belongs to, never on the run."""

    __tablename__ = "superseded_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("runs.id", ondelete="CASCADE"), index=True
    )
    attempt: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(16))  # what the attempt would have recorded
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    exit_code: Mapped[int | None] = mapped_column(Integer, nullable=True)
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    output: Mapped[str | None] = mapped_column(Text, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)


class Worker(Base):
    """A worker process's heartbeat: `name` is what its runs carry in `runs.worker`
    (`<celery hostname>/<pid>`), `running` the ids of the runs it is executing (space
    separated) when it wrote `last_seen`. The beat's sweep takes a started run from a
    worker that is silent, or alive but no longer running it (runs.orphaned)."""

    __tablename__ = "workers"

    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    running: Mapped[str] = mapped_column(Text, default="")


class Beat(Base):
    """A beat process's liveness: `last_tick` is written by its sweep (every few seconds)."""

    __tablename__ = "beats"

    name: Mapped[str] = mapped_column(String(300), primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    last_tick: Mapped[datetime] = mapped_column(UTCDateTime)


class MetricCount(Base):
    """Totals for /metrics (kala_celery/api/metrics.py), kept by triggers on `runs` and `jobs`
    (migration 0002) in the transaction that changes the row, so every process and machine
    sees the same figures and a scrape reads a few hundred rows whatever the size of the
    tables. `series`: "runs" (runs that reached the end state `label`), "lateness" (scheduled
    runs that started within the bucket `label` seconds of being due; `total` sums the
    seconds), "missed" (occurrences coalesced or skipped), "overlap_skipped" (occurrences
    dropped by overlap "skip", migration 0003), "jobs" (jobs now in state
    `label`). On PostgreSQL a series is spread over 16 `shard` rows (by a hash of the row's
    id), so concurrent transactions rarely wait on the same row."""

    __tablename__ = "metric_counts"

    series: Mapped[str] = mapped_column(String(32), primary_key=True)
    label: Mapped[str] = mapped_column(String(32), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[float] = mapped_column(Double, default=0.0)


class ApiToken(Base):
    """A named API token (Decision 31): `digest` is the SHA-256 of its secret (the secret is
    shown once, never stored), `scopes` a comma-separated subset of read, run, write, admin."""

    __tablename__ = "api_tokens"

    name: Mapped[str] = mapped_column(String(100), primary_key=True)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    scopes: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)


class AuditEntry(Base):
    """One change (Decision 32), written in the transaction of the change: when, by which
    token (its name; NULL when no token is configured), from where, through what (`via`:
    api, webui, or the command), the action, the job, and `changes` ({field: [before,
    after]})."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    token: Mapped[str | None] = mapped_column(String(100), nullable=True)
    address: Mapped[str | None] = mapped_column(String(300), nullable=True)
    via: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True, index=True)
    job_name: Mapped[str | None] = mapped_column(Text, nullable=True)
    changes: Mapped[dict] = mapped_column(JSON)


class SignInFailure(Base):
    """A wrong token given to the dashboard's sign-in page, by address: what slows the next
    tries down in every API process (web/auth.py)."""

    __tablename__ = "sign_in_failures"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    address: Mapped[str] = mapped_column(String(300), index=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime)
