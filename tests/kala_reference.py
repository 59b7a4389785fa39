"""The real Kala binary, for differential tests and the importer's tests.

Found at `KALA_REFERENCE_BIN`, or at `../shared/reference/kala` beside the repository (where the
project's own machines keep it). When neither exists, the tests that need it skip: the project
must also test on machines without it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.processes import free_port, port_open, wait_for

REPO = Path(__file__).resolve().parent.parent


def binary() -> Path | None:
    """The Kala executable to compare against, or None."""
    named = os.environ.get("KALA_REFERENCE_BIN")
    candidates = [Path(named)] if named else [REPO.parent / "shared" / "reference" / "kala"]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return path
    return None


@dataclass
class Kala:
    """A running Kala on loopback: `url` is its origin, `api` its `/api/v1` prefix."""

    proc: subprocess.Popen
    url: str
    home: Path
    log: Path

    @property
    def api(self) -> str:
        return self.url + "/api/v1"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.api, timeout=10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.home, ignore_errors=True)


def start_kala(jobdb: str = "boltdb", home: Path | None = None) -> Kala:
    """Start the real Kala with a clean environment (its config reads `$HOME/kala.yaml` and
    `KALA_*`, which ours share), on its durable boltdb store (this build refuses
    `--jobdb memory`)."""
    path = binary()
    if path is None:
        raise FileNotFoundError("no Kala binary: set KALA_REFERENCE_BIN")
    home = home or Path(tempfile.mkdtemp(prefix="kala-ref-"))
    port = free_port()
    args = [str(path), "serve", "-i", "127.0.0.1", "-p", str(port), "--jobdb", jobdb]
    if jobdb == "boltdb":
        args += ["--bolt-path", str(home)]
    log = home / "kala.log"
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=home,
                                env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
                                start_new_session=True)
    kala = Kala(proc, f"http://127.0.0.1:{port}", home, log)
    try:
        wait_for(lambda: port_open(port) or proc.poll() is not None, 20, "Kala to listen")
        if proc.poll() is not None:
            raise RuntimeError(f"Kala exited with {proc.returncode}:\n{kala.output()}")
    except BaseException:
        kala.stop()
        raise
    return kala


@pytest.fixture
def kala() -> Iterator[Kala]:
    """A fresh real Kala (boltdb) per test; skipped when the binary is absent."""
    if binary() is None:
        pytest.skip("the real Kala is not here (KALA_REFERENCE_BIN unset, no ../shared/reference)")
    server = start_kala()
    yield server
    server.stop()
