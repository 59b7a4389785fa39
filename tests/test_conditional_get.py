"""Conditional GET (docs/design.md Decision 34): `GET /job/` and `GET /job/{id}/` carry an
ETag from the store's version; `If-None-Match` with it answers 304 without reading a job.

The property checked after every kind of change, on both stores: a 304 is only ever given
for a document that is byte for byte the one the client has; and a list asked for again with
nothing changed in between is a 304."""

from __future__ import annotations

import gzip
from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import delete, select, text, update

from kala_celery.config import Settings
from kala_celery.runs.outcome import Outcome
from kala_celery.store import version as store_version
from kala_celery.store.tables import TERMINAL_STATES, Job, MetricCount, Run
from kala_celery.tasks.runner import execute_run
from tests.live import Api

FOREVER = "R/2099-01-01T00:00:00Z/PT1H"


class Client:
    """A poller that keeps its last list and sends its ETag."""

    def __init__(self, api: Api) -> None:
        self.api = api
        self.body, self.tag = self.full()
        self.not_modified = 0

    def full(self) -> tuple[bytes, str]:
        response = self.api.http.get("/job/")
        assert response.status_code == 200 and response.headers["ETag"]
        return response.content, response.headers["ETag"]

    def poll(self, what: str) -> None:
        """Ask with the last ETag; a 304 must mean the document did not change."""
        response = self.api.http.get("/job/", headers={"If-None-Match": self.tag})
        now_body, now_tag = self.full()
        if response.status_code == 304:
            assert response.content == b""
            assert now_body == self.body, f"304 after {what}, but the list changed"
            self.not_modified += 1
        else:
            assert response.status_code == 200, response.text
            assert response.content == now_body or response.headers["ETag"] != now_tag
        again = self.api.http.get("/job/", headers={"If-None-Match": now_tag})
        assert again.status_code == 304, f"nothing changed after {what}, yet {again}"
        self.body, self.tag = now_body, now_tag


def run_it(api: Api, settings: Settings, run_id: str, outcome: Outcome,
           during: Callable[[], None]) -> None:
    """Execute the run as a worker would, calling `during` while its command runs."""

    def command(job, settings_, env) -> Outcome:
        during()
        return outcome

    execute_run(api.state.sessions, run_id, hostname="host", settings=settings,
                attempt=command)


def pending_run(api: Api, job_id: str) -> str:
    """A manual start's run, for the test to execute (no worker takes it here)."""
    response = api.http.post(f"/job/start/{job_id}/")
    assert response.status_code == 202, response.text
    with api.state.engine.connect() as conn:
        return conn.scalar(select(Run.id).where(Run.job_id == job_id,
                                                 Run.state.in_(("pending", "sent"))))


def test_a_304_only_for_the_document_the_client_has(api: Api) -> None:
    settings = api.state.settings
    poller = Client(api)
    parent = api.create(name="parent", command="true", schedule=FOREVER, retries=1)
    poller.poll("a create")
    child = api.create(name="child", command="true", parent_job=parent)
    poller.poll("a dependent job")
    body = api.job(parent) | {"command": "echo edited"}
    assert api.http.put(f"/job/{parent}/", json=body).status_code in (200, 201)
    poller.poll("a replace")
    assert api.http.post(f"/job/disable/{parent}/").status_code == 204
    poller.poll("a disable")
    assert api.http.post(f"/job/enable/{parent}/").status_code == 204
    poller.poll("an enable")

    run_id = pending_run(api, parent)
    poller.poll("a manual start")
    run_it(api, settings, run_id, Outcome(True, "fine", None, 0),
           during=lambda: poller.poll("a run starting"))
    poller.poll("a run's success")
    run_id = pending_run(api, parent)
    run_it(api, settings, run_id, Outcome(False, "no", "exit status 1: no", 1),
           during=lambda: poller.poll("a second run starting"))
    poller.poll("a failed attempt and its retry")
    with api.state.engine.begin() as conn:  # the beat's prune of runs past the retention
        assert conn.execute(delete(Run).where(Run.id.in_(
            select(Run.id).where(Run.state.in_(TERMINAL_STATES)).limit(1).scalar_subquery()
        ))).rowcount == 1
    poller.poll("a run pruned")
    assert api.http.delete(f"/job/{child}/").status_code == 204
    poller.poll("a delete")
    assert api.http.delete("/job/all/").status_code == 204
    poller.poll("every job deleted")
    assert poller.not_modified == 0  # every change above showed in the list


def test_a_job_document_and_a_gzipped_list(api: Api) -> None:
    job_id = api.create(name="one", command="true", schedule=FOREVER)
    first = api.http.get(f"/job/{job_id}/")
    tag = first.headers["ETag"]
    again = api.http.get(f"/job/{job_id}/", headers={"If-None-Match": tag})
    assert (again.status_code, again.headers["ETag"]) == (304, tag)
    assert api.http.get("/job/nope/", headers={"If-None-Match": tag}).status_code == 404
    assert api.http.post(f"/job/disable/{job_id}/").status_code == 204
    changed = api.http.get(f"/job/{job_id}/", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.json()["job"]["disabled"] is True

    plain = api.http.get("/job/")
    with httpx.Client(base_url=str(api.http.base_url)) as raw:
        zipped = raw.get("/job/", headers={"Accept-Encoding": "gzip"})
        assert zipped.headers["Content-Encoding"] == "gzip"
        assert zipped.content == plain.content  # httpx decoded it
        asked = raw.get("/job/", headers={"Accept-Encoding": "gzip",
                                          "If-None-Match": zipped.headers["ETag"]})
        assert asked.status_code == 304
        request = raw.build_request("GET", "/job/", headers={"Accept-Encoding": "gzip"})
        response = raw.send(request, stream=True)  # the bytes on the wire: gzip, kept once
        assert gzip.decompress(b"".join(response.iter_raw())) == plain.content
        response.close()


@pytest.fixture
def api(make_api: Callable[..., Api]) -> Api:
    return make_api()


def test_counting_a_change_never_waits_for_another_transaction(api: Api) -> None:
    """PostgreSQL: each transaction counts its changes in a row of its own, so a transaction
    that edits a job while another one that edited a job is still open never waits for it
    (a shared counter row deadlocked a long transaction with the workers' claims); the beat
    folds the rows into one, and the version stays what it was."""
    if api.state.engine.dialect.name != "postgresql":
        pytest.skip("SQLite has one writer at a time")
    first, second = (api.create(name=n, command="true", schedule=FOREVER) for n in "ab")
    with api.state.engine.connect() as long_one, api.state.engine.connect() as other:
        held = long_one.begin()
        long_one.execute(update(Job).where(Job.id == first).values(name="a, edited"))
        with other.begin():
            other.execute(text("SET LOCAL lock_timeout = '2s'"))  # waiting would fail here
            other.execute(update(Job).where(Job.id == second).values(name="b, edited"))
        held.commit()
    with api.state.sessions() as session:
        before = store_version.read(session)
    with api.state.engine.begin() as conn:
        store_version.fold(conn)
    with api.state.sessions() as session:
        assert store_version.read(session) == before
        labels = session.scalars(select(MetricCount.label).where(
            MetricCount.series == "changes")).all()
    assert labels == [""]
