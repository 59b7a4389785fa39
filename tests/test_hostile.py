"""Hostile input, by category (issue 17, Decision 25): sizes at and past each bound, times at
the calendar's edges, strange ids, broken encodings, deep nesting, and concurrent edits of one
job. Never a 5xx; a refusal is a 400 that names the field and stores nothing; what is
accepted reads back whole. Every response also conforms to the OpenAPI document (tests/live.py).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from urllib.parse import quote

from sqlalchemy import func, select

from kala_celery.store.tables import Job, JobLink, Run
from kala_celery.wire import limits
from tests.live import Api

LATER = "R2/2999-12-01T09:00:00Z/PT1H"
M = limits.INT64_MAX


def jobs_stored(api: Api) -> int:
    with api.state.sessions() as session:
        return session.scalar(select(func.count()).select_from(Job))


def refused(api: Api, body: dict | bytes, *names: str, status: int = 400) -> str:
    """POST the body; it must be refused with `status`, name each of `names`, store nothing."""
    before = jobs_stored(api)
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    response = api.http.post("/job/", content=data)
    assert response.status_code == status, response.text
    message = response.json()["error"]
    for name in names:
        assert name in message, message
    assert jobs_stored(api) == before
    return message


def accepted(api: Api, **job: object) -> dict:
    """POST the job; it must be created and read back with the values sent."""
    job_id = api.create(**job)
    return api.job(job_id)


def base(**more: object) -> dict:
    return {"name": "h", "command": "echo hi", "schedule": LATER, **more}


# ---------------------------------------------------------------- sizes


def test_64_bit_integers_at_and_past_the_limit(api: Api) -> None:
    doc = accepted(api, **base(retries=M, metadata={"success_count": M, "error_count": M,
                                                    "number_of_finished_runs": M}))
    assert doc["retries"] == M and doc["metadata"]["success_count"] == M
    for body, name in [
        (base(retries=M + 1), "retries"),
        (base(metadata={"success_count": M + 1}), "metadata.success_count"),
        (base(metadata={"error_count": M + 1}), "metadata.error_count"),
        (base(metadata={"number_of_finished_runs": M + 1}), "metadata.number_of_finished_runs"),
    ]:
        assert "larger than 9223372036854775807" in refused(api, body, name)
    # past uint64 it is Go's own decode error, naming the field the Go way
    refused(api, base(retries=1 << 64), "Job.retries")


def test_app_stats_add_up_counters_near_the_limit(api: Api) -> None:
    for _ in range(3):
        api.create(**base(metadata={"success_count": M, "error_count": M - 1}))
    stats = api.http.get("/stats/").json()["Stats"]
    assert (stats["success_count"], stats["error_count"]) == (3 * M, 3 * (M - 1))


def test_remote_timeout_at_and_past_the_limit(api: Api) -> None:
    remote = {"type": 1, "command": "", "remote_properties": {"url": "http://127.0.0.1:9/"}}
    top = limits.MAX_SECONDS
    job = {**base(**remote)}
    job["remote_properties"] = {**remote["remote_properties"], "timeout": top}
    assert accepted(api, **job)["remote_properties"]["timeout"] == top
    job["remote_properties"] = {**remote["remote_properties"], "timeout": top + 1}
    refused(api, job, "remote_properties.timeout")


COLUMNS = [
    ("queue", "q" * 200, "q" * 201),
    ("retry_delay", "PT" + "0" * 60 + "1S", "PT" + "0" * 61 + "1S"),
    ("run_timeout", "PT" + "0" * 60 + "1S", "PT" + "0" * 61 + "1S"),
    ("timezone", None, "A" * 30 + "/" + "B" * 34),
]


def test_strings_at_and_past_their_column(api: Api) -> None:
    assert accepted(api, **base(id="a" * 128))["id"] == "a" * 128  # longer: ignored (Decision 14)
    for field, ok, too_long in COLUMNS:
        if ok is not None:
            assert accepted(api, **base(**{field: ok}))[field] == ok
        refused(api, base(**{field: too_long}), field)


def test_durations_at_and_past_what_python_can_wait(api: Api) -> None:
    days = limits.MAX_DURATION.days
    for field in limits.DURATIONS:
        assert accepted(api, **base(**{field: f"P{days}D"}))[field] == f"P{days}D"
        refused(api, base(**{field: f"P{days + 1}D"}), field)
        refused(api, base(**{field: "P99999999999999999999D"}), field)


def test_a_body_of_exactly_one_mib_is_read_and_one_byte_more_is_413(api: Api) -> None:
    head = b'{"name":"n","command":"echo","schedule":"' + LATER.encode() + b'","owner":"'
    tail = b'"}'
    filler = limits.MAX_BODY - len(head) - len(tail)
    response = api.http.post("/job/", content=head + b"o" * filler + tail)
    assert response.status_code == 201, response.text
    assert len(api.job(response.json()["id"])["owner"]) == filler
    refused(api, head + b"o" * (filler + 1) + tail, "1 MiB", status=413)


def test_page_arguments_at_and_past_the_limit(api: Api) -> None:
    job_id = api.create(**base())
    for route in (f"/job/{job_id}/executions/", f"/job/stats/{job_id}/"):
        for args in (f"offset={M}", f"limit={M}", f"offset={M}&limit={M}", "offset=0"):
            response = api.http.get(f"{route}?{args}")
            assert response.status_code == 200, (route, args, response.text)
        for args, name in ((f"offset={M + 1}", "offset"), ("limit=99999999999999999999", "limit"),
                           ("offset=-1", "offset"), ("limit=%C2%B2", "limit"),
                           ("offset=1e3", "offset"), ("limit=", "limit")):
            response = api.http.get(f"{route}?{args}")
            assert response.status_code == 400, (route, args)
            assert name in response.json()["error"]


def test_nul_in_any_string_is_refused_by_name(api: Api) -> None:
    remote = {"url": "http://127.0.0.1:9/"}
    for body, name in [
        (base(name="a\x00b"), "name"),
        (base(command="echo \x00"), "command"),
        (base(owner="\x00"), "owner"),
        (base(parent_jobs=["x\x00"]), "parent_jobs"),
        (base(dependent_jobs=["\x00"]), "dependent_jobs"),
        (base(id="a\x00"), "id"),
        (base(epsilon="PT1S\x00"), "epsilon"),
        (base(type=1, command="", remote_properties={**remote, "body": "\x00"}),
         "remote_properties.body"),
        (base(type=1, command="", TemplateDelimiters="{{ }}",
              remote_properties={"url": "http://x/\x00"}), "remote_properties.url"),
    ]:
        assert "U+0000" in refused(api, body, name)
    job_id = api.create(**base(type=1, command="", remote_properties=remote))
    response = api.http.put(f"/job/{job_id}/params/", content=b'{"a": "\x00"}')
    assert response.status_code == 400 and "U+0000" in response.json()["error"]
    response = api.http.put(f"/job/{job_id}/", json=base(name="\x00"))
    assert response.status_code == 400 and "name" in response.json()["error"]
    assert api.job(job_id)["name"] == "h"  # a refused replace changes nothing


# ---------------------------------------------------------------- times


EDGE_SCHEDULES = [
        ("R2/9999-12-31T23:59:59Z/PT1H", None),
        ("R2/9999-12-31T23:59:59Z/P1D", "Pacific/Kiritimati"),  # +14: local year 10000
        ("R2/9999-12-31T23:59:59-12:00/P1M", "Etc/GMT-14"),
        ("R/9999-12-31T00:00:00Z/P1Y", "America/New_York"),
        ("R/2999-01-31T00:00:00Z/P1M", "Europe/Paris"),
        ("R99999999999999999999/2999-01-01T00:00:00Z/PT1S", None),
        ("R2/2999-02-29T00:00:00Z/PT1H", None),  # 2999 is no leap year
        ("R2/2028-02-29T00:00:00Z/P1Y", None),
        ("R2/0001-01-01T00:00:00Z/PT1H", None),  # in the past
        ("R2/2999-01-01T00:00:00Z/P9999999999Y", None),
        ("R2/2999-01-01T00:00:00Z/PT9223372036854775807S", None),
    ]


def test_schedules_at_the_calendar_edges_never_fail(api: Api) -> None:
    for schedule, zone in EDGE_SCHEDULES:
        body = base(schedule=schedule, **({"timezone": zone} if zone else {}))
        response = api.http.post("/job/", json=body)
        assert response.status_code in (201, 400), response.text
        if response.status_code == 201:
            job_id = response.json()["id"]
            assert api.job(job_id)["schedule"] == schedule
            started = api.http.post(f"/job/start/{job_id}/?wait=false")
            assert started.status_code == 202
            assert api.http.post(f"/job/disable/{job_id}/").status_code == 204
            assert api.http.post(f"/job/enable/{job_id}/").status_code == 204
        else:
            assert "schedule" in response.json()["error"]


EDGE_TIMES = [
        ("0001-01-01T00:00:00Z", True),
        ("9999-12-31T23:59:59.999999999Z", True),
        ("2028-02-29T12:00:00+14:00", True),
        ("0001-01-01T00:00:00+01:00", False),  # before year 1 in UTC
        ("9999-12-31T23:59:59-01:00", False),  # after 9999 in UTC
        ("10000-01-01T00:00:00Z", False),
        ("2027-02-29T00:00:00Z", False),
        ("2026-13-01T00:00:00Z", False),
        ("2026-12-01T24:00:00Z", False),
        ("2026-12-01T09:00:00", False),
    ]


def test_times_at_the_calendar_edges(api: Api) -> None:
    for value, ok in EDGE_TIMES:
        body = base(metadata={"last_success": value}, next_run_at=value)
        if ok:
            api.create(**body)
        else:
            assert "time" in refused(api, body, "Go struct field")


# ---------------------------------------------------------------- ids


STRANGE = ["%00", "a%00b", "x" * 5000, "%2F", "%2E%2E", "%20", "%C3%BC", "%FF", "stats",
           "start", "%E2%80%AE", "a%0Ab", "%F0%9F%92%A9", "'%22;--", "%25"]


def test_strange_path_ids_are_404s(api: Api) -> None:
    api.create(**base())
    for strange in STRANGE:
        for method, path in [("GET", "/job/{}/"), ("DELETE", "/job/{}/"),
                             ("GET", "/job/stats/{}/"), ("POST", "/job/start/{}/"),
                             ("POST", "/job/enable/{}/"), ("POST", "/job/disable/{}/"),
                             ("GET", "/job/{}/executions/"), ("GET", "/job/{}/params/"),
                             ("GET", "/job/x/executions/{}/"), ("PUT", "/job/{}/")]:
            response = api.http.request(method, path.format(strange), content=b"{}")
            assert response.status_code in (301, 308, 404, 405), (method, strange, response.text)
    assert jobs_stored(api) == 1


def test_strange_client_ids_are_ignored_as_kala_ignores_them(api: Api) -> None:
    """Decision 14: an id we cannot keep gets a fresh UUID; the job is stored once."""
    strange = ["ü", "a/b", " a", "-a", "all", "a b", "\u202e", "a?b", "a" * 129, ""]
    for client_id in strange:
        response = api.http.post("/job/", json=base(id=client_id))
        assert response.status_code == 201, (client_id, response.text)
        assert uuid.UUID(response.json()["id"]).version == 4, client_id
    assert jobs_stored(api) == len(strange)
    assert "U+0000" in refused(api, base(id="a\u0000b"))  # Decision 25: no store holds it


def test_a_created_id_with_every_allowed_character_reads_back(api: Api) -> None:
    job_id = "Az09._~:@-x"
    assert api.create(**base(id=job_id)) == job_id
    assert api.http.get(f"/job/{quote(job_id, safe='~:@')}/").status_code == 200


# ---------------------------------------------------------------- encodings


BROKEN = [
        (b"\xff\xfe{\x00}\x00", "invalid character"),
        (b'{"name": "\xc0\xaf"}', "invalid UTF-8"),
        (b'{"name": "a\xed\xa0\x80"}', "invalid UTF-8"),
        (b'{"name": "a', "unexpected end of JSON input"),
        (b'{"name": "a\x00"}', "invalid character"),
        (b"\x1f\x8b\x08\x00", "invalid character"),
        (b'{"name": NaN}', "invalid character"),
        (b"", "unexpected end of JSON input"),
    ]


def test_broken_encodings_get_go_style_400s(api: Api) -> None:
    for body, message in BROKEN:
        assert message in refused(api, body), body


def test_lone_surrogate_escapes_become_replacement_characters(api: Api) -> None:
    response = api.http.post("/job/", content=b'{"name": "a\\ud800b", "command": "echo", '
                             b'"schedule": "' + LATER.encode() + b'"}')
    assert response.status_code == 201
    assert api.job(response.json()["id"])["name"] == "a\ufffdb"


def test_odd_content_types_and_encodings_are_read_as_the_body(api: Api) -> None:
    body = json.dumps(base()).encode()
    for headers in [{"Content-Type": "text/html"}, {"Content-Type": "\x7f"},
                    {"Content-Encoding": "gzip"},
                    {"Content-Type": "application/json; charset=latin-1"}]:
        response = api.http.post("/job/", content=body, headers=headers)
        assert response.status_code == 201, (headers, response.text)


def test_status_callback_with_broken_bodies(api: Api) -> None:
    job_id = api.create(**base())
    started = api.http.post(f"/job/start/{job_id}/?wait=false")
    run_id = started.json()["id"]
    for body in [b"\xff", b'"\x00"', b'"' + b"S" * 100_000 + b'"', b"[" * 600, b"null", b"1"]:
        response = api.http.put(f"/job/{job_id}/executions/{run_id}/", content=body)
        assert response.status_code == 400, (body[:20], response.text)


# ---------------------------------------------------------------- nesting


def test_nesting_at_and_past_the_limit(api: Api) -> None:
    def nested(depth: int) -> bytes:  # the whole body is `depth` levels deep
        inner = b"[" * (depth - 1) + b"]" * (depth - 1)
        return b'{"name":"n","command":"c","schedule":"' + LATER.encode() + b'","x":' + inner + b"}"

    assert api.http.post("/job/", content=nested(limits.MAX_NESTING)).status_code == 201
    refused(api, nested(limits.MAX_NESTING + 1), "nests deeper than 256")
    refused(api, nested(5000), "nests deeper than 256")
    refused(api, b"[" * 10001, "exceeded max depth")  # Go's own message past Go's limit
    deep_stats = b'{"name":"n","command":"c","stats":[{"x":' + b"[" * 250 + b"]" * 250 + b"}]}"
    assert api.http.post("/job/", content=deep_stats).status_code == 201


# ---------------------------------------------------------------- concurrent edits


def test_concurrent_edits_of_one_job_never_fail_or_half_write(api: Api) -> None:
    """PUT, DELETE, start, enable and disable of one job at once, and re-creating it by id:
    no 5xx, and whatever is left is one whole body."""
    job_id = "contended"
    parent = api.create(**base(name="parent"))
    bodies = [base(name=f"n{i}", command=f"echo {i}", owner=f"o{i}", retries=i,
                   parent_jobs=[parent] if i % 3 == 0 else None) for i in range(6)]
    statuses: list[tuple[str, int]] = []
    lock = threading.Lock()

    def hammer(do: Callable[[int], tuple[str, int]]) -> Callable[[], None]:
        def loop() -> None:
            for i in range(25):
                outcome = do(i)
                with lock:
                    statuses.append(outcome)
        return loop

    def put(i: int) -> tuple[str, int]:
        return "put", api.http.put(f"/job/{job_id}/", json=bodies[i % 6]).status_code

    def create(i: int) -> tuple[str, int]:
        return "post", api.http.post("/job/", json={**bodies[i % 6], "id": job_id}).status_code

    def action(name: str) -> Callable[[int], tuple[str, int]]:
        def go(_i: int) -> tuple[str, int]:
            path = {"delete": f"/job/{job_id}/", "start": f"/job/start/{job_id}/?wait=false"}.get(
                name, f"/job/{name}/{job_id}/")
            method = "DELETE" if name == "delete" else "POST"
            return name, api.http.request(method, path).status_code
        return go

    workers = [put, create, action("delete"), action("start"), action("enable"),
               action("disable"), put]
    threads = [threading.Thread(target=hammer(w)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert len(statuses) == 25 * len(workers)
    assert all(status < 500 for _what, status in statuses), sorted(set(statuses))
    assert {status for what, status in statuses if what == "put"} <= {200, 404, 409}
    response = api.http.get(f"/job/{job_id}/")
    if response.status_code == 200:
        job = response.json()["job"]
        i = int(job["name"][1:])
        assert (job["command"], job["owner"], job["retries"]) == (f"echo {i}", f"o{i}", i)
        assert job["parent_jobs"] == ([parent] if i % 3 == 0 else None)
    else:
        assert response.status_code == 404
    with api.state.sessions() as session:
        orphans = session.scalar(select(func.count()).select_from(Run).where(
            Run.job_id.not_in(select(Job.id))))
        dangling = session.scalar(select(func.count()).select_from(JobLink).where(
            JobLink.child_id.not_in(select(Job.id)) | JobLink.parent_id.not_in(select(Job.id))))
    assert (orphans, dangling) == (0, 0)
