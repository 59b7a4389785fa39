"""Differential: remote (type 1) jobs on the real Kala and on us, calling an HTTP server of the
test's own. Every scenario is set up on both sides at the start of the module and runs at once;
each test waits for its own and compares the jobs, and what the server received."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.kala_diff import Differ, Pair, at, compare, need_kala, pair_of

pytestmark = pytest.mark.timeout(240)


class Target(BaseHTTPRequestHandler):
    """/ok 200, /fail 500, /created 201, /redirect -> /ok, /echo/<id> 200 (recorded)."""

    received: dict[str, dict] = {}

    def log_message(self, *args: object) -> None:
        pass

    def _any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        path = self.path.split("?")[0]
        if path.startswith("/echo/"):
            Target.received[path.removeprefix("/echo/")] = {
                "method": self.command, "body": body,
                "headers": {k: v for k, v in self.headers.items()
                            if k.lower() in ("content-type", "x-a", "x-b")}}
        status = {"/fail": 500, "/created": 201, "/redirect": 302}.get(path, 200)
        self.send_response(status)
        if status == 302:
            self.send_header("Location", "/ok")
        payload = b'{"ok": true}'
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _any


@dataclass(frozen=True)
class Scenario:
    setup: Callable[[Pair, str, str], None]
    waits: tuple[tuple[str, int, int], ...]
    roles: tuple[str, ...]
    differ: tuple[Differ, ...]


SCENARIOS: dict[str, Scenario] = {}
# Decision 12: Kala writes its defaults into the stored job once it has called; we apply them
# to the request only.
CONTENT_TYPE = Differ("j.remote_properties.headers", {"Content-Type": ["application/json"]},
                      None, "Decision 12")
CODES = Differ("j.remote_properties.expected_response_codes", [200], None, "Decision 12")


def scenario(waits: list[tuple[str, int, int]] | None = None, roles: tuple[str, ...] = ("j",),
             differ: tuple[Differ, ...] = (CONTENT_TYPE, CODES)) -> Callable:
    def register(setup: Callable[[Pair, str, str], None]) -> Callable:
        name = setup.__name__.removeprefix("s_").replace("_", "-")
        SCENARIOS[name] = Scenario(setup, tuple(waits or [("j", 1, 1)]), roles, differ)
        return setup
    return register


def remote(pair: Pair, name: str, role: str, url: str, **props: object) -> None:
    body: dict = {"name": f"{name}-{role}", "type": 1, "schedule": f"R0/{at(2)}/"}
    for key in ("retries", "on_failure_job", "TemplateDelimiters", "parent_jobs"):
        if key in props:
            body[key] = props.pop(key)
    if isinstance(body.get("on_failure_job"), str):
        body["on_failure_job"] = f"${name}-{body['on_failure_job']}"
    if "parent_jobs" in body:
        body["parent_jobs"] = [f"${name}-{p}" for p in body["parent_jobs"]]
        del body["schedule"]
    body["remote_properties"] = {"url": url, **props}
    kala, ours = pair.post(body, f"{name}-{role}")
    assert (kala.status_code, ours.status_code) == (201, 201), (kala.text, ours.text)


@scenario()
def s_get_200_succeeds(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/ok")


@scenario()
def s_500_fails_every_attempt(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/fail", retries=1)


@scenario()
def s_201_fails_with_the_default_codes(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/created")


@scenario(differ=(CONTENT_TYPE,))
def s_201_succeeds_when_expected(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/created", expected_response_codes=[200, 201])


@scenario(differ=(CONTENT_TYPE,))
def s_codes_out_of_range_fail(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/ok", expected_response_codes=[42, 1000])


@scenario()
def s_redirect_is_followed(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/redirect")


@scenario()
def s_negative_timeout_means_none(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/ok", timeout=-5)


@scenario(differ=(CODES,))
def s_post_with_body_and_headers(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/echo/{{{{.Id}}}}", method="post", body='{"name":"{{.Name}}"}',
           headers={"Content-Type": ["text/plain"], "X-A": ["1"]}, TemplateDelimiters="{{ }}")


@scenario()
def s_put_templated_url(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/echo/[[.Id]]", method="PUT", TemplateDelimiters="[[ ]]")


@scenario(differ=(CONTENT_TYPE,))
def s_ftp_url_fails(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", "ftp://127.0.0.1/x")


@scenario(differ=(CONTENT_TYPE,))
def s_not_a_url_fails(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", "not a url")


@scenario(differ=())
def s_bad_method_fails(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/ok", method="FOO BAR")


@scenario(differ=(Differ("j.remote_properties.headers",
                         {"Content-Type": ["application/json"], "bad name": ["x"]},
                         {"bad name": ["x"]}, "Decision 12"),))
def s_bad_header_name_fails(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/ok", headers={"bad name": ["x"]})


@scenario(differ=(Differ("j.remote_properties.headers",
                         {"Content-Type": ["application/json"], "X-A": ["a\nb"]},
                         {"X-A": ["a\nb"]}, "Decision 12"),))
def s_header_line_break_fails(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/ok", headers={"X-A": ["a\nb"]})


@scenario(differ=(CONTENT_TYPE,))
def s_connection_refused_fails(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", "http://127.0.0.1:9/nothing-listens", retries=2)


@scenario(differ=())  # Kala fails before it fills in its defaults
def s_bad_delimiters_fail(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/ok", TemplateDelimiters="{{")


@scenario([("j", 1, 1), ("h", 1, 1)], ("j", "h"))
def s_on_failure_job_after_a_remote_failure(pair: Pair, n: str, url: str) -> None:
    kala, ours = pair.post({"name": f"{n}-h", "command": "true",
                            "schedule": f"R/{at(3600)}/PT1H"}, f"{n}-h")
    assert (kala.status_code, ours.status_code) == (201, 201)
    remote(pair, n, "j", f"{url}/fail", on_failure_job="h")


@scenario([("j", 1, 1), ("c", 1, 1)], ("j", "c"), differ=(
    CONTENT_TYPE, CODES,
    Differ("c.remote_properties.headers", {"Content-Type": ["application/json"]}, None,
           "Decision 12"),
    Differ("c.remote_properties.expected_response_codes", [200], None, "Decision 12"),
))
def s_remote_child_of_a_remote_parent(pair: Pair, n: str, url: str) -> None:
    remote(pair, n, "j", f"{url}/ok")
    remote(pair, n, "c", f"{url}/ok", parent_jobs=["j"])


@pytest.fixture(scope="module")
def launched(request: pytest.FixtureRequest) -> Iterator[tuple[Pair, str]]:
    need_kala()  # before starting Redis
    redis_server = request.getfixturevalue("redis_server")
    server = ThreadingHTTPServer(("127.0.0.1", 0), Target)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:
        for pair in pair_of(redis_server.url):
            for name, each in SCENARIOS.items():
                each.setup(pair, name, url)
            yield pair, url
    finally:
        server.shutdown()


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_remote_scenario_ends_as_on_kala(launched: tuple[Pair, str], name: str) -> None:
    pair, _ = launched
    each = SCENARIOS[name]
    pair.settle([(f"{name}-{role}", k, o) for role, k, o in each.waits], timeout=90)
    kala, ours = pair.jobs(*(f"{name}-{role}" for role in each.roles))
    strip = {f"{name}-{role}": role for role in each.roles}
    compare({strip[k]: v for k, v in kala.items()}, {strip[k]: v for k, v in ours.items()},
            each.differ, name)


@pytest.mark.parametrize("name", ["post-with-body-and-headers", "put-templated-url"])
def test_the_server_received_the_same_request(launched: tuple[Pair, str], name: str) -> None:
    pair, _ = launched
    pair.settle([(f"{name}-j", 1, 1)], timeout=90)
    deadline = time.monotonic() + 10
    seen = []
    for side in pair.sides:
        job_id = side.ids[f"{name}-j"]
        while job_id not in Target.received and time.monotonic() < deadline:
            time.sleep(0.1)
        seen.append(json.dumps(Target.received.get(job_id), sort_keys=True))
    assert seen[0] == seen[1] != "null", seen
