"""Remote jobs against a real HTTP server on 127.0.0.1 (http.server in a thread), which the
calls allow (KALA_REMOTE_ALLOW=127.0.0.0/8; the refusals are in tests/test_remote_guard.py)."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from kala_celery.config import RemotePolicy
from kala_celery.runs.outcome import OUTPUT_LIMIT, Outcome
from kala_celery.tasks.remote import call

BIG_BODY = ("é" * 50_000 + "a" * 300_000 + "END").encode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output quiet

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        path = parts.path
        if path == "/echo":
            echo = {
                "method": self.command,
                "path": self.path,
                "headers": [[k, v] for k, v in self.headers.items()],
                "body": body,
            }
            self._reply(200, json.dumps(echo).encode(), {"Content-Type": "application/json"})
        elif path.startswith("/status/"):
            self._reply(int(path.rsplit("/", 1)[1]), b'{"ok": true}')
        elif path == "/redirect":
            self._reply(int(query.get("code", "302")), b"", {"Location": "/echo?from=redirect"})
        elif path.startswith("/hops/"):
            left = int(path.rsplit("/", 1)[1])
            if left:
                self._reply(302, b"", {"Location": f"/hops/{left - 1}"})
            else:
                self._reply(200, b"arrived")
        elif path == "/sleep":
            time.sleep(float(query["s"]))
            with contextlib.suppress(OSError):
                self._reply(200, b"slept")
        elif path == "/trickle":
            self.send_response(200)
            self.send_header("Content-Length", "100")
            self.end_headers()
            with contextlib.suppress(OSError):
                for _ in range(10):
                    self.wfile.write(b"x")
                    self.wfile.flush()
                    time.sleep(0.3)
        elif path == "/big":
            self._reply(int(query.get("code", "200")), BIG_BODY)
        else:
            self._reply(404, b"not found")

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


@pytest.fixture(scope="module")
def base() -> Iterator[str]:
    server = Server(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Talk to 127.0.0.1 directly even where the environment configures a proxy."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def _call(url: str, **kwargs: Any) -> Outcome:
    args: dict[str, Any] = {
        "method": "",
        "body": "",
        "headers": None,
        "timeout": 5,
        "expected_codes": None,
        "policy": RemotePolicy.parse(allow="127.0.0.0/8"),
    }
    args.update(kwargs)
    return call(url=url, **args)


def _echo(outcome: Outcome) -> dict[str, Any]:
    assert outcome.ok, outcome
    return json.loads(outcome.output)


def _values(echo: dict[str, Any], name: str) -> list[str]:
    return [v for k, v in echo["headers"] if k.lower() == name.lower()]


def test_default_get_with_json_content_type(base: str) -> None:
    outcome = _call(f"{base}/echo")
    assert outcome.http_status == 200
    assert outcome.error is None
    echo = _echo(outcome)
    assert echo["method"] == "GET"
    assert echo["body"] == ""
    assert _values(echo, "Content-Type") == ["application/json"]


@pytest.mark.parametrize(("given", "sent"), [("post", "POST"), ("Put", "PUT"), ("GET", "GET")])
def test_method_is_upper_cased(base: str, given: str, sent: str) -> None:
    echo = _echo(_call(f"{base}/echo", method=given, body='{"a": 1}'))
    assert echo["method"] == sent
    assert echo["body"] == '{"a": 1}'


def test_lower_case_content_type_is_not_duplicated(base: str) -> None:
    headers = {"content-type": ["text/plain"]}
    echo = _echo(_call(f"{base}/echo", method="POST", body="hi", headers=headers))
    assert _values(echo, "Content-Type") == ["text/plain"]
    assert headers == {"content-type": ["text/plain"]}  # the job's mapping is not mutated


def test_repeated_header_values_and_no_mutation(base: str) -> None:
    headers = {"X-Multi": ["a", "b"], "X-Job": ["42"], "X-Utf8": ["café"]}
    echo = _echo(_call(f"{base}/echo", headers=headers))
    assert _values(echo, "X-Multi") == ["a", "b"]
    assert _values(echo, "X-Job") == ["42"]
    assert _values(echo, "Content-Type") == ["application/json"]
    assert "Content-Type" not in headers


def test_default_expected_codes_is_200(base: str) -> None:
    outcome = _call(f"{base}/status/201")
    assert not outcome.ok
    assert outcome.http_status == 201
    assert outcome.error == '201 Created{"ok": true}'
    assert _call(f"{base}/status/201", expected_codes=[]).ok is False


def test_custom_expected_codes(base: str) -> None:
    outcome = _call(f"{base}/status/201", expected_codes=[201, 202])
    assert outcome.ok
    assert outcome.http_status == 201
    assert outcome.output == '{"ok": true}'
    assert not _call(f"{base}/echo", expected_codes=[201]).ok


def test_server_error_text(base: str) -> None:
    outcome = _call(f"{base}/status/500")
    assert not outcome.ok
    assert outcome.http_status == 500
    assert outcome.error == '500 Internal Server Error{"ok": true}'
    assert outcome.output == '{"ok": true}'


def test_timeout(base: str) -> None:
    started = time.monotonic()
    outcome = _call(f"{base}/sleep?s=3", timeout=1)
    assert time.monotonic() - started < 2.5
    assert not outcome.ok
    assert outcome.http_status is None
    assert outcome.error == "context deadline exceeded (timeout after 1 s)"


def test_a_negative_timeout_means_none_as_in_kala(base: str) -> None:
    outcome = _call(f"{base}/sleep?s=1", timeout=-1)  # a body that takes a second: still ok
    assert outcome.ok, outcome.error


def test_a_bad_header_name_fails_the_attempt_cleanly(base: str) -> None:
    outcome = _call(f"{base}/echo", headers={"bad name": ["x"]})
    assert not outcome.ok
    assert outcome.error is not None and "bad name" in outcome.error


def test_timeout_covers_a_slowly_arriving_body(base: str) -> None:
    started = time.monotonic()
    outcome = _call(f"{base}/trickle", timeout=1)
    assert time.monotonic() - started < 2.5
    assert outcome.error == "context deadline exceeded (timeout after 1 s)"


def test_connection_refused() -> None:
    with socket.socket() as sock:  # bound but not listening: connections are refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        started = time.monotonic()
        outcome = _call(f"http://127.0.0.1:{port}/x")
    assert time.monotonic() - started < 3
    assert not outcome.ok
    assert outcome.http_status is None
    assert outcome.error is not None
    assert outcome.error.startswith(f"GET http://127.0.0.1:{port}/x: ConnectError: ")
    assert "refused" in outcome.error.lower()


@pytest.mark.parametrize("code", ["301", "302", "303", "307", "308"])
def test_redirect_is_followed(base: str, code: str) -> None:
    echo = _echo(_call(f"{base}/redirect?code={code}"))
    assert echo["path"] == "/echo?from=redirect"
    assert echo["method"] == "GET"


def test_redirect_307_keeps_method_and_body(base: str) -> None:
    echo = _echo(_call(f"{base}/redirect?code=307", method="post", body="payload"))
    assert (echo["method"], echo["body"]) == ("POST", "payload")


def test_at_most_ten_redirects(base: str) -> None:
    assert _call(f"{base}/hops/10").output == "arrived"
    outcome = _call(f"{base}/hops/11")
    assert not outcome.ok
    assert outcome.error is not None and "stopped after 10 redirects" in outcome.error


def test_big_body_keeps_the_tail(base: str) -> None:
    outcome = _call(f"{base}/big")
    assert outcome.ok
    assert len(outcome.output) == OUTPUT_LIMIT
    assert outcome.output.endswith("aaaEND")
    assert outcome.output == BIG_BODY.decode()[-OUTPUT_LIMIT:]


def test_big_body_error_quotes_the_head(base: str) -> None:
    outcome = _call(f"{base}/big?code=502")
    assert not outcome.ok
    assert outcome.error == "502 Bad Gateway" + "é" * 2000
    assert outcome.output.endswith("END")


@pytest.mark.parametrize(
    ("url", "method", "fragment"),
    [
        ("not a url", "GET", "invalid URL"),
        ("ftp://127.0.0.1/x", "GET", "invalid URL"),
        ("", "GET", "invalid URL"),
        ("http://", "GET", "invalid URL"),
        ("http://127.0.0.1:1/x", "GE T", "invalid method"),
        ("http://127.0.0.1:1/x", "GET\r\n", "invalid method"),
    ],
)
def test_invalid_requests_fail_cleanly(url: str, method: str, fragment: str) -> None:
    outcome = _call(url, method=method)
    assert not outcome.ok
    assert outcome.error is not None and fragment in outcome.error
