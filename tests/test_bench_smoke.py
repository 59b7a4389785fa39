"""The benchmark scripts keep working: `python -m bench all --smoke` runs every suite with tiny
N and short windows against real PostgreSQL, Redis, beat, worker and gunicorn processes.

The numbers of a smoke run mean nothing; the full runs and their results are in bench/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SUITES = ("beat-scale", "lateness", "api", "throughput")


@pytest.mark.timeout(180)
def test_every_bench_suite_runs_in_smoke_mode() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "all", "--smoke"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=170,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    for suite in SUITES:
        assert f"### {suite} (smoke, tiny N)" in done.stdout, output[-6000:]
    assert "- machine: " in done.stdout
    assert "Traceback" not in output, output[-6000:]
