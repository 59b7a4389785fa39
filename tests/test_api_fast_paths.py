"""The API's fast paths (issue 7) answer exactly what the plain paths answer, on SQLite and
PostgreSQL: a create is one INSERT of the job (and one of its audit row, Decision 32), and
the job list (plain rows as the drivers give them) is byte for byte the documents written
from Job objects (`wire.job_document`); both go through the one formatter, `wire.job_json`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kala_celery import wire
from kala_celery.api import listing
from kala_celery.store import audit
from tests.live import Api
from tests.sent import statements_sent
from tests.test_api_jobs import future
from tests.test_wire import FakeJob, FakeRun


@contextmanager
def statements(api: Api) -> Iterator[list[str]]:
    """The first three words of each statement sent, upper case."""
    shown: list[str] = []
    with statements_sent(api.state.engine) as seen:
        yield shown
    shown.extend(" ".join(statement.split()[:3]).upper() for statement in seen)


def test_a_scheduled_create_is_one_insert_and_its_audit_row(api: Api) -> None:
    """On PostgreSQL both rows are one statement, alone (store/jobs.py); its audit row is
    the same as SQLite's two INSERTs write."""
    start = future()
    with statements(api) as seen:
        job_id = api.create(name="a", command="true", schedule=f"R/{start}/PT1H")
    writes = [s for s in seen if not s.startswith(("SELECT", "BEGIN", "COMMIT", "ROLLBACK"))]
    if api.state.engine.dialect.name == "postgresql":
        assert writes == ["WITH CHANGED AS"]
    else:
        assert writes == ["INSERT INTO JOBS", "INSERT INTO AUDIT_LOG"]
    assert api.job(job_id)["next_run_at"] == start
    with api.state.sessions() as session:
        (row,) = audit.entries(session, job_id=job_id)
    assert (row.action, row.job_name, row.via) == ("create", "a", "api")
    assert row.changes["command"] == [None, "true"]
    assert row.changes["schedule"] == [None, f"R/{start}/PT1H"]


def test_a_create_with_links_still_checks_links_first(api: Api) -> None:
    parent = api.create(id="p", name="p", command="true", schedule=f"R/{future()}/PT1H")
    child = api.create(id="c", name="c", command="true", parent_jobs=[parent])
    assert api.job(child)["next_run_at"] == "0001-01-01T00:00:00Z"
    refused = api.http.post(
        "/job/",
        json={"id": "x", "name": "x", "command": "true", "schedule": f"R/{future()}/PT1H",
              "dependent_jobs": ["x"]},
    )
    assert refused.status_code == 400
    assert "cannot depend on itself" in refused.json()["error"]
    # unknown dependents are dropped, as Kala skips them at run time (Decision 9)
    linked = api.create(name="y", command="true", schedule=f"R/{future()}/PT1H",
                        dependent_jobs=["missing", child])
    assert api.job(linked)["dependent_jobs"] == [child]


# ---------------------------------------------------------------- the job list


def as_row(job: FakeJob, *, sqlite_style: bool) -> tuple:
    """A FakeJob as `listing.job_rows` reads it: SQLite gives text times, JSON text and 0/1;
    PostgreSQL gives naive datetimes and booleans, and JSON as text too (parsed JSON, as
    here without sqlite_style, is what `wire.job_values` of an ORM object gives)."""
    values = []
    for name in wire.JOB_FIELDS:
        value = getattr(job, name)
        if isinstance(value, datetime):
            naive = value.astimezone(UTC).replace(tzinfo=None)
            value = naive.isoformat(" ", "microseconds") if sqlite_style else naive
        elif name in ("remote_headers", "remote_expected_codes", "celery_task") and sqlite_style:
            value = None if value is None else json.dumps(value)  # job_rows reads JSON null as NULL
        elif isinstance(value, bool) and sqlite_style:
            value = int(value)
        values.append(value)
    return tuple(values)


