"""Schemathesis against the production layout (issue 17): `kala-celery api`, a beat and a
worker as separate processes on PostgreSQL and Redis; the same checks as on SQLite
(tests/fuzz.py)."""

from __future__ import annotations

import uuid
from pathlib import Path

from tests import fuzz, servers


def test_schemathesis_finds_nothing_on_postgresql(
    tmp_path: Path, postgres_server: servers.PostgresServer, redis_server: servers.RedisServer
) -> None:
    name = f"kala_fuzz_{uuid.uuid4().hex[:12]}"
    db_url = postgres_server.create_database(name)
    server = fuzz.serve_topology(tmp_path, db_url, redis_server.url)
    try:
        fuzz.assert_clean_run(server, tmp_path / "report")
    finally:
        server.stop()
        postgres_server.drop_database(name)
