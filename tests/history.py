"""What really ran, checked in the manner of Jepsen's checkers: every job's command appends a
line to one record file when it starts and when it ends (its run id, job, attempt, scheduled
time, the REAL time, its host and its parent process); afterwards the record, the runs table
and the list of faults are read together and each promise of the delivery guarantee is
checked against them (tests/test_multihost.py, `python -m bench partitions`).
"""

from __future__ import annotations

import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import pairwise
from pathlib import Path
from typing import Any

EARLY_TOLERANCE = 1.0  # seconds a command may start before its scheduled time
FIRE_AGAIN_WITHIN = 60.0  # seconds after its hosts are back by which every job fired again
OPEN_STATES = ("pending", "sent", "started")
OUTPUT = re.compile(r"attempt (\d+) on (\S+)")

LINK_DOWN = "link down"
CUT_POSTGRES = "cut from PostgreSQL"
CUT_REDIS = "cut from Redis"


def record_command(record: Path, sleep: float = 0) -> str:
    """The command of a recorded job (argv, no shell: inside the single quotes the engine
    expands nothing, bash expands the run's variables). `env -u LD_PRELOAD` drops a skewed
    worker's libfaketime, so `date` is the real time. Its output names its attempt and host,
    so the runs table shows whose outcome it kept."""
    fields = ("$KALA_RUN_ID|$KALA_JOB_ID|$KALA_ATTEMPT|$KALA_SCHEDULED_FOR|$(date +%s.%N)|"
              "$HOSTNAME|$PPID")
    middle = f"sleep {sleep:g}; " if sleep else ""
    script = (f'echo "start|{fields}" >> {record}; {middle}echo "end|{fields}" >> {record}; '
              'echo "attempt $KALA_ATTEMPT on $HOSTNAME"')
    return f"env -u LD_PRELOAD -u FAKETIME bash -c '{script}'"


# ---------------------------------------------------------------- what happened


@dataclass
class Execution:
    """One execution of a run's command, in real (epoch) seconds."""

    run_id: str
    job_id: str
    attempt: int
    scheduled_for: float
    start: float
    host: str  # the hostname the command saw (kcmh-h2)
    ppid: int
    end: float | None = None


def read_record(path: Path) -> list[Execution]:
    """The executions of a record file, each with its end when the command got that far."""
    executions: list[Execution] = []
    running: dict[tuple[str, int, str, int], Execution] = {}
    for line in path.read_text(errors="replace").splitlines() if path.exists() else []:
        parts = line.split("|")
        if len(parts) != 8 or parts[0] not in ("start", "end"):
            continue
        what, run_id, job_id, attempt, scheduled, real, host, ppid = parts
        key = (run_id, int(attempt), host, int(ppid))
        if what == "start":
            execution = Execution(run_id, job_id, int(attempt), _epoch(scheduled), float(real),
                                  host, int(ppid))
            executions.append(execution)
            running[key] = execution
        elif key in running:
            running.pop(key).end = float(real)
    return executions


