"""The store's version (docs/design.md Decision 34): a number that grows with every committed
change a job document shows, kept by the same triggers as metric_counts (migrations 0002,
0003 and 0007), so an API process can tell that nothing changed since a client's last list
by reading a few rows, without reading a job.

It is the sum of the metric_counts series that only grow: runs that ended ("runs"),
scheduled runs that started ("lateness"), occurrences missed and skipped by the overlap
policy, and "changes" (a job added, removed or edited, a link, a run deleted, a run that is
not a scheduled one starting). Every change is counted in the transaction that makes it, so
a version read before a document's rows never labels a document older than itself.

On PostgreSQL each transaction counts its changes in a row of its own (label: its transaction
id), so no writer waits for another's count; the beat folds the committed rows into one
(`fold`). The sum is the same before and after a fold.
"""

from __future__ import annotations

from sqlalchemy import Connection, func, select, text
from sqlalchemy.orm import Session

from kala_celery.store.tables import MetricCount

GROWING = ("runs", "lateness", "missed", "overlap_skipped", "changes")
_VERSION = select(func.coalesce(func.sum(MetricCount.n), 0)).where(
    MetricCount.series.in_(GROWING))


def read(session: Session) -> int:
    """The store's version now."""
    return int(session.scalar(_VERSION) or 0)


_FOLD = text("""
    WITH gone AS (
        DELETE FROM metric_counts WHERE series = 'changes' AND label <> '' RETURNING n
    )
    INSERT INTO metric_counts (series, label, shard, n, total)
    SELECT 'changes', '', 0, sum(n), 0 FROM gone HAVING count(*) > 0
    ON CONFLICT (series, label, shard) DO UPDATE SET n = metric_counts.n + excluded.n
""")


def fold(conn: Connection) -> None:
    """Fold the committed per-transaction rows of "changes" into one (PostgreSQL; the beat's
    sweep): rows a transaction is still writing are not visible, so not waited for."""
    if conn.dialect.name == "postgresql":
        conn.execute(_FOLD)
