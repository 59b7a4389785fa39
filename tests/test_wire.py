"""kala_celery.wire: Kala's JSON out (exact bytes) and in (Go's decoding rules and messages)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kala_celery import wire
from kala_celery.wire import WireError, decode, go_scanner, kala_json

# ---------------------------------------------------------------- stand-ins


@dataclass
class FakeJob:
    id: str = "20c7488d-f161-4697-4195-4457999d0114"
    name: str = "a"
    command: str = "echo hi"
    owner: str = "o@x"
    disabled: bool = False
    on_failure_job: str = ""
    schedule: str = "R2/2026-11-22T19:27:53Z/PT10S"
    retries: int = 0
    epsilon: str = ""
    next_run_at: datetime | None = datetime(2026, 11, 22, 19, 27, 53, tzinfo=UTC)
    template_delimiters: str = ""
    resume_at_next_scheduled_time: bool = False
    success_count: int = 0
    last_success: datetime | None = None
    error_count: int = 0
    last_error: datetime | None = None
    last_attempted_run: datetime | None = None
    number_of_finished_runs: int = 0
    job_type: int = 0
    remote_url: str = ""
    remote_method: str = ""
    remote_body: str = ""
    remote_headers: dict[str, list[str]] | None = None
    remote_timeout: int = 0
    remote_expected_codes: list[int] | None = None
    is_done: bool = False
    timezone: str | None = None
    retry_delay: str | None = None
    retry_backoff: bool = False
    run_timeout: str | None = None
    allow_overlap: bool = False
    queue: str | None = None
    cron: str | None = None
    overlap: str | None = None
    celery_task: dict | None = None
    parents_mode: str | None = None
    source: str | None = None


T0 = datetime(2026, 11, 22, 18, 28, 12, 994555, tzinfo=UTC)


@dataclass
class FakeRun:
    id: str = "5f0c7a0e-1111-4222-8333-444455556666"
    job_id: str = "aa239220-cf36-4ff8-5a3b-c7f8597291a1"
    scheduled_for: datetime | None = T0
    trigger: str = "schedule"
    state: str = "success"
    attempts: int = 1
    started_at: datetime | None = T0
    created_at: datetime | None = T0 - timedelta(seconds=1)
    finished_at: datetime | None = T0 + timedelta(seconds=1)
    duration_ns: int | None = 1379462
    output: str | None = "hello"
    error: str | None = None


def doc_bytes(job: FakeJob, **kw: Any) -> bytes:
    kw.setdefault("parent_ids", [])
    kw.setdefault("child_ids", [])
    kw.setdefault("stats", None)
    return wire.dumps(wire.job_document(job, **kw))


# docs/kala.md §4's example of a fresh scheduled job, with next_run_at at the exact instant.
SPEC_FRESH_JOB = (
    b'{"job":{"name":"a","id":"20c7488d-f161-4697-4195-4457999d0114","command":"echo hi",'
    b'"owner":"o@x","disabled":false,"dependent_jobs":null,"parent_jobs":null,'
    b'"on_failure_job":"","schedule":"R2/2026-11-22T19:27:53Z/PT10S","retries":0,"epsilon":"",'
    b'"next_run_at":"2026-11-22T19:27:53Z","TemplateDelimiters":"",'
    b'"resume_at_next_scheduled_time":false,"metadata":{"success_count":0,'
    b'"last_success":"0001-01-01T00:00:00Z","error_count":0,"last_error":"0001-01-01T00:00:00Z",'
    b'"last_attempted_run":"0001-01-01T00:00:00Z","number_of_finished_runs":0},"type":0,'
    b'"remote_properties":{"url":"","method":"","body":"","headers":null,"timeout":0,'
    b'"expected_response_codes":null},"stats":null,"is_done":false}}\n'
)


# ================================================================ dumps


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"a": "<>&"}, b'{"a":"\\u003c\\u003e\\u0026"}\n'),
        ({"<k>": 1}, b'{"\\u003ck\\u003e":1}\n'),
        ("\u2028x\u2029", b'"\\u2028x\\u2029"\n'),
        ("é☃😀", '"é☃😀"\n'.encode()),
        ("line\nbreak\ttab\rcr", b'"line\\nbreak\\ttab\\rcr"\n'),
        ("\b\f\x01\x1f\x7f", b'"\\u0008\\u000c\\u0001\\u001f\x7f"\n'),
        ("back\\slash \\b \\f", b'"back\\\\slash \\\\b \\\\f"\n'),
        ('quote"', b'"quote\\""\n'),
        ("\ud800", b'"\\ufffd"\n'),
        (
            {"b": 1, "a": [1, 2, None, True, False], "c": {}},
            b'{"b":1,"a":[1,2,null,true,false],"c":{}}\n',
        ),
        ([], b"[]\n"),
        (None, b"null\n"),
        (-9223372036854775808, b"-9223372036854775808\n"),
        ({"t": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)}, b'{"t":"2026-01-02T03:04:05Z"}\n'),
        ({"x": ("a", "b")}, b'{"x":["a","b"]}\n'),
    ],
)
def test_dumps_exact_bytes(obj: Any, expected: bytes) -> None:
    assert wire.dumps(obj) == expected


def test_dumps_one_trailing_newline_only() -> None:
    out = wire.dumps({"a": "x\n"})
    assert out.endswith(b'"}\n') and out.count(b"\n") == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), {"a": object()}])
def test_dumps_refuses_what_go_refuses(bad: Any) -> None:
    with pytest.raises((ValueError, TypeError)):
        wire.dumps(bad)


def test_sorted_map_sorts_keys_and_keeps_none() -> None:
    assert list(wire.sorted_map({"b": 1, "a": 2, "B": 3})) == ["B", "a", "b"]  # byte order
    assert wire.sorted_map(None) is None
    assert wire.dumps({"jobs": wire.sorted_map({"z": 1, "a": 2})}) == b'{"jobs":{"a":2,"z":1}}\n'


# ================================================================ format_time


@pytest.mark.parametrize(
    ("t", "expected"),
    [
        (None, "0001-01-01T00:00:00Z"),
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00Z"),
        (datetime(2026, 11, 22, 19, 28, 53, tzinfo=UTC), "2026-11-22T19:28:53Z"),
        (datetime(2026, 11, 22, 19, 28, 53, 30, tzinfo=UTC), "2026-11-22T19:28:53.00003Z"),
        (datetime(2026, 11, 22, 19, 28, 53, 500000, tzinfo=UTC), "2026-11-22T19:28:53.5Z"),
        (datetime(2026, 11, 22, 19, 28, 53, 123456, tzinfo=UTC), "2026-11-22T19:28:53.123456Z"),
        (datetime(2026, 11, 22, 19, 28, 53, 120, tzinfo=UTC), "2026-11-22T19:28:53.00012Z"),
        (datetime(2026, 11, 22, 19, 28, 53), "2026-11-22T19:28:53Z"),  # naive = UTC
        (
            datetime(2026, 11, 22, 11, 28, 53, tzinfo=timezone(timedelta(hours=-8))),
            "2026-11-22T19:28:53Z",
        ),
        (
            datetime(2026, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=5, minutes=30))),
            "2025-12-31T19:00:00Z",
        ),
        (datetime(999, 3, 4, 5, 6, 7, tzinfo=UTC), "0999-03-04T05:06:07Z"),
    ],
)
def test_format_time(t: datetime | None, expected: str) -> None:
    assert wire.format_time(t) == expected


def test_zero_time_helpers() -> None:
    assert wire.ZERO_TIME == "0001-01-01T00:00:00Z"
    assert wire.format_time(wire.ZERO_DATETIME) == wire.ZERO_TIME
    assert wire.is_zero_time(None)
    assert wire.is_zero_time(datetime(1, 1, 1))
    assert wire.is_zero_time(wire.ZERO_DATETIME)
    assert not wire.is_zero_time(T0)


# ================================================================ job_document


def test_fresh_job_is_byte_for_byte_kala() -> None:
    job = FakeJob()
    doc = wire.job_document(job, parent_ids=[], child_ids=[], stats=None)
    assert wire.dumps({"job": doc}) == SPEC_FRESH_JOB


def test_empty_stats_list_is_null_and_stats_can_be_left_out() -> None:
    job = FakeJob()
    assert doc_bytes(job, stats=[]) == SPEC_FRESH_JOB[len(b'{"job":') : -2] + b"\n"
    doc = wire.job_document(job, parent_ids=[], child_ids=[], stats=None, include_stats=False)
    assert "stats" not in doc
    assert list(doc)[-2:] == ["remote_properties", "is_done"]


def test_job_document_key_order() -> None:
    doc = wire.job_document(FakeJob(), parent_ids=[], child_ids=[], stats=None)
    assert list(doc) == [
        "name", "id", "command", "owner", "disabled", "dependent_jobs", "parent_jobs",
        "on_failure_job", "schedule", "retries", "epsilon", "next_run_at", "TemplateDelimiters",
        "resume_at_next_scheduled_time", "metadata", "type", "remote_properties", "stats",
        "is_done",
    ]  # fmt: skip
    assert list(doc["metadata"]) == [
        "success_count", "last_success", "error_count", "last_error", "last_attempted_run",
        "number_of_finished_runs",
    ]  # fmt: skip
    assert list(doc["remote_properties"]) == [
        "url", "method", "body", "headers", "timeout", "expected_response_codes",
    ]  # fmt: skip


def test_job_document_filled_in() -> None:
    job = FakeJob(
        disabled=True,
        retries=3,
        epsilon="PT5S",
        next_run_at=None,
        template_delimiters="{{ }}",
        resume_at_next_scheduled_time=True,
        success_count=4,
        last_success=datetime(2026, 1, 1, tzinfo=UTC),
        error_count=2,
        last_error=datetime(2026, 1, 2, 0, 0, 0, 5, tzinfo=UTC),
        last_attempted_run=datetime(2026, 1, 3, tzinfo=timezone(timedelta(hours=1))),
        number_of_finished_runs=5,
        job_type=1,
        remote_url="http://h/x?a=1&b=<2>",
        remote_method="POST",
        remote_body='{"k":"v"}',
        remote_headers={"X-B": ["2", "3"], "Content-Type": ["application/json"], "A": []},
        remote_timeout=7,
        remote_expected_codes=[200, 201],
        is_done=True,
    )
    doc = wire.job_document(job, parent_ids=["p1", "p2"], child_ids=["c1"], stats=[FakeRun()])
    assert doc["dependent_jobs"] == ["c1"]
    assert doc["parent_jobs"] == ["p1", "p2"]
    assert doc["next_run_at"] == wire.ZERO_TIME
    assert doc["metadata"] == {
        "success_count": 4,
        "last_success": "2026-01-01T00:00:00Z",
        "error_count": 2,
        "last_error": "2026-01-02T00:00:00.000005Z",
        "last_attempted_run": "2026-01-02T23:00:00Z",
        "number_of_finished_runs": 5,
    }
    assert list(doc["remote_properties"]["headers"]) == ["A", "Content-Type", "X-B"]
    assert wire.dumps(doc["remote_properties"]) == (
        b'{"url":"http://h/x?a=1\\u0026b=\\u003c2\\u003e","method":"POST",'
        b'"body":"{\\"k\\":\\"v\\"}","headers":{"A":[],"Content-Type":["application/json"],'
        b'"X-B":["2","3"]},"timeout":7,"expected_response_codes":[200,201]}\n'
    )
    assert doc["stats"] == [wire.kala_stat(FakeRun())]
    assert doc["type"] == 1 and doc["is_done"] is True and doc["disabled"] is True
    assert doc["TemplateDelimiters"] == "{{ }}"


def test_job_document_empty_containers_stay_empty() -> None:
    job = FakeJob(remote_headers={}, remote_expected_codes=[])
    rp = wire.job_document(job, parent_ids=[], child_ids=[], stats=None)["remote_properties"]
    assert rp["headers"] == {} and rp["expected_response_codes"] == []


EXTENSIONS = [
    ("timezone", "Europe/Berlin"),
    ("retry_delay", "PT30S"),
    ("retry_backoff", True),
    ("run_timeout", "PT1H"),
    ("allow_overlap", True),
    ("queue", "host-a"),
    ("cron", "0 9 * * MON-FRI"),
    ("overlap", "allow"),
]


@pytest.mark.parametrize(("name", "value"), EXTENSIONS)
def test_each_extension_appears_only_when_set(name: str, value: Any) -> None:
    doc = wire.job_document(FakeJob(**{name: value}), parent_ids=[], child_ids=[], stats=None)
    assert list(doc)[-2:] == ["is_done", name]
    assert doc[name] == value


def test_all_extensions_in_order_after_is_done() -> None:
    job = FakeJob(**dict(EXTENSIONS))
    doc = wire.job_document(job, parent_ids=[], child_ids=[], stats=None)
    assert list(doc)[list(doc).index("is_done") + 1 :] == [name for name, _ in EXTENSIONS]
    assert doc_bytes(job).endswith(
        b'"is_done":false,"timezone":"Europe/Berlin","retry_delay":"PT30S","retry_backoff":true,'
        b'"run_timeout":"PT1H","allow_overlap":true,"queue":"host-a","cron":"0 9 * * MON-FRI",'
        b'"overlap":"allow"}\n'
    )


@pytest.mark.parametrize(
    "defaults",
    [
        {"timezone": "", "retry_delay": "", "run_timeout": "", "queue": "", "cron": "",
         "overlap": ""},
        {"retry_delay": "PT0S"},
        {"retry_backoff": False, "allow_overlap": False},
    ],
)
def test_extensions_at_default_are_left_out(defaults: dict[str, Any]) -> None:
    assert doc_bytes(FakeJob(**defaults)) == SPEC_FRESH_JOB[len(b'{"job":') : -2] + b"\n"


def test_job_document_works_without_extension_attributes() -> None:
    @dataclass
    class PlainJob:
        id: str = "x"
        name: str = "n"
        command: str = "c"
        owner: str = ""
        disabled: bool = False
        on_failure_job: str = ""
        schedule: str = ""
        retries: int = 0
        epsilon: str = ""
        next_run_at: datetime | None = None
        template_delimiters: str = ""
        resume_at_next_scheduled_time: bool = False
        success_count: int = 0
        last_success: datetime | None = None
        error_count: int = 0
        last_error: datetime | None = None
        last_attempted_run: datetime | None = None
        number_of_finished_runs: int = 0
        job_type: int = 0
        remote_url: str = ""
        remote_method: str = ""
        remote_body: str = ""
        remote_headers: dict[str, list[str]] | None = None
        remote_timeout: int = 0
        remote_expected_codes: list[int] | None = None
        is_done: bool = False

    doc = wire.job_document(PlainJob(), parent_ids=[], child_ids=[], stats=None)
    assert list(doc)[-1] == "is_done"


# ================================================================ runs and app stats


def test_kala_stat_shape_and_bytes() -> None:
    assert wire.dumps(wire.kala_stat(FakeRun())) == (
        b'{"job_id":"aa239220-cf36-4ff8-5a3b-c7f8597291a1","ran_at":"2026-11-22T18:28:12.994555Z",'
        b'"number_of_retries":0,"success":true,"execution_duration":1379462}\n'
    )


@pytest.mark.parametrize(
    ("run", "expected"),
    [
        (FakeRun(attempts=3, state="failed"), {"number_of_retries": 2, "success": False}),
        (FakeRun(attempts=0, state="pending"), {"number_of_retries": 0, "success": False}),
        (FakeRun(duration_ns=None), {"execution_duration": 0}),
        (FakeRun(started_at=None), {"ran_at": "2026-11-22T18:28:11.994555Z"}),
        (FakeRun(started_at=None, created_at=None), {"ran_at": wire.ZERO_TIME}),
    ],
)
def test_kala_stat_fields(run: FakeRun, expected: dict[str, Any]) -> None:
    stat = wire.kala_stat(run)
    assert list(stat) == ["job_id", "ran_at", "number_of_retries", "success", "execution_duration"]
    assert {k: stat[k] for k in expected} == expected


def test_execution_shape_and_bytes() -> None:
    assert wire.dumps(wire.execution(FakeRun())) == (
        b'{"id":"5f0c7a0e-1111-4222-8333-444455556666",'
        b'"job_id":"aa239220-cf36-4ff8-5a3b-c7f8597291a1","ran_at":"2026-11-22T18:28:12.994555Z",'
        b'"number_of_retries":0,"status":"Success","execution_duration":1379462,"output":"hello",'
        b'"state":"success","trigger":"schedule","scheduled_for":"2026-11-22T18:28:12.994555Z",'
        b'"error":""}\n'
    )


@pytest.mark.parametrize(
    ("state", "status"),
    [
        ("pending", "Pending"),
        ("sent", "Pending"),
        ("started", "Started"),
        ("success", "Success"),
        ("failed", "Failed"),
        ("lost", "Failed"),
        ("skipped", "Skipped"),
    ],
)
def test_execution_status(state: str, status: str) -> None:
    assert wire.execution(FakeRun(state=state))["status"] == status


def test_execution_none_fields() -> None:
    run = FakeRun(output=None, error="boom", duration_ns=None, started_at=None, attempts=2)
    ex = wire.execution(run)
    assert ex["output"] == "" and ex["error"] == "boom"
    assert ex["execution_duration"] == 0 and ex["number_of_retries"] == 1
    assert ex["ran_at"] == "2026-11-22T18:28:11.994555Z"


def test_app_stats_document() -> None:
    doc = wire.app_stats_document(
        active_jobs=2,
        disabled_jobs=1,
        jobs=3,
        error_count=4,
        success_count=5,
        next_run_at=datetime(2026, 11, 22, 19, 27, 53, tzinfo=UTC),
        last_attempted_run=None,
        created=datetime(2026, 11, 22, 19, 0, 0, 250000, tzinfo=UTC),
    )
    assert wire.dumps(doc) == (
        b'{"Stats":{"active_jobs":2,"disabled_jobs":1,"jobs":3,"error_count":4,"success_count":5,'
        b'"next_run_at":"2026-11-22T19:27:53Z","last_attempted_run":"0001-01-01T00:00:00Z",'
        b'"created":"2026-11-22T19:00:00.25Z"}}\n'
    )


# ================================================================ decode_job: values


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (b"{}", {}),
        (b"null", {}),
        (b" \t\r\n null \n", {}),
        (b'{"name":"a"}', {"name": "a"}),
        # case-insensitive keys, including Go's Kelvin sign and long s folding
        (b'{"NAME":"a","Schedule":"R/x","templatedelimiters":"<% %>"}',
         {"name": "a", "schedule": "R/x", "template_delimiters": "<% %>"}),
        ('{"\u017fchedule":"s","\u212aey":1}'.encode(), {"schedule": "s"}),
        (b'{"TemplateDelimiters":"{{ }}"}', {"template_delimiters": "{{ }}"}),
        (b'{"template_delimiters":"{{ }}"}', {}),  # no snake_case form in Kala
        (b'{"n\\u0061me":"escaped key"}', {"name": "escaped key"}),
        # unknown keys are ignored whatever their value
        (b'{"bogus":[1,{"x":null}],"name":"a","other":1e999}', {"name": "a"}),
        # last key wins
        (b'{"name":"a","Name":"b"}', {"name": "b"}),
        (b'{"retries":1,"retries":2}', {"retries": 2}),
        # null: as if absent; a later null leaves scalars alone, and clears slices/maps
        (b'{"name":null,"retries":null,"disabled":null,"metadata":null,"next_run_at":null}', {}),
        (b'{"name":"a","name":null}', {"name": "a"}),
        (b'{"dependent_jobs":["x"],"dependent_jobs":null}', {}),
        (b'{"dependent_jobs":["a",null,"b"]}', {"dependent_jobs": ["a", "", "b"]}),
        (b'{"parent_jobs":[]}', {"parent_jobs": []}),
        # repeated structs and maps merge, as Go decodes into the same value
        (b'{"metadata":{"success_count":1},"METADATA":{"error_count":2}}',
         {"metadata": {"success_count": 1, "error_count": 2}}),
        (b'{"remote_properties":{"headers":{"A":["1"]}},'
         b'"remote_properties":{"headers":{"B":["2"]}}}',
         {"remote_properties": {"headers": {"A": ["1"], "B": ["2"]}}}),
        (b'{"remote_properties":{"headers":{"A":null,"A2":[]}}}',
         {"remote_properties": {"headers": {"A": [], "A2": []}}}),
        (b'{"remote_properties":{"expected_response_codes":[200,null,-1]}}',
         {"remote_properties": {"expected_response_codes": [200, 0, -1]}}),
        (b'{"metadata":{}}', {"metadata": {}}),
        # integers at their limits
        (b'{"retries":18446744073709551615}', {"retries": 18446744073709551615}),
        (b'{"type":-9223372036854775808}', {"type": -9223372036854775808}),
        (b'{"remote_properties":{"timeout":9223372036854775807}}',
         {"remote_properties": {"timeout": 9223372036854775807}}),
        (b'{"type":-0}', {"type": 0}),
        # booleans
        (b'{"disabled":true,"is_done":false,"resume_at_next_scheduled_time":true}',
         {"disabled": True, "is_done": False, "resume_at_next_scheduled_time": True}),
        # strings: non-ASCII, escapes, lone surrogates become U+FFFD (as Go)
        ('{"name":"h\u00e9 \u2603 <&>"}'.encode(), {"name": "h\u00e9 \u2603 <&>"}),
        (b'{"name":"\\ud83d\\ude00 \\ud800x \\n"}', {"name": "\U0001f600 \ufffdx \n"}),
        # extensions
        (b'{"timezone":"Europe/Berlin","retry_delay":"PT1S","retry_backoff":true,'
         b'"run_timeout":"PT2M","allow_overlap":false,"queue":"q1","cron":"0 9 * * *",'
         b'"OVERLAP":"skip"}',
         {"timezone": "Europe/Berlin", "retry_delay": "PT1S", "retry_backoff": True,
          "run_timeout": "PT2M", "allow_overlap": False, "queue": "q1", "cron": "0 9 * * *",
          "overlap": "skip"}),
        # stats: kept as given (plain values), only checked to be a list of objects
        (b'{"stats":[{"job_id":"j","execution_duration":12,"x":1.5},null]}',
         {"stats": [{"job_id": "j", "execution_duration": 12, "x": 1.5}, None]}),
        (b'{"stats":[]}', {"stats": []}),
        (b'{"stats":null}', {}),
    ],
)  # fmt: skip
def test_decode_job_values(body: bytes, expected: dict[str, Any]) -> None:
    assert wire.decode_job(body) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0001-01-01T00:00:00Z", wire.ZERO_DATETIME),
        ("2026-11-22T19:27:53Z", utc(2026, 11, 22, 19, 27, 53)),
        ("2026-11-22T19:27:53.000031006Z", utc(2026, 11, 22, 19, 27, 53, 31)),
        ("2026-11-22T19:27:53.5Z", utc(2026, 11, 22, 19, 27, 53, 500000)),
        ("2026-11-22T11:27:53-08:00", utc(2026, 11, 22, 19, 27, 53)),
        ("2026-11-23T01:27:53+06:00", utc(2026, 11, 22, 19, 27, 53)),
        ("2024-02-29T00:00:00Z", utc(2024, 2, 29)),
        ("9999-12-31T23:59:59.999999999Z", utc(9999, 12, 31, 23, 59, 59, 999999)),
    ],
)
def test_decode_times(text: str, expected: datetime) -> None:
    got = wire.decode_job(json.dumps({"next_run_at": text}).encode())["next_run_at"]
    assert got == expected
    assert got.utcoffset() == timedelta(0)


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("2026-11-22T19:27:53", "missing time zone"),
        ("2026-11-22 19:27:53Z", "want RFC 3339"),
        ("2026-11-22t19:27:53Z", "want RFC 3339"),
        ("2026-11-22T19:27:53z", "want RFC 3339"),
        ("2026-11-22T19:27Z", "want RFC 3339"),
        ("2026-1-22T19:27:53Z", "want RFC 3339"),
        ("2026-11-22T19:27:53+0100", "want RFC 3339"),
        ("", "want RFC 3339"),
        ("yesterday", "want RFC 3339"),
        ("\u0662026-11-22T19:27:53Z", "want RFC 3339"),  # Arabic-Indic digit
        ("2026-13-22T19:27:53Z", "month out of range"),
        ("2026-00-22T19:27:53Z", "month out of range"),
        ("2025-02-29T19:27:53Z", "day out of range"),
        ("2026-11-31T19:27:53Z", "day out of range"),
        ("2026-11-22T24:00:00Z", "hour out of range"),
        ("2026-11-22T19:60:00Z", "minute out of range"),
        ("2026-11-22T19:27:60Z", "second out of range"),
        ("0000-01-01T00:00:00Z", "year out of range"),
        ("2026-11-22T19:27:53+24:00", "time zone offset out of range"),
        ("0001-01-01T00:00:00+01:00", "year out of range"),
        ("9999-12-31T23:00:00-01:00", "year out of range"),
    ],
)
def test_decode_bad_times(text: str, reason: str) -> None:
    with pytest.raises(WireError) as err:
        wire.decode_job(json.dumps({"metadata": {"last_success": text}}).encode())
    message = str(err.value)
    assert message.startswith("parsing time ")
    assert "Go struct field Metadata.metadata.last_success of type time.Time" in message
    assert reason in message


def test_decode_bad_time_message_is_bounded() -> None:
    with pytest.raises(WireError) as err:
        wire.decode_job(json.dumps({"next_run_at": "x" * 10000}).encode())
    assert len(str(err.value)) < 300
    assert "Job.next_run_at" in str(err.value)


# ================================================================ decode_job: Go type errors


def cannot(kind: str, path: str, go_type: str) -> str:
    return f"json: cannot unmarshal {kind} into Go struct field {path} of type {go_type}"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        # the messages quoted in docs/kala.md §1.5 and the brief
        (b'{"type":"1"}', cannot("string", "Job.type", "job.jobType")),
        (b'{"retries":-1}', cannot("number -1", "Job.retries", "uint")),
        (b'{"retries":1.5}', cannot("number 1.5", "Job.retries", "uint")),
        (b'{"name":true}', cannot("bool", "Job.name", "string")),
        (b'{"remote_properties":{"headers":{"A":{"x":1}}}}',
         cannot("object", "RemoteProperties.remote_properties.headers", "[]string")),
        # every field type
        (b'{"name":1}', cannot("number", "Job.name", "string")),
        (b'{"id":[]}', cannot("array", "Job.id", "string")),
        (b'{"command":{}}', cannot("object", "Job.command", "string")),
        (b'{"owner":false}', cannot("bool", "Job.owner", "string")),
        (b'{"on_failure_job":0}', cannot("number", "Job.on_failure_job", "string")),
        (b'{"schedule":["R"]}', cannot("array", "Job.schedule", "string")),
        (b'{"epsilon":1}', cannot("number", "Job.epsilon", "string")),
        (b'{"templatedelimiters":1}', cannot("number", "Job.TemplateDelimiters", "string")),
        (b'{"disabled":"true"}', cannot("string", "Job.disabled", "bool")),
        (b'{"disabled":1}', cannot("number", "Job.disabled", "bool")),
        (b'{"is_done":0}', cannot("number", "Job.is_done", "bool")),
        (b'{"resume_at_next_scheduled_time":"false"}',
         cannot("string", "Job.resume_at_next_scheduled_time", "bool")),
        (b'{"retries":"1"}', cannot("string", "Job.retries", "uint")),
        (b'{"retries":true}', cannot("bool", "Job.retries", "uint")),
        (b'{"retries":1e3}', cannot("number 1e3", "Job.retries", "uint")),
        (b'{"retries":1E+3}', cannot("number 1E+3", "Job.retries", "uint")),
        (b'{"retries":1.0}', cannot("number 1.0", "Job.retries", "uint")),
        (b'{"retries":-0}', cannot("number -0", "Job.retries", "uint")),
        (b'{"retries":18446744073709551616}',
         cannot("number 18446744073709551616", "Job.retries", "uint")),
        pytest.param(b'{"retries":' + b"9" * 5000 + b"}",
                     cannot("number " + "9" * 5000, "Job.retries", "uint"), id="5000-digits"),
        (b'{"type":1.5}', cannot("number 1.5", "Job.type", "job.jobType")),
        (b'{"type":9223372036854775808}',
         cannot("number 9223372036854775808", "Job.type", "job.jobType")),
        (b'{"type":-9223372036854775809}',
         cannot("number -9223372036854775809", "Job.type", "job.jobType")),
        (b'{"type":[0]}', cannot("array", "Job.type", "job.jobType")),
        (b'{"dependent_jobs":"a"}', cannot("string", "Job.dependent_jobs", "[]string")),
        (b'{"dependent_jobs":{}}', cannot("object", "Job.dependent_jobs", "[]string")),
        (b'{"dependent_jobs":["a",1]}', cannot("number", "Job.dependent_jobs", "string")),
        (b'{"parent_jobs":[["a"]]}', cannot("array", "Job.parent_jobs", "string")),
        (b'{"next_run_at":0}', cannot("number", "Job.next_run_at", "time.Time")),
        (b'{"next_run_at":{}}', cannot("object", "Job.next_run_at", "time.Time")),
        (b'{"metadata":[]}', cannot("array", "Job.metadata", "job.Metadata")),
        (b'{"metadata":"x"}', cannot("string", "Job.metadata", "job.Metadata")),
        (b'{"metadata":{"success_count":-1}}',
         cannot("number -1", "Metadata.metadata.success_count", "uint")),
        (b'{"metadata":{"Error_Count":"2"}}',
         cannot("string", "Metadata.metadata.error_count", "uint")),
        (b'{"metadata":{"number_of_finished_runs":0.5}}',
         cannot("number 0.5", "Metadata.metadata.number_of_finished_runs", "uint")),
        (b'{"metadata":{"last_error":false}}',
         cannot("bool", "Metadata.metadata.last_error", "time.Time")),
        (b'{"metadata":{"last_attempted_run":1}}',
         cannot("number", "Metadata.metadata.last_attempted_run", "time.Time")),
        (b'{"remote_properties":true}',
         cannot("bool", "Job.remote_properties", "job.RemoteProperties")),
        (b'{"remote_properties":{"url":1}}',
         cannot("number", "RemoteProperties.remote_properties.url", "string")),
        (b'{"remote_properties":{"method":[]}}',
         cannot("array", "RemoteProperties.remote_properties.method", "string")),
        (b'{"remote_properties":{"body":{}}}',
         cannot("object", "RemoteProperties.remote_properties.body", "string")),
        (b'{"remote_properties":{"headers":[{"A":"1"}]}}',
         cannot("array", "RemoteProperties.remote_properties.headers", "map[string][]string")),
        (b'{"remote_properties":{"headers":"A: 1"}}',
         cannot("string", "RemoteProperties.remote_properties.headers", "map[string][]string")),
        (b'{"remote_properties":{"headers":{"A":"1"}}}',
         cannot("string", "RemoteProperties.remote_properties.headers", "[]string")),
        (b'{"remote_properties":{"headers":{"A":[1]}}}',
         cannot("number", "RemoteProperties.remote_properties.headers", "string")),
        (b'{"remote_properties":{"timeout":"30"}}',
         cannot("string", "RemoteProperties.remote_properties.timeout", "int")),
        (b'{"remote_properties":{"timeout":1.5}}',
         cannot("number 1.5", "RemoteProperties.remote_properties.timeout", "int")),
        (b'{"remote_properties":{"expected_response_codes":200}}',
         cannot("number", "RemoteProperties.remote_properties.expected_response_codes", "[]int")),
        (b'{"remote_properties":{"expected_response_codes":["200"]}}',
         cannot("string", "RemoteProperties.remote_properties.expected_response_codes", "int")),
        (b'{"remote_properties":{"expected_response_codes":[2e2]}}',
         cannot("number 2e2", "RemoteProperties.remote_properties.expected_response_codes", "int")),
        (b'{"stats":{}}', cannot("object", "Job.stats", "[]*job.JobStat")),
        (b'{"stats":1}', cannot("number", "Job.stats", "[]*job.JobStat")),
        (b'{"stats":[1]}', cannot("number", "Job.stats", "job.JobStat")),
        (b'{"timezone":1}', cannot("number", "Job.timezone", "string")),
        (b'{"retry_delay":5}', cannot("number", "Job.retry_delay", "string")),
        (b'{"retry_backoff":"yes"}', cannot("string", "Job.retry_backoff", "bool")),
        (b'{"run_timeout":true}', cannot("bool", "Job.run_timeout", "string")),
        (b'{"allow_overlap":1}', cannot("number", "Job.allow_overlap", "bool")),
        (b'{"queue":["a"]}', cannot("array", "Job.queue", "string")),
        (b'{"cron":5}', cannot("number", "Job.cron", "string")),
        (b'{"overlap":true}', cannot("bool", "Job.overlap", "string")),
        # case-insensitive keys report the Go field name
        (b'{"RETRIES":-5}', cannot("number -5", "Job.retries", "uint")),
        # the first error in document order wins
        (b'{"retries":-1,"type":"x"}', cannot("number -1", "Job.retries", "uint")),
        (b'{"type":"x","retries":-1}', cannot("string", "Job.type", "job.jobType")),
        (b'{"name":"ok","metadata":{"success_count":"1"},"disabled":"no"}',
         cannot("string", "Metadata.metadata.success_count", "uint")),
    ],
)  # fmt: skip
def test_decode_type_errors(body: bytes, message: str) -> None:
    with pytest.raises(WireError) as err:
        wire.decode_job(body)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        (b"[]", "array"),
        (b'[{"name":"a"}]', "array"),
        (b'"job"', "string"),
        (b"42", "number"),
        (b"-1.5e3", "number"),
        (b"true", "bool"),
        (b"false", "bool"),
    ],
)
def test_decode_top_level_not_an_object(body: bytes, kind: str) -> None:
    with pytest.raises(WireError) as err:
        wire.decode_job(body)
    assert str(err.value) == f"json: cannot unmarshal {kind} into Go value of type job.Job"


# ================================================================ decode_job: syntax errors


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "unexpected end of JSON input"),
        (b"   \n\t", "unexpected end of JSON input"),
        (b"asd", "invalid character 'a' looking for beginning of value"),
        (b"{", "unexpected end of JSON input"),
        (b'{"name":"a"', "unexpected end of JSON input"),
        (b'{"name":"a', "unexpected end of JSON input"),
        (b'{"name":', "unexpected end of JSON input"),
        (b'{"name":"a",', "unexpected end of JSON input"),
        (b"[1,2", "unexpected end of JSON input"),
        (b'"abc', "unexpected end of JSON input"),
        # Go's scanner reports a truncated number or literal through the space it feeds at EOF
        (b"tru", "invalid character ' ' in literal true (expecting 'e')"),
        (b'{"a":nul', "invalid character ' ' in literal null (expecting 'l')"),
        (b"-", "invalid character ' ' in numeric literal"),
        (b"1.", "invalid character ' ' after decimal point in numeric literal"),
        (b"1e", "invalid character ' ' in exponent of numeric literal"),
        (b"1e+", "invalid character ' ' in exponent of numeric literal"),
        (b'"\\u12', "invalid character ' ' in \\u hexadecimal character escape"),
        (b'"\\', "invalid character ' ' in string escape code"),
        (b'{"name":"a"} x', "invalid character 'x' after top-level value"),
        (b'{"name":"a"}}', "invalid character '}' after top-level value"),
        (b"{}{}", "invalid character '{' after top-level value"),
        (b"null null", "invalid character 'n' after top-level value"),
        (b"{'name':'a'}", "invalid character '\\'' looking for beginning of object key string"),
        (b"{name:1}", "invalid character 'n' looking for beginning of object key string"),
        (b"{,}", "invalid character ',' looking for beginning of object key string"),
        (b'{"a",1}', "invalid character ',' after object key"),
        (b'{"a":1,}', "invalid character '}' looking for beginning of object key string"),
        (b'{"a":1 "b":2}', "invalid character '\"' after object key:value pair"),
        (b"[1,]", "invalid character ']' looking for beginning of value"),
        (b"[1 2]", "invalid character '2' after array element"),
        (b'{"a":01}', "invalid character '1' after object key:value pair"),
        (b'{"a":+1}', "invalid character '+' looking for beginning of value"),
        (b'{"a":.5}', "invalid character '.' looking for beginning of value"),
        (b'{"a":1.e5}', "invalid character 'e' after decimal point in numeric literal"),
        (b'{"a":-x}', "invalid character 'x' in numeric literal"),
        (b'{"a":1e}', "invalid character '}' in exponent of numeric literal"),
        (b'{"a":tRue}', "invalid character 'R' in literal true (expecting 'r')"),
        (b'{"a":fals}', "invalid character '}' in literal false (expecting 'e')"),
        (b'{"a":NaN}', "invalid character 'N' looking for beginning of value"),
        (b'{"a":Infinity}', "invalid character 'I' looking for beginning of value"),
        (b'{"a":-Infinity}', "invalid character 'I' in numeric literal"),
        (b'{"a":"\\x"}', "invalid character 'x' in string escape code"),
        (b'{"a":"\\u00zz"}', "invalid character 'z' in \\u hexadecimal character escape"),
        (b'{"a":"tab\there"}', "invalid character '\\t' in string literal"),
        (b'{"a":"nl\nhere"}', "invalid character '\\n' in string literal"),
        (b'{"a":"\x01"}', "invalid character '\\x01' in string literal"),
        (b'{"a":"\x1f"}', "invalid character '\\x1f' in string literal"),
        (b"\x7f", "invalid character '\\x7f' looking for beginning of value"),
        (b"\x00", "invalid character '\\x00' looking for beginning of value"),
        (b"\x0b{}", "invalid character '\\v' looking for beginning of value"),
        (b"\\", "invalid character '\\\\' looking for beginning of value"),
        (b"\xef\xbb\xbf{}", "invalid character '\u00ef' looking for beginning of value"),  # BOM
        (b"\xc2\xa0{}", "invalid character '\u00c2' looking for beginning of value"),
        (b"\x85", "invalid character '\\u0085' looking for beginning of value"),
        (b"\xad", "invalid character '\\u00ad' looking for beginning of value"),
        pytest.param(b"[" * 10001, "invalid character '[' exceeded max depth", id="depth-10001"),
        pytest.param(b"[" * 3000, "unexpected end of JSON input", id="open-3000"),
    ],
)  # fmt: skip
def test_decode_syntax_errors(body: bytes, message: str) -> None:
    with pytest.raises(WireError) as err:
        wire.decode_job(body)
    assert str(err.value) == message


@pytest.mark.parametrize(
    "body",
    [
        b'{"name":"\xff"}',
        b'{"name":"\xc3"}',
        b'{"name":"\xed\xa0\x80"}',  # an encoded surrogate
        b'{"\xfe":1}',
    ],
)
def test_decode_invalid_utf8(body: bytes) -> None:
    with pytest.raises(WireError, match="invalid UTF-8"):
        wire.decode_job(body)


def test_syntax_error_beats_invalid_utf8() -> None:
    with pytest.raises(WireError) as err:
        wire.decode_job(b'{"name":"\xff"')
    assert str(err.value) == "unexpected end of JSON input"


def test_deep_valid_nesting_is_refused_cleanly() -> None:
    # Valid for Go (depth <= 10000) but deeper than Python's json recursion allows.
    body = b'{"x":' + b"[" * 5000 + b"]" * 5000 + b"}"
    with pytest.raises(WireError):
        wire.decode_job(body)


def test_moderate_nesting_in_unknown_keys_is_fine() -> None:
    body = b'{"name":"a","x":' + b"[" * 200 + b"]" * 200 + b"}"
    assert wire.decode_job(body) == {"name": "a"}


def test_decode_accepts_bytes_like_and_str() -> None:
    assert wire.decode_job(bytearray(b'{"name":"a"}')) == {"name": "a"}
    assert wire.decode_job(memoryview(b'{"name":"a"}')) == {"name": "a"}
    assert wire.decode_job('{"name":"\u00e9"}') == {"name": "\u00e9"}


def test_large_invalid_body_is_reported_quickly() -> None:
    body = b'{"name":"' + b"x" * (1 << 20)  # cut at 1 MiB, as Kala's reader does
    with pytest.raises(WireError) as err:
        wire.decode_job(body)
    assert str(err.value) == "unexpected end of JSON input"


# ================================================================ Go client shape (§16)

GO_CLIENT_BODY = (
    b'{"name":"test_job","id":"","command":"bash -c \'date\'","owner":"example@example.com",'
    b'"disabled":false,"dependent_jobs":null,"parent_jobs":null,"on_failure_job":"",'
    b'"schedule":"R2/2026-11-22T19:27:53Z/PT10S","retries":0,"epsilon":"",'
    b'"next_run_at":"0001-01-01T00:00:00Z","TemplateDelimiters":"",'
    b'"resume_at_next_scheduled_time":false,"metadata":{"success_count":0,'
    b'"last_success":"0001-01-01T00:00:00Z","error_count":0,'
    b'"last_error":"0001-01-01T00:00:00Z","last_attempted_run":"0001-01-01T00:00:00Z",'
    b'"number_of_finished_runs":0},"type":0,"remote_properties":{"url":"","method":"",'
    b'"body":"","headers":null,"timeout":0,"expected_response_codes":null},"stats":null,'
    b'"is_done":false}\n'
)


def test_go_client_full_body_decodes() -> None:
    assert wire.decode_job(GO_CLIENT_BODY) == {
        "name": "test_job",
        "id": "",
        "command": "bash -c 'date'",
        "owner": "example@example.com",
        "disabled": False,
        "on_failure_job": "",
        "schedule": "R2/2026-11-22T19:27:53Z/PT10S",
        "retries": 0,
        "epsilon": "",
        "next_run_at": wire.ZERO_DATETIME,
        "template_delimiters": "",
        "resume_at_next_scheduled_time": False,
        "metadata": {
            "success_count": 0,
            "last_success": wire.ZERO_DATETIME,
            "error_count": 0,
            "last_error": wire.ZERO_DATETIME,
            "last_attempted_run": wire.ZERO_DATETIME,
            "number_of_finished_runs": 0,
        },
        "type": 0,
        "remote_properties": {"url": "", "method": "", "body": "", "timeout": 0},
        "is_done": False,
    }


def test_go_client_remote_job_decodes() -> None:
    body = GO_CLIENT_BODY.replace(
        b'"type":0,"remote_properties":{"url":"","method":"","body":"","headers":null,'
        b'"timeout":0,"expected_response_codes":null}',
        b'"type":1,"remote_properties":{"url":"http://example.com/hook","method":"POST",'
        b'"body":"{\\"a\\":1}","headers":{"Content-Type":["application/json"],'
        b'"X-Multi":["1","2"]},"timeout":5,"expected_response_codes":[200,202]}',
    )
    assert body != GO_CLIENT_BODY
    decoded = wire.decode_job(body)
    assert decoded["type"] == 1
    assert decoded["remote_properties"] == {
        "url": "http://example.com/hook",
        "method": "POST",
        "body": '{"a":1}',
        "headers": {"Content-Type": ["application/json"], "X-Multi": ["1", "2"]},
        "timeout": 5,
        "expected_response_codes": [200, 202],
    }


def test_our_own_document_decodes_back() -> None:
    job = FakeJob(
        retries=2,
        remote_headers={"A": ["1"]},
        remote_expected_codes=[200],
        last_success=datetime(2026, 1, 1, 0, 0, 0, 120, tzinfo=UTC),
        **dict(EXTENSIONS),
    )
    doc = wire.job_document(job, parent_ids=["p"], child_ids=["c"], stats=[FakeRun()])
    back = wire.decode_job(wire.dumps(doc))
    assert back["template_delimiters"] == "" and back["retries"] == 2
    assert back["next_run_at"] == job.next_run_at
    assert back["metadata"]["last_success"] == job.last_success
    assert back["dependent_jobs"] == ["c"] and back["parent_jobs"] == ["p"]
    assert back["remote_properties"]["headers"] == {"A": ["1"]}
    assert back["stats"] == [json.loads(wire.dumps(wire.kala_stat(FakeRun())))]
    for name, value in EXTENSIONS:
        assert back[name] == value


# ================================================================ decode_status


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b'"Success"', "Success"),
        (b' "Failed"\n', "Failed"),
        (b'"anything at all"', "anything at all"),
        (b'""', ""),
        (b'"\\u00e9"', "\u00e9"),
    ],
)
def test_decode_status(body: bytes, status: str) -> None:
    assert wire.decode_status(body) == status


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "unexpected end of JSON input"),
        (b"Success", "invalid character 'S' looking for beginning of value"),
        (b'"Success', "unexpected end of JSON input"),
        (b'"a" "b"', "invalid character '\"' after top-level value"),
        (b"1", "json: cannot unmarshal number into Go value of type string"),
        (b'{"status":"Success"}', "json: cannot unmarshal object into Go value of type string"),
        (b'["Success"]', "json: cannot unmarshal array into Go value of type string"),
        (b"true", "json: cannot unmarshal bool into Go value of type string"),
        (b"null", "json: cannot unmarshal null into Go value of type string"),
    ],
)
def test_decode_status_errors(body: bytes, message: str) -> None:
    with pytest.raises(WireError) as err:
        wire.decode_status(body)
    assert str(err.value) == message


# ================================================================ fuzz

FIELD_KEYS = [
    "name", "ID", "command", "owner", "disabled", "dependent_jobs", "parent_jobs",
    "on_failure_job", "schedule", "Retries", "epsilon", "next_run_at", "TemplateDelimiters",
    "resume_at_next_scheduled_time", "metadata", "type", "remote_properties", "stats", "is_done",
    "timezone", "retry_delay", "retry_backoff", "run_timeout", "allow_overlap", "queue",
    "cron", "overlap", "success_count", "last_success", "url", "headers", "timeout",
    "expected_response_codes",
    "unknown",
]  # fmt: skip

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(1 << 70), max_value=1 << 70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["2026-11-22T19:27:53Z", "0001-01-01T00:00:00Z", "2026-02-30T00:00:00Z"])
)
json_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.sampled_from(FIELD_KEYS) | st.text(max_size=6), children, max_size=5)
    ),
    max_leaves=20,
)
job_like = st.dictionaries(st.sampled_from(FIELD_KEYS), json_values, max_size=8)


def decodes_or_wire_error(body: bytes) -> dict[str, Any] | None:
    try:
        result = wire.decode_job(body)
    except WireError as exc:
        assert str(exc)
        return None
    assert isinstance(result, dict)
    return result


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=200))
def test_fuzz_random_bytes(body: bytes) -> None:
    decodes_or_wire_error(body)


@settings(max_examples=150, deadline=None)
@given(json_values)
def test_fuzz_random_json_values(value: Any) -> None:
    decodes_or_wire_error(json.dumps(value).encode())


@settings(max_examples=100, deadline=None)
@given(job_like)
def test_fuzz_job_like_objects(value: dict[str, Any]) -> None:
    result = decodes_or_wire_error(json.dumps(value).encode())
    if result is not None:
        # what decodes can be written again (times, strings, numbers are all wire-safe)
        wire.dumps(result)


@settings(max_examples=100, deadline=None)
@given(job_like, st.integers(min_value=0, max_value=400))
def test_fuzz_truncated_and_mangled(value: dict[str, Any], cut: int) -> None:
    body = json.dumps(value).encode()
    decodes_or_wire_error(body[:cut])
    decodes_or_wire_error(body[:cut] + b"}" + body[cut:])


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.sampled_from(list('{}[]",:0123456789.eE+-tfnrulsa \\\n')), max_size=30))
def test_go_scanner_agrees_with_python_json(text: str) -> None:
    """The port of Go's scanner and Python's json accept exactly the same documents."""
    try:
        json.loads(text)
        python_ok = True
    except ValueError:
        python_ok = False
    assert (go_scanner.syntax_error(text.encode()) is None) == python_ok


small_text = st.text(max_size=8)
uints = st.integers(min_value=0, max_value=(1 << 64) - 1)
ints = st.integers(min_value=-(1 << 63), max_value=(1 << 63) - 1)
aware_times = st.datetimes(
    min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31), timezones=st.just(UTC)
)
valid_jobs = st.fixed_dictionaries(
    {},
    optional={
        "name": small_text,
        "id": small_text,
        "disabled": st.booleans(),
        "dependent_jobs": st.lists(small_text, max_size=3),
        "retries": uints,
        "next_run_at": aware_times,
        "TemplateDelimiters": small_text,
        "metadata": st.fixed_dictionaries(
            {}, optional={"success_count": uints, "last_error": aware_times}
        ),
        "type": ints,
        "remote_properties": st.fixed_dictionaries(
            {},
            optional={
                "headers": st.dictionaries(small_text, st.lists(small_text, max_size=2)),
                "timeout": ints,
                "expected_response_codes": st.lists(ints, max_size=3),
            },
        ),
        "queue": small_text,
        "allow_overlap": st.booleans(),
    },
)


@settings(max_examples=100, deadline=None)
@given(valid_jobs)
def test_fuzz_well_typed_jobs_decode_exactly(job: dict[str, Any]) -> None:
    expected = dict(job)
    if "TemplateDelimiters" in expected:
        expected["template_delimiters"] = expected.pop("TemplateDelimiters")
    assert wire.decode_job(wire.dumps(job)) == expected


def mutate(body: bytes, data: st.DataObject) -> bytes:
    """Insert, delete or replace a byte somewhere (JSON punctuation is the likeliest pick)."""
    pos = data.draw(st.integers(min_value=0, max_value=len(body)))
    byte = data.draw(st.sampled_from(list(b'{}[]",:0.-eE+tn \\\nx')) | st.integers(0, 255))
    how = data.draw(st.sampled_from(["insert", "delete", "replace", "truncate"]))
    if how == "insert":
        return body[:pos] + bytes([byte]) + body[pos:]
    if how == "delete":
        return body[:pos] + body[pos + 1 :]
    if how == "replace":
        return body[:pos] + bytes([byte]) + body[pos + 1 :]
    return body[:pos]


@settings(max_examples=300, deadline=None)
@given(json_values, st.data())
def test_scanner_shortcuts_match_byte_by_byte(value: Any, data: st.DataObject) -> None:
    """The regular-expression shortcuts give exactly the message of Go's per-byte steps."""
    body = json.dumps(value, indent=data.draw(st.sampled_from([None, 1]))).encode()
    for _ in range(data.draw(st.integers(min_value=0, max_value=3))):
        body = mutate(body, data)
    fast = go_scanner._GoScanner().check(body)
    slow = go_scanner._GoScanner(fast=False).check(body)
    assert fast == slow
    try:
        json.loads(body.decode("utf-8"))
        python_ok = b"NaN" not in body and b"Infinity" not in body
    except (ValueError, UnicodeDecodeError):
        python_ok = None  # invalid for Python; Go may accept (invalid UTF-8) or not
    if python_ok:
        assert slow is None
    elif python_ok is None and slow is None:
        with pytest.raises(WireError):
            wire.decode_job(body)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=40))
