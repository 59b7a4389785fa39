"""Schemathesis against a real `kala-celery serve` on SQLite (issue 17): stateless and
stateful phases, >= 2,000 requests, no 5xx, every response as the OpenAPI document says, the
server healthy and the job store consistent afterwards (tests/fuzz.py)."""

from __future__ import annotations

from pathlib import Path

from tests import fuzz


def test_schemathesis_finds_nothing_on_sqlite(tmp_path: Path) -> None:
    server = fuzz.serve_sqlite(tmp_path)
    try:
        fuzz.assert_clean_run(server, tmp_path / "report")
    finally:
        server.stop()
