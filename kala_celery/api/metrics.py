"""Prometheus metrics read from SQL at scrape time, so every API process on every machine
gives the same figures.

A scrape is four small reads, whatever the size of the tables:

- metric_counts (MetricCount): totals kept by triggers in the transactions that change
  runs and jobs (migration 0002): runs per end state, the lateness histogram's buckets and
  sum, missed occurrences, occurrences dropped by overlap "skip" (migration 0003), jobs
  per state. Counting 10M runs or 1M jobs at scrape time costs
  100 ms to seconds; a counter table stays a few hundred rows, and its totals only grow
  (pruning old runs does not lower kala_runs_total, as Prometheus counters require).
- the open runs (pending, sent, started) through ix_runs_state;
- the beats and workers tables (one row per process).

Use it from your own Prometheus registry with
`REGISTRY.register(KalaCollector(engine, worker_timeout))`.
The Decisions cited are those of docs/design.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from sqlalchemy import Engine, func, select

from kala_celery.store.clock import now as db_now
from kala_celery.store.tables import Beat, MetricCount, Run, Worker

JOB_STATES = ("active", "disabled", "done")
ENDED = ("success", "failed", "lost", "skipped")
OPEN = ("pending", "sent", "started")
# Upper bounds (seconds) of kala_run_lateness_seconds; the triggers of migration 0002 file
# each scheduled run's start under one of them (their labels are repr(float(bound))).
LATENESS_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)

_COUNTS = select(
    MetricCount.series, MetricCount.label, func.sum(MetricCount.n), func.sum(MetricCount.total)
).where(MetricCount.series != "changes").group_by(MetricCount.series, MetricCount.label)
_OPEN = (
    select(Run.state, func.count())
    .where(Run.state.in_(OPEN))
    .group_by(Run.state)
)
_BEATS = select(Beat.name, Beat.last_tick)
_WORKERS = select(Worker.name, Worker.last_seen)


def _stamp(moment: datetime) -> float:
    return moment.timestamp()


class KalaCollector:
    """A prometheus_client collector: collect() reads the job store and yields the families."""

    def __init__(self, engine: Engine, worker_timeout: timedelta) -> None:
        self.engine = engine.execution_options(isolation_level="AUTOCOMMIT")  # reads only
        self.worker_timeout = worker_timeout

    def collect(self) -> Iterator[Metric]:
        with self.engine.connect() as conn:
            counts = conn.execute(_COUNTS).all()
            open_runs = dict(conn.execute(_OPEN).all())
            beats = conn.execute(_BEATS).all()
            workers = conn.execute(_WORKERS).all()
        now = db_now()
        series: dict[str, dict[str, tuple[float, float]]] = {}
        for name, label, n, total in counts:
            series.setdefault(name, {})[label] = (float(n or 0), float(total or 0))

        jobs = GaugeMetricFamily("kala_jobs", "Jobs by state (done: a schedule used up).",
                                 labels=["state"])
        for state in JOB_STATES:
            jobs.add_metric([state], series.get("jobs", {}).get(state, (0, 0))[0])
        yield jobs

        ended = CounterMetricFamily("kala_runs", "Runs that reached an end state.",
                                    labels=["state"])
        for state in ENDED:
            ended.add_metric([state], series.get("runs", {}).get(state, (0, 0))[0])
        yield ended

        waiting = GaugeMetricFamily(
            "kala_runs_open", "Runs not ended: pending (recorded), sent (on the broker), "
            "started (on a worker).", labels=["state"])
        for state in OPEN:
            waiting.add_metric([state], float(open_runs.get(state, 0)))
        yield waiting

        yield self._lateness(series.get("lateness", {}))

        missed = CounterMetricFamily(
            "kala_missed_occurrences", "Scheduled occurrences that got no run of their own "
            "(coalesced into a catch-up run, or skipped).")
        missed.add_metric([], series.get("missed", {}).get("", (0, 0))[0])
        yield missed

        skipped = CounterMetricFamily(
            "kala_overlap_skipped", "Scheduled occurrences of jobs with overlap \"skip\" that "
            "were dropped because a run of the job was in flight (Decision 21).")
        skipped.add_metric([], series.get("overlap_skipped", {}).get("", (0, 0))[0])
        yield skipped

        yield from self._liveness(
            "beat", "beats", beats, now,
            "kala_beat_last_tick_timestamp_seconds", "When each beat last swept (Unix time).")
        yield from self._liveness(
            "worker", "workers", workers, now,
            "kala_worker_last_seen_timestamp_seconds",
            "Each worker process's last heartbeat (Unix time); a process writes one from its "
            "first run on.")

    def _lateness(self, rows: dict[str, tuple[float, float]]) -> Metric:
        family = HistogramMetricFamily(
            "kala_run_lateness_seconds",
            "Scheduled runs: seconds from the occurrence being due to the run starting.")
        bounds = {repr(float(b)): float(b) for b in LATENESS_BUCKETS}
        for label in rows:
            if label != "+Inf":
                bounds.setdefault(label, float(label))
        cumulative, buckets = 0.0, []
        for label, _bound in sorted(bounds.items(), key=lambda item: item[1]):
            cumulative += rows.get(label, (0, 0))[0]
            buckets.append((label, cumulative))
        cumulative += rows.get("+Inf", (0, 0))[0]
        buckets.append(("+Inf", cumulative))
        family.add_metric([], buckets, sum_value=sum(total for _, total in rows.values()))
        return family

    def _liveness(self, kind: str, plural: str, rows: list, now: datetime, name: str,
                  doc: str) -> Iterator[Metric]:
        stamps = GaugeMetricFamily(name, doc, labels=[kind])
        alive = 0
        for process, seen in rows:
            stamps.add_metric([process], _stamp(seen))
            alive += seen >= now - self.worker_timeout
        yield stamps
        counted = GaugeMetricFamily(
            f"kala_{plural}", f"{plural.capitalize()} by liveness: alive when heard from within "
            "KALA_WORKER_TIMEOUT.", labels=["state"])
        counted.add_metric(["alive"], float(alive))
        counted.add_metric(["silent"], float(len(rows) - alive))
        yield counted


def registry_for(engine: Engine, worker_timeout: timedelta) -> CollectorRegistry:
    """A registry holding only kala's collector (no per-process Python metrics: with several
    API processes they would describe whichever process answered)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(KalaCollector(engine, worker_timeout))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
