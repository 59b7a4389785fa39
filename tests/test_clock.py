"""The one clock (docs/design.md Decision 27): a process whose wall clock is wrong still
decides with the database's time. The skewed process is real: Python under libfaketime
(Debian's `faketime` package), against a real PostgreSQL."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from kala_celery.store import clock

FAKETIME_LIBS = ("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1",
                 "/usr/lib/aarch64-linux-gnu/faketime/libfaketime.so.1")
ROOT = Path(__file__).resolve().parent.parent

# Reads the database's time through kala's clock, twice 0.3 s apart (a busy wait on the
# monotonic clock: libfaketime's sleeps are what a skewed kala process must be shielded from,
# not what this test is about), and says what its own wall clock said.
PROBE = """
import json, logging, sys, time
from sqlalchemy import create_engine
from kala_celery.store import clock
logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(message)s")
clock.bind(create_engine(sys.argv[1]))
first, wall = clock.now().timestamp(), time.time()
until = time.monotonic() + 0.3
while time.monotonic() < until:
    pass
clock.sync()
second = clock.now().timestamp()
print(json.dumps({"first": first, "wall": wall, "second": second}))
"""


def faketime_lib() -> str:
    for path in FAKETIME_LIBS:
        if os.path.exists(path):
            return path
    pytest.skip("libfaketime is not installed (apt-get install faketime)")


def test_on_sqlite_the_clock_is_the_host_s() -> None:
    before = datetime.now(UTC)
    assert before <= clock.DatabaseClock().now() <= datetime.now(UTC)


@pytest.mark.parametrize("skew", ["+30s", "-45s"])
def test_a_process_whose_clock_is_off_reads_the_database_s_time(postgres_server,
                                                                 skew: str) -> None:
    url = postgres_server.create_database("kala_clock_" + ("fast" if skew[0] == "+" else "slow"))
    env = {**os.environ, "LD_PRELOAD": faketime_lib(), "FAKETIME": skew,
           "FAKETIME_DONT_FAKE_MONOTONIC": "1", "PYTHONPATH": str(ROOT)}
    real_before = time.time()
    done = subprocess.run([sys.executable, "-c", PROBE, url], env=env, capture_output=True,
                          text=True, timeout=60)
    real_after = time.time()
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    offset = int(skew[:-1])
    # the process's own clock really was off ...
    assert real_before + offset - 1 < seen["wall"] < real_after + offset + 1
    # ... and kala's clock in it was the database's (this host's real time)
    assert real_before - 0.5 < seen["first"] < real_after + 0.5
    assert 0.25 < seen["second"] - seen["first"] < real_after - real_before + 0.5
    # told once, with the size of the offset
    assert done.stderr.count("off the database's") == 1, done.stderr
    assert f"{offset:+.1f} s off the database's" in done.stderr
