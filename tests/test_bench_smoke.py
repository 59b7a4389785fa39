"""The benchmark scripts keep working: every suite of `python -m bench` runs in --smoke mode
(tiny N, short windows) against real PostgreSQL, Redis, beat, worker and API processes.

The suites run at once, each in its own process with its own servers, to keep the test
short. The numbers of a smoke run mean nothing; the real runs are in bench/RESULTS.md."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUITES = ("beat-scale", "lateness", "api", "throughput", "ceiling", "metrics", "vs-kala",
          "scale")
# Seconds for all of them together: ≈ 30 s on an idle 2-core machine, 50 s in the full suite's
# serial part. The numbers of a smoke run are not checked, so it runs in the parallel part.
DEADLINE = 150.0


@pytest.mark.timeout(180)
def test_every_bench_suite_runs_in_smoke_mode(tmp_path: Path) -> None:
    procs = {}
    for suite in SUITES:
        log = (tmp_path / f"{suite}.log").open("w")
        procs[suite] = (
            subprocess.Popen(
                [sys.executable, "-m", "bench", suite, "--smoke"],
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            ),
            log,
        )
    end = time.monotonic() + DEADLINE
    try:
        for proc, _log in procs.values():
            proc.wait(max(1.0, end - time.monotonic()))
    finally:
        for proc, log in procs.values():
            if proc.poll() is None:
                proc.terminate()  # its atexit/SIGTERM handlers stop its servers
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)
            log.close()
    for suite, (proc, _log) in procs.items():
        output = (tmp_path / f"{suite}.log").read_text(errors="replace")
        assert proc.returncode == 0, f"{suite} failed:\n{output[-6000:]}"
        assert f"### {suite} (smoke, tiny N)" in output, output[-6000:]
        assert "- machine: " in output and "- command: `python -m bench " in output
        assert "Traceback" not in output, output[-6000:]
