"""`kala-celery serve`: the API in the foreground with one beat and one worker beside it,
all on the same settings; stopping the API stops them (no orphans)."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from kala_celery.config import Settings

log = logging.getLogger(__name__)

STOP_TIMEOUT = 30.0  # seconds a worker gets to finish in-flight runs before it is killed


@contextmanager
def companions(
    settings: Settings, concurrency: int | None = None
) -> Iterator[list[subprocess.Popen]]:
    """Run `kala-celery beat` and `kala-celery worker` while the block runs."""
    env = {**os.environ, **settings.to_env()}
    worker_args = ["--pool", settings.serve_pool]
    concurrency = concurrency or settings.serve_concurrency
    if concurrency:
        worker_args += ["--concurrency", str(concurrency)]
    commands = [
        [sys.executable, "-m", "kala_celery", "beat", "--pidfile="],
        [sys.executable, "-m", "kala_celery", "worker", *worker_args],
    ]
    children = [subprocess.Popen(command, env=env) for command in commands]
    try:
        yield children
    finally:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)  # warm shutdown: in-flight runs finish
        for child in children:
            try:
                child.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                log.warning("pid %d did not stop in %.0f s; killing it", child.pid, STOP_TIMEOUT)
                child.kill()
                child.wait()
