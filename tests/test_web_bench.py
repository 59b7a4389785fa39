"""`python -m bench dashboard --smoke` keeps working (tiny N: 500 jobs, 10k runs; SQLite only:
no servers)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

# Checks that the bench runs, not its numbers: it runs in the parallel part.

REPO = Path(__file__).resolve().parent.parent


def test_the_dashboard_bench_runs_in_smoke_mode() -> None:
    done = subprocess.run([sys.executable, "-m", "bench", "dashboard", "--smoke"], cwd=REPO,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "### dashboard (smoke, tiny N)" in done.stdout
    assert "| job list p95 ≤ 300 ms with 500 jobs (sqlite) |" in done.stdout
    assert "| job page, overview, stats p95 ≤ 300 ms with 500 jobs and 10,000 runs (sqlite) |" \
        in done.stdout
    assert "| sqlite | overview, without ix_runs_due |" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
