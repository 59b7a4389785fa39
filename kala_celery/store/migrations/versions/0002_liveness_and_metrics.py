"""After 0.1.0: runs.sent_at, jobs.missed_occurrences, the workers and beats liveness tables,
and metric_counts with the triggers that keep it (read by /metrics).

metric_counts is seeded from the rows present (the runs still kept, KALA_RUN_RETENTION) and
from then on kept by triggers, in the transaction that changes a run or a job:

- runs: a run entering an end state (success, failed, lost, skipped) adds 1 to
  ("runs", state); a scheduled run's first start adds 1 to ("lateness", <bucket>) and its
  lateness (started_at - scheduled_for, seconds) to that row's `total`.
- jobs: a job added, removed, or moved between active / disabled / done moves the
  ("jobs", state) gauges; a rise of missed_occurrences adds the rise to ("missed", "").

PostgreSQL spreads each series over 16 shards (hashtext(id) & 15) so concurrent writers
rarely wait for the same row; SQLite (one writer at a time) uses shard 0.

Each step checks what is there, so a database made by a development version between 0.1.0
and this migration (which already has some of these) is upgraded as well.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Frozen copies: a later change of the triggers is a new migration.
ENDED = ("success", "failed", "lost", "skipped")
BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
SHARDS = 16


def _ended(row: str) -> str:
    return f"{row}.state IN ({', '.join(repr(s) for s in ENDED)})"


def _job_state(row: str) -> str:
    return (f"CASE WHEN {row}.is_done THEN 'done' WHEN {row}.disabled THEN 'disabled' "
            "ELSE 'active' END")


def _bucket(late: str) -> str:
    whens = " ".join(f"WHEN {late} <= {b} THEN '{_label(b)}'" for b in BUCKETS)
    return f"CASE {whens} ELSE '+Inf' END"


def _label(bound: float) -> str:
    return repr(float(bound))


def _lateness(row: str, dialect: str) -> str:
    if dialect == "postgresql":
        return f"GREATEST(0, EXTRACT(EPOCH FROM ({row}.started_at - {row}.scheduled_for)))"
    return f"MAX(0, (julianday({row}.started_at) - julianday({row}.scheduled_for)) * 86400.0)"


def _shard(row: str, dialect: str) -> str:
    return f"(hashtext({row}.id) & {SHARDS - 1})" if dialect == "postgresql" else "0"


UPSERT_TAIL = (
    " ON CONFLICT (series, label, shard) DO UPDATE"
    " SET n = metric_counts.n + excluded.n, total = metric_counts.total + excluded.total"
)


def _seed(dialect: str) -> list[str]:
    shard_j, shard_r = _shard("jobs", dialect), _shard("runs", dialect)
    late = _lateness("runs", dialect)
    insert = "INSERT INTO metric_counts (series, label, shard, n, total) "
    return [
        f"{insert}SELECT 'jobs', {_job_state('jobs')}, {shard_j}, count(*), 0 FROM jobs "
        "GROUP BY 2, 3",
        f"{insert}SELECT 'missed', '', {shard_j}, sum(missed_occurrences), 0 FROM jobs "
        "WHERE missed_occurrences > 0 GROUP BY 3",
        f"{insert}SELECT 'runs', state, {shard_r}, count(*), 0 FROM runs WHERE {_ended('runs')} "
        "GROUP BY 2, 3",
        f"{insert}SELECT 'lateness', bucket, shard, count(*), sum(late) FROM (SELECT "
        f"{_bucket(late)} AS bucket, {shard_r} AS shard, {late} AS late FROM runs "
        "WHERE runs.trigger = 'schedule' AND runs.started_at IS NOT NULL) AS s GROUP BY 2, 3",
    ]


def _postgresql_triggers() -> list[str]:
    late = _lateness("NEW", "postgresql")
    add = ("INSERT INTO metric_counts (series, label, shard, n, total) "
           "VALUES (s, l, sh, d, t)" + UPSERT_TAIL)
    return [
        "CREATE FUNCTION kala_count(s text, l text, sh integer, d bigint, t double precision) "
        f"RETURNS void LANGUAGE sql AS $$ {add} $$",
        f"""CREATE FUNCTION kala_count_runs() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            sh integer := {_shard("NEW", "postgresql")};
            late double precision;
        BEGIN
            IF {_ended("NEW")} AND (TG_OP = 'INSERT' OR OLD.state IS DISTINCT FROM NEW.state)
            THEN
                PERFORM kala_count('runs', NEW.state, sh, 1, 0);
            END IF;
            IF NEW.trigger = 'schedule' AND NEW.started_at IS NOT NULL
               AND (TG_OP = 'INSERT' OR OLD.started_at IS NULL) THEN
                late := {late};
                PERFORM kala_count('lateness', {_bucket("late")}, sh, 1, late);
            END IF;
            RETURN NULL;
        END $$""",
        # Added and removed jobs: one upsert per (state, shard) per statement, from the
        # statement's transition table (a bulk insert or DELETE of every job would otherwise
        # update the same 16 rows once per job in one transaction: quadratic).
        f"""CREATE FUNCTION kala_count_jobs_rows() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP = 'INSERT' THEN
                INSERT INTO metric_counts (series, label, shard, n, total)
                SELECT 'jobs', {_job_state("j")}, {_shard("j", "postgresql")}, count(*), 0
                FROM new_rows AS j GROUP BY 2, 3 ORDER BY 2, 3{UPSERT_TAIL};
                INSERT INTO metric_counts (series, label, shard, n, total)
                SELECT 'missed', '', {_shard("j", "postgresql")}, sum(j.missed_occurrences), 0
                FROM new_rows AS j WHERE j.missed_occurrences > 0 GROUP BY 3
                ORDER BY 3{UPSERT_TAIL};
            ELSE
                INSERT INTO metric_counts (series, label, shard, n, total)
                SELECT 'jobs', {_job_state("j")}, {_shard("j", "postgresql")}, -count(*), 0
                FROM old_rows AS j GROUP BY 2, 3 ORDER BY 2, 3{UPSERT_TAIL};
            END IF;
            RETURN NULL;
        END $$""",
        # A job that changes state, or misses occurrences: per row (updates are one job each,
        # or the beat's claim batches), skipped by the WHEN clause when nothing counted changed.
        f"""CREATE FUNCTION kala_count_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
        DECLARE
            sh integer := {_shard("NEW", "postgresql")};
            was text := {_job_state("OLD")};
            now_ text := {_job_state("NEW")};
        BEGIN
            IF was IS DISTINCT FROM now_ THEN
                -- two rows in label order: two transactions never wait for each other's
                IF was IS NOT NULL AND (now_ IS NULL OR was < now_) THEN
                    PERFORM kala_count('jobs', was, sh, -1, 0);
                    was := NULL;
                END IF;
                IF now_ IS NOT NULL THEN
                    PERFORM kala_count('jobs', now_, sh, 1, 0);
                END IF;
                IF was IS NOT NULL THEN
                    PERFORM kala_count('jobs', was, sh, -1, 0);
                END IF;
            END IF;
            IF NEW.missed_occurrences > OLD.missed_occurrences THEN
                PERFORM kala_count('missed', '', sh,
                                   NEW.missed_occurrences - OLD.missed_occurrences, 0);
            END IF;
            RETURN NULL;
        END $$""",
        "CREATE TRIGGER kala_count_runs_insert AFTER INSERT ON runs FOR EACH ROW "
        f"WHEN ({_ended('NEW')} OR (NEW.trigger = 'schedule' AND NEW.started_at IS NOT NULL)) "
        "EXECUTE PROCEDURE kala_count_runs()",
        "CREATE TRIGGER kala_count_runs_update AFTER UPDATE OF state, started_at ON runs "
        f"FOR EACH ROW WHEN (({_ended('NEW')} AND OLD.state IS DISTINCT FROM NEW.state) OR "
        "(NEW.trigger = 'schedule' AND OLD.started_at IS NULL AND NEW.started_at IS NOT NULL))"
        " EXECUTE PROCEDURE kala_count_runs()",
        "CREATE TRIGGER kala_count_jobs_insert AFTER INSERT ON jobs REFERENCING NEW TABLE AS "
        "new_rows FOR EACH STATEMENT EXECUTE PROCEDURE kala_count_jobs_rows()",
        "CREATE TRIGGER kala_count_jobs_delete AFTER DELETE ON jobs REFERENCING OLD TABLE AS "
        "old_rows FOR EACH STATEMENT EXECUTE PROCEDURE kala_count_jobs_rows()",
        "CREATE TRIGGER kala_count_jobs_update AFTER UPDATE OF disabled, is_done, "
        "missed_occurrences ON jobs FOR EACH ROW WHEN (OLD.disabled IS DISTINCT FROM "
        "NEW.disabled OR OLD.is_done IS DISTINCT FROM NEW.is_done OR "
        "NEW.missed_occurrences > OLD.missed_occurrences) EXECUTE PROCEDURE kala_count_jobs()",
    ]


def _sqlite_add(series: str, label: str, n: str, total: str, where: str) -> str:
    return (f"INSERT INTO metric_counts (series, label, shard, n, total) "
            f"SELECT {series}, {label}, 0, {n}, {total} WHERE {where}{UPSERT_TAIL};")


def _sqlite_triggers() -> list[str]:
    late = _lateness("NEW", "sqlite")
    lateness = _sqlite_add("'lateness'", _bucket(late), "1", late,
                           "NEW.trigger = 'schedule' AND NEW.started_at IS NOT NULL")
    state_new, state_old = _job_state("NEW"), _job_state("OLD")
    return [
        "CREATE TRIGGER kala_count_runs_insert AFTER INSERT ON runs BEGIN "
        + _sqlite_add("'runs'", "NEW.state", "1", "0", _ended("NEW")) + " "
        + lateness + " END",
        "CREATE TRIGGER kala_count_runs_ended AFTER UPDATE OF state ON runs "
        f"WHEN {_ended('NEW')} AND OLD.state IS NOT NEW.state BEGIN "
        + _sqlite_add("'runs'", "NEW.state", "1", "0", "1") + " END",
        "CREATE TRIGGER kala_count_runs_started AFTER UPDATE OF started_at ON runs "
        "WHEN OLD.started_at IS NULL BEGIN " + lateness + " END",
        "CREATE TRIGGER kala_count_jobs_insert AFTER INSERT ON jobs BEGIN "
        + _sqlite_add("'jobs'", state_new, "1", "0", "1") + " "
        + _sqlite_add("'missed'", "''", "NEW.missed_occurrences", "0",
                      "NEW.missed_occurrences > 0") + " END",
        "CREATE TRIGGER kala_count_jobs_delete AFTER DELETE ON jobs BEGIN "
        + _sqlite_add("'jobs'", state_old, "-1", "0", "1") + " END",
        "CREATE TRIGGER kala_count_jobs_state AFTER UPDATE OF disabled, is_done ON jobs "
        f"WHEN ({state_old}) IS NOT ({state_new}) BEGIN "
        + _sqlite_add("'jobs'", state_old, "-1", "0", "1") + " "
        + _sqlite_add("'jobs'", state_new, "1", "0", "1") + " END",
        "CREATE TRIGGER kala_count_jobs_missed AFTER UPDATE OF missed_occurrences ON jobs "
        "WHEN NEW.missed_occurrences > OLD.missed_occurrences BEGIN "
        + _sqlite_add("'missed'", "''", "NEW.missed_occurrences - OLD.missed_occurrences", "0",
                      "1") + " END",
    ]


def upgrade() -> None:
    bind = op.get_bind()
    dialect = bind.dialect.name
    inspector = sa.inspect(bind)
    tables = set(inspector.get_table_names())
    if dialect == "postgresql":  # no write between the seed and the triggers
        op.execute("LOCK TABLE jobs, runs IN SHARE ROW EXCLUSIVE MODE")

    if "sent_at" not in {c["name"] for c in inspector.get_columns("runs")}:
        op.add_column("runs", sa.Column("sent_at", sa.DateTime(), nullable=True))
    if "missed_occurrences" not in {c["name"] for c in inspector.get_columns("jobs")}:
        op.add_column("jobs", sa.Column("missed_occurrences", sa.BigInteger(), nullable=False,
                                        server_default="0"))
    if "workers" not in tables:
        op.create_table(
            "workers",
            sa.Column("name", sa.String(300), primary_key=True),
            sa.Column("started_at", sa.DateTime(), nullable=False),
            sa.Column("last_seen", sa.DateTime(), nullable=False),
            sa.Column("running", sa.Text(), nullable=False),
        )
    if "beats" not in tables:
        op.create_table(
            "beats",
            sa.Column("name", sa.String(300), primary_key=True),
            sa.Column("started_at", sa.DateTime(), nullable=False),
            sa.Column("last_tick", sa.DateTime(), nullable=False),
        )
    if "metric_counts" in tables:  # made by create_all: triggers and seed again
        op.drop_table("metric_counts")
    op.create_table(
        "metric_counts",
        sa.Column("series", sa.String(32), primary_key=True),
        sa.Column("label", sa.String(32), primary_key=True),
        sa.Column("shard", sa.Integer(), primary_key=True, autoincrement=False),
        sa.Column("n", sa.BigInteger(), nullable=False),
        sa.Column("total", sa.Double(), nullable=False),
    )
    for statement in _seed(dialect):
        op.execute(statement)
    for statement in _postgresql_triggers() if dialect == "postgresql" else _sqlite_triggers():
        op.execute(statement)


def downgrade() -> None:
    raise NotImplementedError("kala-celery's migrations go forward only: restore a backup")
