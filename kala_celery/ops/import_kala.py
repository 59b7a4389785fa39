"""`kala-celery import`: the jobs of a running Kala or NextKala (or a saved
`GET /api/v1/job/` body) written into our job store (docs/design.md, "Importing from Kala").

Every job goes through `jobs.import_job`, the create path's own checks, so what the API
refuses the import refuses too, and says which Decision refuses it. Parents come before their
dependents; ids, Kala fields, metadata counters, links and Kala's per-run stats (as finished
runs) are kept; the schedule keeps its anchor and the job its progress (`progress`). A job
already here is left alone, so a second import adds nothing. Nothing is run or published:
the beat picks the jobs up.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy.orm import Session, sessionmaker

from kala_celery import schedule, wire
from kala_celery.ops import import_table
from kala_celery.ops.import_table import (
    HERE,
    IMPORTED,
    PLANNED,
    REFUSED,
    Outcome,
    Progress,
    SourceError,
    as_dry_run,
    cite,
    decision_for,
    ids_here,
    in_batches,
    refusal,
    table,
    write_one,
)
from kala_celery.schedule import cron, occurrences
from kala_celery.store import jobs

# The report's pieces, shared with the other imports (ops/import_table.py), kept by name here.
__all__ = ["HERE", "IMPORTED", "PLANNED", "REFUSED", "Outcome", "Progress", "SourceError",
           "decision_for", "import_jobs", "parse_listing", "progress", "read_file", "read_url",
           "table"]


# ---------------------------------------------------------------- reading


def read_url(url: str, timeout: float = 30.0) -> bytes:
    """`GET <url>/api/v1/job/` of a running Kala or NextKala (`url` with or without
    `/api/v1`)."""
    base = url.rstrip("/")
    if not base.endswith("/api/v1"):
        base += "/api/v1"
    try:
        response = httpx.get(f"{base}/job/", timeout=timeout, follow_redirects=True)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise SourceError(f"cannot read {base}/job/: {exc}") from None
    if response.status_code != 200:
        raise SourceError(
            f"{base}/job/ answered {response.status_code}: {response.text[:200]!r}"
        )
    return response.content


def read_file(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror}") from None


def parse_listing(body: bytes) -> tuple[dict[str, dict[str, Any]], list[Outcome]]:
    """A `{"jobs": {id: job}}` body as jobs decoded like the API decodes a job body
    (`wire.decode_job`), by id, and the refusals of entries that do not decode."""
    try:
        listing = json.loads(body)
    except ValueError as exc:
        raise SourceError(f"not JSON: {exc}") from None
    entries = listing.get("jobs") if isinstance(listing, dict) else None
    if entries is None and isinstance(listing, dict) and "jobs" in listing:
        entries = {}  # NextKala answers {"jobs": null} when it has none
    if not isinstance(entries, dict):
        raise SourceError('not a Kala job listing: expected {"jobs": {"<id>": {...}}}')
    decoded: dict[str, dict[str, Any]] = {}
    refused: list[Outcome] = []
    for key, entry in entries.items():
        name = entry.get("name", "") if isinstance(entry, dict) else ""
        try:
            data = wire.decode_job(json.dumps(entry).encode())
        except wire.WireError as exc:
            refused.append(Outcome(key, str(name), REFUSED, f"{exc} ({cite(23)})"))
            continue
        data["id"] = data.get("id") or key
        decoded[data["id"]] = data
    return decoded, refused


# ---------------------------------------------------------------- the plan


def parents_of(jobs_by_id: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Each job's parents: those it names in `parent_jobs`, then the jobs that list it in
    `dependent_jobs` (what Kala runs it after), each once. Unknown ids stay, so the create
    path refuses them (docs/design.md Decision 9)."""
    parents: dict[str, list[str]] = {job_id: [] for job_id in jobs_by_id}
    for job_id, data in jobs_by_id.items():
        parents[job_id] += data.get("parent_jobs") or []
    for job_id, data in jobs_by_id.items():
        for child in data.get("dependent_jobs") or []:
            if child in parents:
                parents[child].append(job_id)
    return {job_id: list(dict.fromkeys(ids)) for job_id, ids in parents.items()}