def test_fuzz_dumps_is_valid_json_and_html_safe(text: str) -> None:
    out = wire.dumps({"k": text, text: [text]})
    assert out.endswith(b"\n") and out.count(b"\n") == 1
    for ch in (b"<", b">", b"&"):
        assert ch not in out
    cleaned = decode._SURROGATE.sub("\ufffd", text)
    assert json.loads(out) == {"k": cleaned, cleaned: [cleaned]}


# ================================================================ job_json from driver values


@given(
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59))
)
def test_time_text_reads_every_spelling_of_a_stored_time(t: datetime) -> None:
    """SQLite's text (with and without a fraction), a naive and an aware datetime: all give
    format_time's text."""
    expected = wire.format_time(t.replace(tzinfo=UTC))
    assert kala_json._time_text(t.isoformat(" ", "microseconds")) == expected
    assert kala_json._time_text(t.isoformat(" ")) == expected
    assert kala_json._time_text(t) == expected
    assert kala_json._time_text(t.replace(tzinfo=UTC)) == expected


def test_json_null_text_is_an_unset_json_column() -> None:
    values = list(wire.job_values(FakeJob()))
    for name in ("remote_headers", "remote_expected_codes", "celery_task"):
        values[wire.JOB_FIELDS.index(name)] = "null"
    text = wire.job_json(values, parent_ids=None, child_ids=None, stats=None)
    assert wire.finish_json('{"job":' + text + "}") == SPEC_FRESH_JOB


def test_every_extension_key_is_a_job_column_that_decodes() -> None:
    """Adding an extension key is one row in wire/kala_json._EXTENSIONS: it must name a column of
    models.Job and a key the decoder reads."""
    from kala_celery.store.tables import Job

    for name, rule in kala_json._EXTENSIONS:
        assert name in Job.__table__.c
        assert name in decode._JOB
        assert rule in ("text", "delay", "flag", "json")
    extensions = kala_json._EXTENSIONS
    assert wire.JOB_FIELDS[-len(extensions) :] == tuple(n for n, _ in extensions)