# Defaults are drawn often: the list writes a job without metadata or remote properties from
# a constant, and a job with one field off its default must not take that path.
texts = st.just("") | st.text(
    alphabet=st.characters(codec="utf-8") | st.sampled_from('<>&\u2028\b\f\\"'), max_size=6
)
optional_texts = st.none() | texts
times = st.sampled_from(
    [None, None, datetime(2020, 1, 2, 3, 4, 5, 600, tzinfo=UTC)]
) | st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)
counts = st.sampled_from([0, 0, 1]) | st.integers(min_value=0, max_value=2**63 - 1)
fake_jobs = st.builds(
    FakeJob,
    id=texts.filter(bool),
    name=texts,
    command=texts,
    owner=texts,
    disabled=st.booleans(),
    on_failure_job=texts,
    schedule=texts,
    retries=counts,
    epsilon=texts,
    next_run_at=times,
    template_delimiters=texts,
    resume_at_next_scheduled_time=st.booleans(),
    success_count=counts,
    last_success=times,
    error_count=counts,
    last_error=times,
    last_attempted_run=times,
    number_of_finished_runs=counts,
    job_type=st.sampled_from([0, 1]),
    remote_url=texts,
    remote_method=texts,
    remote_body=texts,
    remote_headers=st.none() | st.dictionaries(texts, st.lists(texts, max_size=3), max_size=3),
    remote_timeout=st.just(0) | st.integers(min_value=0, max_value=2**40),
    remote_expected_codes=st.none() | st.lists(st.integers(100, 599), max_size=3),
    is_done=st.booleans(),
    timezone=optional_texts,
    retry_delay=optional_texts | st.just("PT0S"),
    retry_backoff=st.booleans(),
    run_timeout=optional_texts,
    allow_overlap=st.booleans(),
    queue=optional_texts,
    cron=optional_texts,
    overlap=st.none() | st.sampled_from(["skip", "allow"]),
    celery_task=st.none() | st.fixed_dictionaries({
        "name": texts.filter(bool),
        "args": st.lists(st.none() | st.booleans() | st.integers() | texts, max_size=3),
        "kwargs": st.dictionaries(texts, st.integers() | texts | st.lists(texts), max_size=3),
    }),
    parents_mode=st.none() | st.just("all"),
    source=st.none() | st.sampled_from(["config", "apply"]),
)
id_lists = st.none() | st.lists(texts, max_size=3)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    jobs=st.lists(fake_jobs, max_size=3, unique_by=lambda j: j.id),
    parents=id_lists,
    children=id_lists,
    with_stats=st.booleans(),
    sqlite_style=st.booleans(),
)
def test_list_is_byte_for_byte_the_wire_documents(
    jobs: list[FakeJob],
    parents: list[str] | None,
    children: list[str] | None,
    with_stats: bool,
    sqlite_style: bool,
) -> None:
    stats = [FakeRun(job_id=jobs[0].id), FakeRun(state="failed")] if jobs and with_stats else None
    first = {jobs[0].id: parents} if jobs and parents is not None else {}
    below = {jobs[0].id: children} if jobs and children is not None else {}
    runs = {jobs[0].id: stats} if stats else {}
    expected = wire.dumps(
        {
            "jobs": {
                job.id: wire.job_document(
                    job,
                    parent_ids=first.get(job.id, []),
                    child_ids=below.get(job.id, []),
                    stats=runs.get(job.id),
                )
                for job in sorted(jobs, key=lambda j: j.id)
            }
        }
    )
    rows = sorted((as_row(job, sqlite_style=sqlite_style) for job in jobs), key=lambda r: r[1])
    assert listing.list_document(rows, first, below, runs) == expected


