"""The API's fast paths (issue 7) answer exactly what the plain paths answer, on SQLite and
PostgreSQL: a create is one INSERT, and the job list is byte for byte the documents of
`wire.job_document`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import event

from tests.live import Api
from tests.test_api_jobs import future


@contextmanager
def statements(api: Api) -> Iterator[list[str]]:
    seen: list[str] = []

    def record(_conn, _cursor, statement, _params, _context, _many) -> None:
        seen.append(" ".join(statement.split()[:3]).upper())

    event.listen(api.state.engine, "before_cursor_execute", record)
    try:
        yield seen
    finally:
        event.remove(api.state.engine, "before_cursor_execute", record)


def test_a_scheduled_create_is_one_insert(api: Api) -> None:
    start = future()
    with statements(api) as seen:
        job_id = api.create(name="a", command="true", schedule=f"R/{start}/PT1H")
    writes = [s for s in seen if not s.startswith(("SELECT", "BEGIN", "COMMIT", "ROLLBACK"))]
    assert writes == ["INSERT INTO JOBS"]
    assert api.job(job_id)["next_run_at"] == start


def test_a_create_with_links_still_checks_links_first(api: Api) -> None:
    parent = api.create(id="p", name="p", command="true", schedule=f"R/{future()}/PT1H")
    child = api.create(id="c", name="c", command="true", parent_jobs=[parent])
    assert api.job(child)["next_run_at"] == "0001-01-01T00:00:00Z"
    refused = api.http.post(
        "/job/",
        json={
            "name": "x",
            "command": "true",
            "schedule": "R/2001-01-01T00:00:00Z/PT1H",
            "dependent_jobs": ["missing"],
        },
    )
    assert refused.status_code == 400
    assert "'missing' does not exist" in refused.json()["error"]