def _epoch(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


def epoch(moment: datetime | None) -> float | None:
    if moment is None:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@dataclass(frozen=True)
class Fault:
    """A fault of one host, from `start` to `end` (real epoch seconds)."""

    kind: str
    host: str  # h2 (its processes' hostname is kcmh-h2)
    start: float
    end: float

    @property
    def cuts_database(self) -> bool:
        return self.kind in (LINK_DOWN, CUT_POSTGRES)

    def __str__(self) -> str:
        return f"{self.host} {self.kind} for {self.end - self.start:.0f} s"


# ---------------------------------------------------------------- the checks


@dataclass
class Check:
    name: str
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def text(self, examples: int = 5) -> str:
        head = f"  {'ok  ' if self.ok else 'FAIL'}  {self.name}"
        if self.problems:
            head += f": {len(self.problems)}"
        lines = [head, *(f"          {p}" for p in self.problems[:examples])]
        if len(self.problems) > examples:
            lines.append(f"          ... and {len(self.problems) - examples} more")
        lines += [f"          ({n})" for n in self.notes]
        return "\n".join(lines)


class History:
    """The record, the runs table and the faults of one run of the cluster.

    `runs`: rows of the runs table as dicts (id, job_id, trigger, scheduled_for, state,
    attempts, worker, output, error); `superseded`: rows of superseded_attempts (run_id,
    attempt, worker, state, output); `jobs`: job id -> a name to print; `until`: when the
    jobs were disabled (the end of the observed history)."""

    def __init__(self, executions: Sequence[Execution], runs: Iterable[dict[str, Any]],
                 faults: Sequence[Fault], *, jobs: dict[str, str], worker_timeout: float,
                 until: float, superseded: Iterable[dict[str, Any]] = ()) -> None:
        self.executions = sorted(executions, key=lambda e: e.start)
        self.runs = {r["id"]: r for r in runs}
        self.superseded = {(r["run_id"], r["attempt"]): r for r in superseded}
        self.faults = list(faults)
        self.jobs = jobs
        self.worker_timeout = worker_timeout
        self.until = until
        self.by_run: dict[str, list[Execution]] = defaultdict(list)
        for execution in self.executions:
            self.by_run[execution.run_id].append(execution)

    # -- helpers --------------------------------------------------------------------------

    def _name(self, job_id: str) -> str:
        return self.jobs.get(job_id, job_id[:8])

    def _when(self, moment: float) -> str:
        return datetime.fromtimestamp(moment, UTC).strftime("%H:%M:%S.%f")[:-4]

    def _database_cut(self, host: str, began: float, until: float) -> Fault | None:
        """A cut of `host` from the database longer than KALA_WORKER_TIMEOUT that overlaps
        [began, until]: what allows its run to be taken back and run again. The db host's
        link down cuts every host."""
        for fault in self.faults:
            if (fault.host in (host.removeprefix("kcmh-"), "db") and fault.cuts_database
                    and fault.end - fault.start > self.worker_timeout
                    and fault.start <= until and fault.end >= began):
                return fault
        return None

    def _taken_attempts(self) -> list[tuple[dict[str, Any], Execution | None, float]]:
        """Attempts the sweep took back: (run, the execution of that attempt if its command
        started, until when it was the run's attempt)."""
        taken = []
        for run_id, run in self.runs.items():
            mine = self.by_run.get(run_id, [])
            last = run["attempts"] or 0
            for attempt in range(1, last + (1 if run["state"] == "lost" else 0)):
                execution = next((e for e in mine if e.attempt == attempt), None)
                following = next((e.start for e in mine if e.attempt > attempt), self.until)
                taken.append((run, execution, following))
        return taken

    # -- the promises --------------------------------------------------------------------

    def occurrences_twice(self) -> Check:
        check = Check("no occurrence runs twice")
        by_occurrence: dict[tuple[str, float], set[str]] = defaultdict(set)
        for execution in self.executions:
            run = self.runs.get(execution.run_id)
            if run is not None and run["trigger"] == "schedule":
                by_occurrence[(execution.job_id, execution.scheduled_for)].add(execution.run_id)
        rows = Counter((r["job_id"], epoch(r["scheduled_for"])) for r in self.runs.values()
                       if r["trigger"] == "schedule")
        for (job_id, when), run_ids in sorted(by_occurrence.items()):
            if len(run_ids) > 1:
                check.problems.append(f"{self._name(job_id)} at {self._when(when)}: "
                                      f"{len(run_ids)} runs executed")
        for (job_id, when), n in sorted(rows.items(), key=str):
            if n > 1:
                check.problems.append(f"{self._name(job_id)} at {self._when(when or 0)}: "
                                      f"{n} runs recorded")
        unknown = {e.run_id for e in self.executions} - set(self.runs)
        if unknown:
            check.notes.append(f"{len(unknown)} executions of runs not in the table")
        return check

    def early_starts(self) -> Check:
        check = Check(f"no command starts more than {EARLY_TOLERANCE:g} s before its time")
        leads = []
        for execution in self.executions:
            run = self.runs.get(execution.run_id)
            if run is None or run["trigger"] != "schedule":
                continue
            lead = execution.scheduled_for - execution.start
            if lead > EARLY_TOLERANCE:
                leads.append(lead)
                check.problems.append(
                    f"{self._name(execution.job_id)} run {execution.run_id[:8]} due "
                    f"{self._when(execution.scheduled_for)} started {lead:.1f} s early on "
                    f"{execution.host}")
        if leads:
            check.notes.append(f"early by {min(leads):.1f} to {max(leads):.1f} s")
        return check

    def runs_twice(self) -> Check:
        """A command runs again only after its worker was cut from the database for longer
        than KALA_WORKER_TIMEOUT; the notes say why each allowed one ran twice."""
        check = Check("a command runs twice only after its worker was cut from the database "
                      f"for over {self.worker_timeout:g} s")
        for run_id, mine in self.by_run.items():
            for first, second in pairwise(mine):
                fault = self._database_cut(first.host, first.start, second.start)
                what = (f"{self._name(first.job_id)} run {run_id[:8]}: attempt {first.attempt} "
                        f"on {first.host} at {self._when(first.start)}, attempt "
                        f"{second.attempt} on {second.host} at {self._when(second.start)}")
                if first.attempt == second.attempt:
                    check.problems.append(f"{what}: the same attempt ran twice")
                elif fault is None:
                    check.problems.append(f"{what}: {first.host} was not cut from the database")
                else:
                    check.notes.append(f"{what}: {fault}")
        return check

    def taken_from_live(self) -> Check:
        check = Check("no run taken from a live worker")
        for run, execution, following in self._taken_attempts():
            if execution is None:
                continue  # the command never started: nothing ran twice, nothing was cut
            if self._database_cut(execution.host, execution.start, following) is None:
                check.problems.append(
                    f"{self._name(run['job_id'])} run {run['id'][:8]} attempt "
                    f"{execution.attempt} taken from {execution.host}, which was not cut off "
                    f"(run {run['state']}, {run['attempts']} attempts: {run['error'] or ''})")
        return check

    def outcomes_kept(self) -> Check:
        """The run shows its latest attempt's outcome: a late one never overwrites it."""
        check = Check("a late outcome never overwrites a newer attempt's")
        for run_id, run in self.runs.items():
            said = OUTPUT.search(run.get("output") or "")
            mine = self.by_run.get(run_id, [])
            if said is None:
                if run["state"] == "success" and mine:
                    check.problems.append(f"run {run_id[:8]} succeeded without its output")
                continue
            attempt, host = int(said[1]), said[2]
            if attempt != run["attempts"] or run["state"] != "success":
                check.problems.append(
                    f"{self._name(run['job_id'])} run {run_id[:8]} is {run['state']} at attempt "
                    f"{run['attempts']} with the outcome of attempt {attempt} on {host}")
            elif not any(e.attempt == attempt and e.host == host for e in mine):
                check.problems.append(f"run {run_id[:8]}: outcome of attempt {attempt} on "
                                      f"{host}, which never ran it")
        return check

    def late_outcomes_kept(self) -> Check:
        """The outcome of an attempt taken back while its command ran is kept apart, on its
        own attempt (superseded_attempts), once its worker is back."""
        check = Check("a late outcome is kept on its own attempt")
        for run, execution, _following in self._taken_attempts():
            if execution is None or execution.end is None:
                continue  # its command never got to an outcome
            kept = self.superseded.get((run["id"], execution.attempt))
            said = OUTPUT.search((kept or {}).get("output") or "")
            if kept is None:
                check.problems.append(f"{self._name(run['job_id'])} run {run['id'][:8]} "
                                      f"attempt {execution.attempt} on {execution.host}: "
                                      "its outcome is nowhere")
            elif said is None or (int(said[1]), said[2]) != (execution.attempt, execution.host):
                check.problems.append(f"run {run['id'][:8]} attempt {execution.attempt}: kept "
                                      f"{kept.get('output')!r}")
        return check

    def open_runs(self) -> Check:
        check = Check("no run left open")
        for run in self.runs.values():
            if run["state"] in OPEN_STATES:
                check.problems.append(f"{self._name(run['job_id'])} run {run['id'][:8]} "
                                      f"{run['state']} (attempt {run['attempts']}, worker "
                                      f"{run['worker']})")
        return check

    def fired_again(self) -> Check:
        check = Check(f"every job fires again within {FIRE_AGAIN_WITHIN:g} s of its hosts "
                      "coming back")
        starts: dict[str, list[float]] = defaultdict(list)
        for execution in self.executions:
            starts[execution.job_id].append(execution.start)
        for fault in self.faults:
            for job_id in self.jobs:
                first = next((t for t in starts[job_id] if t >= fault.end), None)
                late = (first if first is not None else self.until) - fault.end
                if late > FIRE_AGAIN_WITHIN or (first is None and self.until > fault.end):
                    check.problems.append(
                        f"{self._name(job_id)} after {fault}: "
                        + ("never" if first is None else f"{late:.0f} s"))
        return check

    def stopped_jobs(self) -> Check:
        check = Check(f"no job silent for the last {FIRE_AGAIN_WITHIN:g} s")
        for job_id in self.jobs:
            last = max((e.start for e in self.executions if e.job_id == job_id), default=None)
            if last is None or self.until - last > FIRE_AGAIN_WITHIN:
                check.problems.append(f"{self._name(job_id)}: last start "
                                      + ("never" if last is None else self._when(last)))
        return check

    def checks(self) -> list[Check]:
        return [self.occurrences_twice(), self.early_starts(), self.runs_twice(),
                self.taken_from_live(), self.outcomes_kept(), self.late_outcomes_kept(),
                self.open_runs(), self.fired_again(), self.stopped_jobs()]

    def report(self) -> str:
        states = Counter(r["state"] for r in self.runs.values())
        summary = ", ".join(f"{n} {state}" for state, n in sorted(states.items()))
        lines = [f"history: {len(self.runs)} runs ({summary}), "
                 f"{len(self.executions)} executions, faults: "
                 + ("; ".join(str(f) for f in self.faults) or "none")]
        lines += [c.text() for c in self.checks()]
        return "\n".join(lines)

    def failures(self) -> list[str]:
        return [c.name for c in self.checks() if not c.ok]


def read_runs(engine: Any, job_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The runs of `job_ids`, as dicts."""
    from sqlalchemy import bindparam, text

    query = text("SELECT id, job_id, trigger, scheduled_for, state, attempts, worker, output, "
                 "error, created_at, started_at, finished_at FROM runs WHERE job_id IN :ids "
                 "ORDER BY created_at").bindparams(bindparam("ids", expanding=True))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query, {"ids": list(job_ids)}).mappings()]


def read_superseded(engine: Any, job_ids: Iterable[str]) -> list[dict[str, Any]]:
    """The late outcomes kept apart (superseded_attempts) of the runs of `job_ids`."""
    from sqlalchemy import bindparam, text

    query = text("SELECT s.run_id, s.attempt, s.worker, s.state, s.output FROM "
                 "superseded_attempts s JOIN runs r ON r.id = s.run_id WHERE r.job_id IN :ids"
                 ).bindparams(bindparam("ids", expanding=True))
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(query, {"ids": list(job_ids)}).mappings()]