def test_list_over_http_is_the_single_job_documents(api: Api) -> None:
    """GET /job/ (plain rows) against GET /job/{id}/ (ORM + wire.job_document) for jobs
    with every kind of field set, on the real store."""
    parent = api.create(
        id="p",
        name="p <&>",
        command="echo \u2028 \b",
        owner="o",
        schedule=f"R5/{future()}/PT1H",
        retries=3,
        epsilon="PT5S",
        timezone="Europe/Paris",
        retry_delay="PT10S",
        retry_backoff=True,
        run_timeout="PT1M",
        allow_overlap=True,
        queue="q1",
        metadata={
            "success_count": 4,
            "last_success": "2020-01-02T03:04:05.5Z",
            "error_count": 1,
            "last_error": "2020-01-02T03:04:05Z",
        },
    )
    api.create(id="c", name="c", command="true", parent_jobs=[parent])
    api.create(
        id="r",
        name="remote",
        type=1,
        disabled=True,
        remote_properties={
            "url": "http://example.com/x?a=1&b=2",
            "method": "POST",
            "body": '{"k": "<v>"}',
            "timeout": 5,
            "headers": {"X-B": ["2"], "X-A": ["1", "1b"]},
            "expected_response_codes": [200, 201],
        },
    )
    api.create(id="plain", name="plain", command="true", schedule=f"R/{future()}/PT1H")
    api.create(id="t", name="task", type=2, queue="theirs", parent_jobs=["p", "plain"],
               parents_mode="all", celery_task={"name": "m.t", "args": [1, "<&>", None],
                                                "kwargs": {"z": 1, "a": {"b": [2.5]}}})
    for job_id, status in (("p", "Success"), ("p", "Failed"), ("plain", "Success")):
        run_id = api.http.post(f"/job/start/{job_id}/?wait=false").json()["id"]
        put = api.http.put(f"/job/{job_id}/executions/{run_id}/", content=f'"{status}"')
        assert put.status_code == 204
    assert [s["success"] for s in api.job("p")["stats"]] == [True, False]
    listed = api.http.get("/job/")
    assert listed.headers["content-type"] == "application/json;charset=UTF-8"
    singles = {
        job_id: api.http.get(f"/job/{job_id}/").content
        for job_id in ("c", "p", "plain", "r", "t")
    }
    prefix = len(b'{"job":')
    inner = ",".join(f'"{key}":{body[prefix:-2].decode()}' for key, body in singles.items())
    assert listed.content == f'{{"jobs":{{{inner}}}}}\n'.encode()


def singles_listed(api: Api, job_ids: list[str]) -> bytes:
    """The list GET /job/ should answer: each job's own GET /job/{id}/ document, by id."""
    prefix = len(b'{"job":')
    inner = ",".join(
        f'"{job_id}":{api.http.get(f"/job/{job_id}/").content[prefix:-2].decode()}'
        for job_id in sorted(job_ids)
    )
    return f'{{"jobs":{{{inner}}}}}\n'.encode()


def test_a_remembered_list_follows_every_change(api: Api) -> None:
    """The list remembers each job's document between requests (listing.list_document):
    after edits, links, a run's end and a delete, it must still be the single documents."""
    for job_id in ("a", "b", "gone"):
        api.create(id=job_id, name=job_id, command="true", schedule=f"R/{future()}/PT1H")
    first = api.http.get("/job/").content
    assert first == singles_listed(api, ["a", "b", "gone"])
    assert api.http.get("/job/").content == first  # from what was remembered

    api.http.post("/job/disable/a/")
    api.create(id="child", name="child", command="true", parent_jobs=["b"])
    run_id = api.http.post("/job/start/b/?wait=false").json()["id"]
    assert api.http.put(f"/job/b/executions/{run_id}/", content='"Success"').status_code == 204
    assert api.http.delete("/job/gone/").status_code == 204
    renamed = api.http.put("/job/a/", json={"name": "renamed", "command": "true",
                                            "schedule": f"R/{future()}/PT1H"})
    assert renamed.status_code == 200

    listed = api.http.get("/job/").content
    assert listed != first
    assert listed == singles_listed(api, ["a", "b", "child"])
    b = json.loads(listed)["jobs"]["b"]
    assert b["dependent_jobs"] == ["child"]
    assert [s["success"] for s in b["stats"]] == [True]
    assert json.loads(listed)["jobs"]["a"]["name"] == "renamed"