def order(jobs_by_id: dict[str, dict[str, Any]],
          parents: dict[str, list[str]]) -> tuple[list[str], set[str]]:
    """The import order: every job after its parents, and otherwise in Kala's run order (depth
    first along `dependent_jobs`), so each parent's children keep Kala's order. Returns the
    order and the jobs left out because their links form a cycle."""
    children: dict[str, list[str]] = {job_id: [] for job_id in jobs_by_id}
    for child, ids in parents.items():
        for parent in ids:
            if parent in children:
                children[parent].append(child)
    for job_id, data in jobs_by_id.items():  # Kala's order first, then the rest
        listed = [c for c in data.get("dependent_jobs") or [] if c in children[job_id]]
        children[job_id] = list(dict.fromkeys(listed + children[job_id]))
    rank: dict[str, int] = {}

    def visit(job_id: str) -> None:
        stack = [job_id]
        while stack:
            node = stack.pop()
            if node not in rank:
                rank[node] = len(rank)
                stack.extend(reversed(children[node]))

    for job_id in sorted(jobs_by_id, key=lambda j: (bool(parents[j]), j)):
        visit(job_id)
    waiting = {j: sum(p in jobs_by_id for p in parents[j]) for j in jobs_by_id}
    ready = [(rank[j], j) for j, n in waiting.items() if n == 0]
    heapq.heapify(ready)
    planned: list[str] = []
    while ready:
        _, job_id = heapq.heappop(ready)
        planned.append(job_id)
        for child in children[job_id]:
            waiting[child] -= 1
            if waiting[child] == 0:
                heapq.heappush(ready, (rank[child], child))
    return planned, set(jobs_by_id) - set(planned)


def _time(value: Any) -> datetime | None:
    return None if value is None or wire.is_zero_time(value) else value


def progress(data: dict[str, Any], parsed: schedule.Schedule | None,
             now: datetime) -> Progress:
    """Where a Kala job stands, as our schedule state (docs/design.md Decisions 3-5).

    Runs used: Kala counts its stats, NextKala `number_of_finished_runs`; the larger is taken
    (Kala's pruned stats would otherwise give runs back). `parsed` is None for a one-off or a
    child, which is never armed on its own here; it is done once it ran. A scheduled job's next
    run is the anchored occurrence (start + k * interval) nearest to Kala's `next_run_at`,
    the occurrence Kala's timer stands for (Kala's own timer drifts by its latency each run).
    When Kala's `last_attempted_run` is at or after that time (and the job is enabled: a
    disabled one's timer fires a refused run), Kala is running it right now: it counts as used
    and the next one is due here. An occurrence that passed while Kala could not fire it
    (stopped before its `next_run_at`) is still owed: the beat runs it at once, coalesced by
    docs/design.md Decision 5.
    """
    meta = data.get("metadata") or {}
    used = max(len(data.get("stats") or []), meta.get("number_of_finished_runs", 0))
    if parsed is None:
        return Progress(used, bool(data.get("is_done")) or used > 0, None)
    total = parsed.total_runs
    if total is not None and used >= total:  # Kala re-arms no more: its next_run_at is stale
        return Progress(used, True, None)
    kala_next = _time(data.get("next_run_at"))
    last = _time(meta.get("last_attempted_run"))
    # A disabled job's timer fires a refused run that only sets last_attempted_run (Kala §9).
    in_flight = (not data.get("disabled") and kala_next is not None and last is not None
                 and last >= kala_next)
    used += in_flight
    if total is not None and used >= total:
        return Progress(used, True, None)
    if parsed.interval is None:  # R0 whose one run is still owed
        return Progress(used, False, parsed.start)
    if kala_next is None:  # never armed by Kala: the next occurrence from now
        k = parsed.index_at_or_after(now)
    else:
        half = timedelta(seconds=parsed.interval.approx_seconds() / 2)
        k = parsed.index_at_or_after(kala_next - half) + in_flight
    try:
        return Progress(used, False, parsed.occurrence(k))
    except schedule.ScheduleOverflowError:  # nothing left before year 9999
        return Progress(used, True, None)


