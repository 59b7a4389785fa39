"""A run's UPDATE counted by one trigger on PostgreSQL, with no WHEN clause, writing its rows
itself. Every claim and every end of a run fired two: kala_count_runs_update (0002: the runs
that ended, the lateness of scheduled starts) and kala_change_runs_started (0007: the store
version's "changes" for a start that is not a scheduled one). Each had a WHEN clause, which
PostgreSQL reads back from its stored text and prepares at every statement, and each called
kala_count (0010), one more PL/pgSQL call for the upsert. kala_runs_changed makes the same
tests in PL/pgSQL and runs the upserts itself. Same rows, same sums; a run's claim and end
cost the database about 0.02-0.07 ms less (docs/design.md Decision 36).

The INSERT trigger on runs (the beat's batches: its WHEN is prepared once a statement) and
SQLite's triggers do not change.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

_UPSERT = ("ON CONFLICT (series, label, shard) DO UPDATE "
           "SET n = metric_counts.n + excluded.n, total = metric_counts.total + excluded.total")
_BUCKETS = ("0.05", "0.1", "0.25", "0.5", "1.0", "2.5", "5.0", "10.0", "30.0", "60.0",
            "300.0", "900.0", "3600.0")  # 0002's lateness buckets, in seconds
_BUCKET = ("CASE " + " ".join(f"WHEN late <= {b.removesuffix('.0')} THEN '{b}'" for b in _BUCKETS)
           + " ELSE '+Inf' END")

_FUNCTION = f"""
CREATE FUNCTION kala_runs_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    late double precision;
BEGIN
    IF NEW.state IN ('success', 'failed', 'lost', 'skipped')
       AND OLD.state IS DISTINCT FROM NEW.state THEN
        INSERT INTO metric_counts (series, label, shard, n, total)
        VALUES ('runs', NEW.state, hashtext(NEW.id) & 15, 1, 0) {_UPSERT};
    END IF;
    IF OLD.started_at IS NULL AND NEW.started_at IS NOT NULL THEN
        IF NEW.trigger = 'schedule' THEN
            late := GREATEST(0, EXTRACT(EPOCH FROM (NEW.started_at - NEW.scheduled_for)));
            INSERT INTO metric_counts (series, label, shard, n, total)
            VALUES ('lateness', {_BUCKET}, hashtext(NEW.id) & 15, 1, late) {_UPSERT};
        ELSIF NEW.trigger <> 'schedule' THEN
            -- the store version (0007): each transaction in a row of its own
            INSERT INTO metric_counts (series, label, shard, n, total)
            VALUES ('changes', txid_current()::text, 0, 1, 0) {_UPSERT};
        END IF;
    END IF;
    RETURN NULL;
END $$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(_FUNCTION)
    op.execute("DROP TRIGGER kala_count_runs_update ON runs")
    op.execute("DROP TRIGGER kala_change_runs_started ON runs")
    op.execute("CREATE TRIGGER kala_runs_changed AFTER UPDATE OF state, started_at ON runs "
               "FOR EACH ROW EXECUTE PROCEDURE kala_runs_changed()")


def downgrade() -> None:
    raise NotImplementedError("kala-celery's migrations go forward only: restore a backup")
