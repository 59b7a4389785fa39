"""The multi-host history checker itself (tests/history.py), on made-up records: it must fail
what the delivery guarantee forbids and pass what it allows, or the multi-host tests prove
nothing."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.history import CUT_POSTGRES, CUT_REDIS, Fault, History, read_record

T0 = datetime(2026, 1, 1, tzinfo=UTC)
AT = T0.timestamp()
TIMEOUT = 8.0


def stamp(seconds: float) -> str:
    return (T0 + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


def line(what: str, run: str, attempt: int, due: float, real: float, host: str) -> str:
    return f"{what}|{run}|j1|{attempt}|{stamp(due)}|{AT + real}|kcmh-{host}|100"


def run(run_id: str, due: float, *, attempts: int = 1, state: str = "success",
        output: str | None = None) -> dict:
    return {"id": run_id, "job_id": "j1", "trigger": "schedule",
            "scheduled_for": T0 + timedelta(seconds=due), "state": state,
            "attempts": attempts, "worker": "w@kcmh-h1/1", "error": None,
            "output": output if output is not None else f"attempt {attempts} on kcmh-h1\n"}


def history(tmp_path: Path, lines: list[str], runs: list[dict], faults: list[Fault],
            superseded: list[dict] = ()) -> History:
    record = tmp_path / "record.log"
    record.write_text("\n".join(lines) + "\n")
    return History(read_record(record), runs, faults, jobs={"j1": "job"},
                   worker_timeout=TIMEOUT, until=AT + 100, superseded=superseded)


def test_a_clean_history_passes(tmp_path: Path) -> None:
    lines = [line("start", "r1", 1, 10, 10.02, "h1"), line("end", "r1", 1, 10, 10.5, "h1"),
             line("start", "r2", 1, 60, 60.3, "h1"), line("end", "r2", 1, 60, 61, "h1")]
    assert history(tmp_path, lines, [run("r1", 10), run("r2", 60)], []).failures() == []


def test_a_rerun_after_a_long_database_cut_is_allowed_and_its_late_outcome_must_be_kept(
    tmp_path: Path
) -> None:
    lines = [line("start", "r1", 1, 10, 10, "h2"), line("end", "r1", 1, 10, 13, "h2"),
             line("start", "r1", 2, 10, 21, "h1"), line("end", "r1", 2, 10, 24, "h1"),
             line("start", "r2", 1, 60, 60, "h1"), line("end", "r2", 1, 60, 61, "h1")]
    runs = [run("r1", 10, attempts=2), run("r2", 60)]
    cut = Fault(CUT_POSTGRES, "h2", AT + 11, AT + 11 + TIMEOUT + 2)
    kept = {"run_id": "r1", "attempt": 1, "worker": "w@kcmh-h2/1", "state": "success",
            "output": "attempt 1 on kcmh-h2\n"}
    checked = history(tmp_path, lines, runs, [cut], [kept])
    assert checked.failures() == []
    assert "h2 cut from PostgreSQL for 10 s" in checked.runs_twice().notes[0]
    lost = history(tmp_path, lines, runs, [cut])  # the late outcome went nowhere
    assert lost.failures() == ["a late outcome is kept on its own attempt"]


def test_a_rerun_without_a_long_enough_database_cut_fails(tmp_path: Path) -> None:
    lines = [line("start", "r1", 1, 10, 10, "h2"), line("end", "r1", 1, 10, 13, "h2"),
             line("start", "r1", 2, 10, 21, "h1"), line("end", "r1", 2, 10, 24, "h1")]
    runs = [run("r1", 10, attempts=2)]
    for faults in ([], [Fault(CUT_POSTGRES, "h2", AT + 11, AT + 11 + TIMEOUT - 1)],
                   [Fault(CUT_REDIS, "h2", AT + 11, AT + 30)],
                   [Fault(CUT_POSTGRES, "h3", AT + 11, AT + 30)]):
        failures = history(tmp_path, lines, runs, faults).failures()
        assert "no run taken from a live worker" in failures, faults
        assert any(f.startswith("a command runs twice only") for f in failures), faults


def test_an_early_start_a_duplicate_an_overwrite_and_an_open_run_each_fail(
    tmp_path: Path
) -> None:
    lines = [line("start", "r1", 1, 40, 10, "h1"), line("end", "r1", 1, 40, 11, "h1"),
             line("start", "r2", 1, 41, 41, "h1"), line("end", "r2", 1, 41, 42, "h1"),
             line("start", "r2", 1, 41, 45, "h2"), line("end", "r2", 1, 41, 46, "h2"),
             line("start", "r3", 1, 50, 50, "h1")]
    runs = [run("r1", 40), run("r2", 41), run("r3", 50, state="started", output=""),
            run("r4", 51, attempts=2, output="attempt 1 on kcmh-h2\n")]
    failures = history(tmp_path, lines, runs, []).failures()
    assert "no command starts more than 1 s before its time" in failures  # r1, 30 s early
    assert any(f.startswith("a command runs twice only") for f in failures)  # r2
    assert "a late outcome never overwrites a newer attempt's" in failures  # r4
    assert "no run left open" in failures  # r3


def test_a_job_that_does_not_fire_again_after_a_fault_fails(tmp_path: Path) -> None:
    lines = [line("start", "r1", 1, 10, 10, "h1"), line("end", "r1", 1, 10, 11, "h1")]
    fault = Fault(CUT_REDIS, "h1", AT + 20, AT + 30)
    failures = history(tmp_path, lines, [run("r1", 10)], [fault]).failures()
    assert "every job fires again within 60 s of its hosts coming back" in failures
    assert "no job silent for the last 60 s" in failures