def history(job_id: str, stats: list[Any] | None, trigger: str,
            keep_since: datetime | None) -> list[dict[str, Any]]:
    """Kala's per-run stats of a job (docs/kala.md §9) as finished runs here, the `runs` rows
    of docs/design.md Decision 15, so its `stats` and `/job/stats/{id}/` go on from Kala's.
    Runs older than `keep_since` (KALA_RUN_RETENTION) are left out, as the beat would prune
    them; a stat without a readable `ran_at` is left out (its run still counts as used)."""
    rows: list[dict[str, Any]] = []
    seen: set[datetime] = set()
    for stat in stats or []:
        try:
            ran_at = schedule.parse_start(stat["ran_at"])
            duration = int(stat.get("execution_duration") or 0)
            attempts = int(stat.get("number_of_retries") or 0) + 1
        except (KeyError, TypeError, ValueError, schedule.ScheduleError):
            continue
        if ran_at in seen or (keep_since is not None and ran_at < keep_since):
            continue
        seen.add(ran_at)
        ok = stat.get("success") is True
        rows.append({
            "id": str(uuid.uuid4()), "job_id": job_id, "scheduled_for": ran_at,
            "trigger": trigger, "seq": 0, "state": "success" if ok else "failed",
            "attempts": attempts, "created_at": ran_at, "started_at": ran_at,
            "attempt_at": ran_at, "finished_at": ran_at + timedelta(microseconds=duration // 1000),
            "duration_ns": duration, "error": None if ok else "failed in Kala (imported)",
        })
    return rows


# ---------------------------------------------------------------- writing


BATCH = import_table.BATCH  # jobs per transaction (a test makes it small)


def _import_one(session: Session, data: dict[str, Any], parents: list[str],
                rules: jobs.Rules, now: datetime, keep_since: datetime | None) -> Outcome:
    job_id = data["id"]
    data = {**data, "parent_jobs": parents}
    data.pop("dependent_jobs", None)  # each child links itself, in import order
    parsed = None
    if (data.get("schedule") or data.get("cron")) and not parents:
        with contextlib.suppress(schedule.ScheduleError):  # import_job refuses it, with the
            parsed = occurrences.parse(data.get("schedule"), data.get("cron"),  # create path's
                                       data.get("timezone"), rules.default_timezone).rule
    if isinstance(parsed, cron.CronSchedule):  # from a kala-celery: its next_run_at is exact
        kala_next = _time(data.get("next_run_at"))
        state = Progress(0, False, parsed.first_at_or_after(kala_next or now))
    else:
        state = progress(data, parsed, now)
    runs = history(job_id, data.get("stats"), "parent" if parents else "schedule", keep_since)
    return write_one(session, data, rules, now, state, parents=parents, runs=runs)


def import_jobs(sessions: sessionmaker[Session], jobs_by_id: dict[str, dict[str, Any]],
                rules: jobs.Rules, now: datetime, *, dry_run: bool = False,
                keep_since: datetime | None = None) -> list[Outcome]:
    """Write the jobs into the store, parents first, BATCH jobs per transaction (a dry run:
    all in one, rolled back). Each refused job is left out, with everything that depends on
    it, and the rest go on; an interrupted import leaves whole jobs, and running it again
    finishes it. Returns one outcome per job, in import order."""
    parents = parents_of(jobs_by_id)
    planned, cyclic = order(jobs_by_id, parents)
    here = ids_here(sessions, jobs_by_id)
    outcomes: dict[str, Outcome] = {}
    for job_id in sorted(cyclic):
        name = jobs_by_id[job_id].get("name", "")
        outcomes[job_id] = Outcome(job_id, name, HERE) if job_id in here else refusal(
            job_id, name, "its dependent jobs form a cycle (or depend on one)", 9)

    def write(session: Session, job_id: str) -> Outcome:
        outcome = _plan_one(session, jobs_by_id[job_id], parents[job_id], here, outcomes,
                            rules, now, keep_since)
        outcomes[job_id] = outcome  # a refused parent refuses its dependents in this run
        return outcome

    in_batches(sessions, planned, write, dry_run=dry_run, size=BATCH)
    result = [outcomes[j] for j in [*planned, *sorted(cyclic)]]
    return as_dry_run(result) if dry_run else result


def _plan_one(session: Session, data: dict[str, Any], parents: list[str], here: set[str],
              outcomes: dict[str, Outcome], rules: jobs.Rules, now: datetime,
              keep_since: datetime | None) -> Outcome:
    job_id, name = data["id"], data.get("name", "")
    if job_id in here:
        return Outcome(job_id, name, HERE)
    refused = [p for p in parents if p in outcomes and outcomes[p].result == REFUSED]
    if refused:
        return refusal(job_id, name, f"its parent job {refused[0]!r} was refused", 9)
    return _import_one(session, data, parents, rules, now, keep_since)
