"""Differential: job bodies POSTed to the real Kala and to us (no run involved). A body Kala
answers 201 to is accepted here and GETs the same job back; one Kala refuses is refused with
Kala's text. Differences are only those a Decision allows, and the case names it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.kala_diff import KALA_REFUSAL, Differ, Pair, at, compare, pair_of

pytestmark = pytest.mark.timeout(120)

FUT = "FUT"  # replaced by a start an hour ahead
REMOTE = {"url": "http://127.0.0.1:9/hook"}


@pytest.fixture(scope="module")
def pair() -> Iterator[Pair]:
    for pair in pair_of():
        for side in pair.sides:
            assert side.post({"name": "parent", "command": "true",
                              "schedule": f"R/{at(3600)}/PT1H"}, "parent").status_code == 201
        yield pair


def with_start(body: Any, start: str) -> Any:
    return json.loads(json.dumps(body).replace(FUT, start))


def sched(repeat: str = "R2", interval: str = "PT1H", **fields: Any) -> dict:
    return {"name": "j", "command": "true", "schedule": f"{repeat}/{FUT}/{interval}", **fields}


def remote(**props: Any) -> dict:
    return sched("R0", "", type=1, remote_properties={**REMOTE, **props})


ACCEPTED = [
    pytest.param(sched(), (), id="R2-hourly"),
    pytest.param(sched("R"), (), id="R-forever"),
    pytest.param(sched("R0", ""), (), id="R0-empty-interval"),
    pytest.param(sched("R0", "garbage"), (), id="R0-garbage-interval"),
    pytest.param(sched("R0", "PT0S"), (), id="R0-zero-interval"),
    pytest.param(sched("XR5R"), (), id="XR5R"),
    pytest.param(sched("R+3"), (), id="R+3"),
    pytest.param(sched("R-5"), (), id="R-5-runs-once"),
    pytest.param(sched("R-1"), (), id="R-1-forever"),
    pytest.param(sched(interval="xxP1Dyy"), (), id="unanchored-interval"),
    pytest.param(sched(interval="P1W2D"), (), id="weeks-win"),
    pytest.param(sched(interval="P1Y2M3DT4H5M6S"), (), id="every-unit"),
    pytest.param(sched("R3", "PT0S"), (), id="R3-zero-interval-a-few-times"),
    pytest.param(sched("R2", "P0D"), (), id="R2-zero-days"),
    pytest.param(sched(epsilon="PT5M", retries=3), (), id="epsilon-and-retries"),
    pytest.param(sched(epsilon="PT0S"), (), id="zero-epsilon"),
    pytest.param(sched(owner="ops@example.com", resume_at_next_scheduled_time=True), (),
                 id="owner-and-resume"),
    pytest.param({"NAME": "j", "Command": "true", "SCHEDULE": f"R1/{FUT}/PT1M",
                  "templatedelimiters": "{{ }}"}, (), id="case-insensitive-keys"),
    pytest.param({"name": "first", "name ": "x", "Name": "last", "command": "true",
                  "schedule": f"R1/{FUT}/PT1M"}, (), id="last-key-wins"),
    pytest.param(sched(command="   "), (), id="blank-command"),
    pytest.param(sched(TemplateDelimiters="{{"), (), id="one-delimiter"),
    pytest.param(sched(TemplateDelimiters="a b c"), (), id="three-delimiters"),
    pytest.param(sched(TemplateDelimiters="[[ ]]", command="echo [[.Name]]"), (),
                 id="square-delimiters"),
    pytest.param(remote(), (), id="remote-plain"),
    pytest.param(remote(url="ftp://127.0.0.1/x"), (), id="remote-ftp-url"),
    pytest.param(remote(url="not a url"), (), id="remote-not-a-url"),
    pytest.param(remote(url="http://"), (), id="remote-no-host"),
    pytest.param(remote(method="FOO BAR"), (), id="remote-bad-method"),
    pytest.param(remote(method="post", body='{"a":1}'), (), id="remote-post-body"),
    pytest.param(remote(timeout=-5), (), id="remote-negative-timeout"),
    pytest.param(remote(headers={"bad name": ["x"]}), (), id="remote-bad-header-name"),
    pytest.param(remote(headers={"X-A": ["a\nb"]}), (), id="remote-header-line-break"),
    pytest.param(remote(headers={"X-B": ["2", "1"], "X-A": ["1"]}), (), id="remote-headers"),
    pytest.param(remote(expected_response_codes=[42, 1000]), (), id="remote-odd-codes"),
    pytest.param(sched(type=1, command="   ", remote_properties=REMOTE), (),
                 id="remote-ignores-command"),
    pytest.param(sched(id="all"), (), id="reserved-client-id-ignored"),
    pytest.param(sched(id="has space"), (), id="invalid-client-id-ignored"),
    pytest.param(sched(metadata={"success_count": 42, "error_count": 3,
                                 "last_success": "2026-01-01T00:00:00Z",
                                 "last_attempted_run": "0001-01-01T00:00:00Z",
                                 "number_of_finished_runs": 45}), (), id="seeded-metadata"),
    pytest.param(sched(on_failure_job="no-such-job"), (), id="unknown-on-failure-job"),
    pytest.param(sched(on_failure_job="$parent"), (), id="on-failure-job"),
    pytest.param({"name": "c", "command": "true", "parent_jobs": ["$parent"],
                  "schedule": "garbage", "epsilon": "soon"}, (),
                 id="child-garbage-schedule-and-epsilon"),
    pytest.param(sched(dependent_jobs=["no-such-job"]),
                 (Differ("dependent_jobs", ["no-such-job"], None, "Decision 9"),),
                 id="unknown-dependent-dropped-Decision-9"),
    pytest.param(sched(disabled=True),
                 (Differ("next_run_at", "armed", "zero", "Decision 8"),),
                 id="posted-disabled-not-armed-Decision-8"),
    pytest.param({"name": "go", "id": "", "command": "true", "owner": "", "disabled": False,
                  "dependent_jobs": None, "parent_jobs": None, "on_failure_job": "",
                  "schedule": f"R1/{FUT}/PT1M", "retries": 0, "epsilon": "",
                  "next_run_at": "0001-01-01T00:00:00Z", "TemplateDelimiters": "",
                  "resume_at_next_scheduled_time": False,
                  "metadata": {"success_count": 0, "last_success": "0001-01-01T00:00:00Z",
                               "error_count": 0, "last_error": "0001-01-01T00:00:00Z",
                               "last_attempted_run": "0001-01-01T00:00:00Z",
                               "number_of_finished_runs": 0},
                  "type": 0, "remote_properties": {"url": "", "method": "", "body": "",
                                                   "headers": None, "timeout": 0,
                                                   "expected_response_codes": None},
                  "stats": None, "is_done": False}, (), id="go-client-full-shape"),
    pytest.param(sched(schedule="R1/2030-01-02T03:04:05/PT1M"), (), id="zone-less-start"),
    pytest.param(sched(schedule="R1/2030-01-02T05:04:05+02:00/PT1M"), (), id="offset-start"),
]


@pytest.mark.parametrize(("body", "differ"), ACCEPTED)
def test_a_body_kala_accepts_is_accepted_with_the_same_job(
    pair: Pair, body: dict, differ: tuple[Differ, ...], request: pytest.FixtureRequest
) -> None:
    label = request.node.callspec.id
    body = with_start(body, at(3600))
    kala, ours = pair.post(body, label)
    assert (kala.status_code, ours.status_code) == (201, 201), (kala.text, ours.text)
    kala_job, ours_job = pair.jobs(label)
    if any(d.path == "next_run_at" for d in differ):  # Kala armed a timer; we did not
        assert kala_job[label]["next_run_at"] != "zero"
        kala_job[label]["next_run_at"] = "armed"
    compare(kala_job[label], ours_job[label], differ, label)
    moved_from_kala_is_the_same_job(pair, label)


def moved_from_kala_is_the_same_job(pair: Pair, label: str) -> None:
    """The job as Kala stores and shows it, POSTed here (ids of other jobs translated), is
    accepted, keeps Kala's id and is the job created here from the original body: every job
    Kala can store passes our create path."""
    stored = pair.kala.job(label)
    translate = {pair.kala.ids[lb]: pair.ours.ids[lb] for lb in pair.kala.ids
                 if lb in pair.ours.ids}
    for key in ("parent_jobs", "dependent_jobs"):
        stored[key] = [translate.get(i, i) for i in stored[key]] if stored[key] else None
    stored["on_failure_job"] = translate.get(stored["on_failure_job"], stored["on_failure_job"])
    response = pair.ours.http.post("/job/", json=stored)
    assert response.status_code == 201, response.text
    assert response.json()["id"] == stored["id"]
    pair.ours.name_id(stored["id"], label)  # so it normalises as the original
    moved = pair.ours.normal(pair.ours.job(label))
    pair.ours.name_id(translate[stored["id"]], label)
    original = pair.ours.normal(pair.ours.job(label))
    compare(original, moved, what=f"{label} moved from Kala")


REFUSED = [
    pytest.param({"command": "true"}, id="no-name"),
    pytest.param({"name": "j", "command": ""}, id="empty-command"),
    pytest.param({"name": "j"}, id="no-command"),
    pytest.param({"name": "j", "command": "true", "type": 2}, id="type-2"),
    pytest.param({"name": "j", "type": 1, "remote_properties": {"url": ""}}, id="remote-no-url"),
    pytest.param(sched(schedule="R0/2020-01-01T00:00:00Z/"), id="past-start"),
    pytest.param(sched(schedule="R0/2020-01-01T00:00:00Z/", disabled=True),
                 id="past-start-disabled"),
    pytest.param(sched(schedule="R0/2020-01-01T00:00:00Z/", is_done=True), id="past-start-done"),
    pytest.param(sched(interval="P"), id="interval-P"),
    pytest.param(sched(interval="PT"), id="interval-PT"),
    pytest.param(sched(interval="PT1.5S"), id="fractional-interval"),
    pytest.param(sched(interval="p1d"), id="lowercase-interval"),
    pytest.param(sched(interval=""), id="R2-no-interval"),
    pytest.param(sched("R1.5"), id="fractional-repeat"),
    pytest.param(sched("Rx"), id="repeat-Rx"),
    pytest.param(sched("RRR"), id="repeat-RRR"),
    pytest.param(sched(schedule="R1/2030-01-02/PT1M"), id="date-only-start"),
    pytest.param(sched(schedule="R1/2030-01-02T03:04:05+0200/PT1M"), id="offset-no-colon"),
    pytest.param(sched(schedule="R1/2030-01-02 03:04:05Z/PT1M"), id="space-for-T"),
    pytest.param(sched(schedule=f"R1/{FUT}"), id="two-parts"),
    pytest.param(sched(schedule=f"R1/{FUT}/PT1M/x"), id="four-parts"),
    pytest.param(sched(epsilon="soon"), id="bad-epsilon-with-schedule"),
    pytest.param({"name": "c", "command": "true", "parent_jobs": ["no-such-job"]},
                 id="unknown-parent"),
]


@pytest.mark.parametrize("body", REFUSED)
def test_a_body_kala_refuses_is_refused_with_kalas_text(pair: Pair, body: dict) -> None:
    before = [len(side.http.get("/job/").json()["jobs"]) for side in pair.sides]
    kala, ours = pair.post(with_start(body, at(3600)))
    assert (kala.status_code, ours.status_code) == (400, 400), (kala.text, ours.text)
    assert kala.json() == {"error": KALA_REFUSAL}
    assert ours.json()["error"].startswith(KALA_REFUSAL + ": "), ours.text
    after = [len(side.http.get("/job/").json()["jobs"]) for side in pair.sides]
    if "parent_jobs" in body:  # Decision 9: Kala keeps an orphan, we store nothing
        assert (after[0] - before[0], after[1] - before[1]) == (1, 0), "Decision 9"
    else:
        assert after == before


DECODE_ERRORS = [
    pytest.param(b"", id="empty-body"),
    pytest.param(b"asd", id="not-json"),
    pytest.param(b"[1]", id="an-array"),
    pytest.param(b'{"type":"0"}', id="type-as-string"),
    pytest.param(b'{"retries":-1}', id="negative-retries"),
    pytest.param(b'{"retries":1.5}', id="fractional-retries"),
    pytest.param(b'{"disabled":"yes"}', id="bool-as-string"),
    pytest.param(b'{"name":"j"} x', id="trailing-garbage"),
    pytest.param(b'{"remote_properties":{"headers":{"A":"b"}}}', id="header-not-a-list"),
    pytest.param(b'{"metadata":{"success_count":"x"}}', id="nested-metadata-field"),
    pytest.param(b'{"remote_properties":{"timeout":"x"}}', id="nested-remote-field"),
    pytest.param(b'{"remote_properties":{"expected_response_codes":["x"]}}', id="nested-codes"),
    pytest.param(b'{"metadata":5}', id="metadata-not-an-object"),
    pytest.param(b'{"stats":{"a":1}}', id="stats-not-a-list"),
    pytest.param(b'{"dependent_jobs":[1]}', id="dependents-not-strings"),
    pytest.param(b"null", id="null-body"),
]


@pytest.mark.parametrize("body", DECODE_ERRORS)
def test_a_body_kala_cannot_decode_gets_gos_message(pair: Pair, body: bytes) -> None:
    kala, ours = pair.post(body)
    assert (kala.status_code, ours.status_code) == (400, 400)
    if body == b"null":  # an empty job: refused by validation, with our reason added
        assert kala.json() == {"error": KALA_REFUSAL}
        assert ours.json()["error"].startswith(KALA_REFUSAL + ": ")
    else:
        assert ours.json() == kala.json()


def test_a_body_over_a_mib_counts_its_first_mib_as_kala_does(pair: Pair) -> None:
    job = json.dumps({"name": "big", "command": "true", "schedule": f"R1/{at(3600)}/PT1M"})
    padded = job.encode() + b" " * (1 << 20)  # the document ends within the first MiB
    kala, ours = pair.post(padded, "big")
    assert (kala.status_code, ours.status_code) == (201, 201), ours.text
    kala_job, ours_job = pair.jobs("big")
    compare(kala_job, ours_job, what="padded body")
    cut = json.dumps({"name": "big", "command": "x" * (1 << 20)}).encode()  # it does not
    kala, ours = pair.post(cut)
    assert kala.json() == {"error": "unexpected end of JSON input"}
    compare({"status": kala.status_code}, {"status": ours.status_code},
            (Differ("status", 400, 413, "Decision 2"),), "a document past 1 MiB")


def test_a_fresh_client_id_is_kept_where_kala_ignores_it_decision_14(pair: Pair) -> None:
    kala, ours = pair.post(with_start(sched(id="nightly-report"), at(3600)), "client-id")
    assert (kala.status_code, ours.status_code) == (201, 201)
    compare({"id": kala.json()["id"] == "nightly-report"}, {"id": ours.json()["id"]},
            (Differ("id", False, "nightly-report", "Decision 14"),), "a client id")
    kala_job, ours_job = pair.jobs("client-id")
    compare(kala_job, ours_job, what="a job with a client id")
