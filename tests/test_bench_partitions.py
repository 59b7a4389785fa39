"""`python -m bench partitions` keeps working: 20 s of random partitions on the multi-host
harness (tests/multihost.py) in --smoke mode. A file of its own so that the parallel part
runs it beside tests/test_bench_smoke.py, not after it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(240)  # its numbers are not checked: in the parallel part, as the others
def test_bench_partitions_runs_in_smoke_mode() -> None:
    """20 s of random partitions on the multi-host harness, then the history check. Whether
    the checks pass is tests/test_multihost.py's to assert; here the suite must run, print
    them and stop everything it started."""
    from tests import multihost

    reason = multihost.unavailable()
    if reason:
        pytest.skip(reason)
    done = subprocess.run([sys.executable, "-m", "bench", "partitions", "--smoke"], cwd=REPO,
                          capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=220)
    output = done.stdout + done.stderr
    assert done.returncode in (0, 1), output[-6000:]  # 1: a check failed (shown below)
    assert "### partitions (smoke, tiny N)" in output, output[-6000:]
    assert "partitions: history check" in output and "no run left open" in output
    assert "Traceback" not in output, output[-6000:]
    assert multihost.PREFIX not in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                                  text=True).stdout  # all of it removed
