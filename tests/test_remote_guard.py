"""What a remote job may reach (docs/security.md): refused addresses are never connected to,
directly, through a redirect or through a name, by tasks/remote.py's call and by a real
`celery worker`; the create refuses a literal refused address with 400."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kala_celery.config import ConfigError, RemotePolicy, Settings
from kala_celery.runs.outcome import Outcome
from kala_celery.tasks.remote import call
from tests.test_remote import no_proxy  # noqa: F401 - autouse: no proxy here either
from tests.test_worker_runs import finished

pytestmark = pytest.mark.timeout(120)


class Silent:
    """A listening socket that must see no connection: a thread accepts with a timeout and
    counts what arrives, until `quiet()` says how many came."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.sock = socket.create_server((host, 0))
        self.sock.settimeout(0.05)
        self.port = self.sock.getsockname()[1]
        self.host = host
        self.accepted = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def quiet(self) -> int:
        """Connections seen, the accept thread stopped. A connect the call made completed (in
        the kernel's backlog) before the call returned, so a last accept with a timeout takes
        one the thread has not yet."""
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.settimeout(0.2)
        try:
            conn, _ = self.sock.accept()
        except TimeoutError:
            pass
        else:
            self.accepted += 1
            conn.close()
        self.sock.close()
        return self.accepted


@pytest.fixture
def silent() -> Iterator[Silent]:
    listener = Silent()
    yield listener
    listener._stop.set()
    listener.sock.close()


class Redirector(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    target = ""  # where every request is sent on
    seen: list[tuple[str, str]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Host", "")))
        if self.path == "/go":
            self.send_response(302)
            self.send_header("Location", self.target)
            self.send_header("Content-Length", "0")
            self.end_headers()
        else:
            self.send_response(200)
            self.send_header("Content-Length", "4")
            self.end_headers()
            self.wfile.write(b"here")


@pytest.fixture
def server_on_127_0_0_2() -> Iterator[tuple[str, type[Redirector]]]:
    """An HTTP server on 127.0.0.2 (Linux answers on all of 127.0.0.0/8)."""
    handler = type("Handler", (Redirector,), {"seen": []})
    server = ThreadingHTTPServer(("127.0.0.2", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.2:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def _call(url: str, policy: RemotePolicy | None = None, **kwargs: Any) -> Outcome:
    return call(url=url, method="", body="", headers=None, timeout=5, expected_codes=None,
                policy=policy, **kwargs)


def _refused(outcome: Outcome, address: str) -> str:
    assert not outcome.ok
    assert outcome.http_status is None
    assert outcome.error is not None
    assert "refused to call" in outcome.error and address in outcome.error, outcome.error
    return outcome.error


# ---------------------------------------------------------------- the worker's call


def test_the_silent_listener_does_see_a_call_that_is_allowed(silent: Silent) -> None:
    """The check the refusals rely on: an allowed call to it is counted."""
    outcome = _call(f"http://127.0.0.1:{silent.port}/x", RemotePolicy.parse(allow="127.0.0.1"))
    assert not outcome.ok  # it closes without an answer
    assert silent.quiet() == 1


def test_loopback_is_refused_and_never_connected(silent: Silent) -> None:
    error = _refused(_call(f"http://127.0.0.1:{silent.port}/x"), "127.0.0.1")
    assert "loopback" in error and "KALA_REMOTE_ALLOW" in error
    assert silent.quiet() == 0


def test_ipv4_mapped_loopback_is_refused(silent: Silent) -> None:
    error = _refused(_call(f"http://[::ffff:127.0.0.1]:{silent.port}/x"), "127.0.0.1")
    assert "loopback" in error
    assert silent.quiet() == 0


def test_the_metadata_address_is_refused_at_once() -> None:
    started = time.monotonic()
    error = _refused(_call("http://169.254.169.254/latest/meta-data/"), "169.254.169.254")
    assert "link-local" in error and "KALA_REMOTE_ALLOW=169.254.169.254" in error
    assert time.monotonic() - started < 1  # no connect attempt (it would wait for a timeout)


def test_allow_lets_loopback_through(server_on_127_0_0_2: tuple[str, Any]) -> None:
    where, handler = server_on_127_0_0_2
    policy = RemotePolicy.parse(allow="127.0.0.2")
    outcome = _call(f"http://{where}/here", policy)
    assert (outcome.ok, outcome.output) == (True, "here"), outcome
    assert handler.seen == [("/here", where)]
    assert not _call(f"http://{where}/here").ok  # without the allow: refused


def test_a_redirect_to_a_refused_address_is_refused(
    silent: Silent, server_on_127_0_0_2: tuple[str, Any]
) -> None:
    where, handler = server_on_127_0_0_2
    handler.target = f"http://127.0.0.1:{silent.port}/secret"
    policy = RemotePolicy.parse(allow="127.0.0.2")
    error = _refused(_call(f"http://{where}/go", policy), "127.0.0.1")
    assert "loopback" in error
    assert handler.seen == [("/go", where)]  # the first hop was made
    assert silent.quiet() == 0  # the second never


def test_a_name_is_checked_and_connected_by_its_one_resolved_address(
    silent: Silent, server_on_127_0_0_2: tuple[str, Any]
) -> None:
    lookups: list[tuple[str, int]] = []

    def resolve(host: str, port: int) -> list[str]:
        lookups.append((host, port))
        return ["127.0.0.1"]  # and the next lookup would say something else

    error = _refused(_call(f"http://internal.test:{silent.port}/x", resolve=resolve),
                     "internal.test (127.0.0.1)")
    assert "loopback" in error
    assert lookups == [("internal.test", silent.port)]
    assert silent.quiet() == 0

    # allowed: the connection goes to the address resolved (once), with the name as Host
    where, handler = server_on_127_0_0_2
    port = int(where.rsplit(":", 1)[1])
    answers = iter([["127.0.0.2"], ["127.0.0.1"]])  # a second lookup would go elsewhere

    def changing(host: str, port: int) -> list[str]:
        lookups.append((host, port))
        return next(answers)

    lookups.clear()
    outcome = _call(f"http://service.test:{port}/here", RemotePolicy.parse(allow="127.0.0.2"),
                    resolve=changing)
    assert (outcome.ok, outcome.output) == (True, "here"), outcome
    assert lookups == [("service.test", port)]
    assert handler.seen == [("/here", f"service.test:{port}")]


def test_allow_by_name_lets_that_name_reach_loopback(
    server_on_127_0_0_2: tuple[str, Any]
) -> None:
    where, handler = server_on_127_0_0_2
    port = where.rsplit(":", 1)[1]
    policy = RemotePolicy.parse(allow="Service.Test.")  # no case, no final dot

    def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.2"]

    outcome = _call(f"http://service.test:{port}/here", policy, resolve=resolve)
    assert (outcome.ok, outcome.output) == (True, "here"), outcome
    other = _call(f"http://other.test:{port}/here", policy, resolve=resolve)
    _refused(other, "other.test (127.0.0.2)")  # the name is allowed, not its address
    assert handler.seen == [("/here", f"service.test:{port}")]


def test_a_name_that_resolves_to_the_metadata_address_is_refused() -> None:
    outcome = _call("http://metadata.test/latest/meta-data/",
                    resolve=lambda host, port: ["169.254.169.254"])
    assert "link-local" in _refused(outcome, "metadata.test (169.254.169.254)")


def test_deny_refuses_a_private_range() -> None:
    def resolve(host: str, port: int) -> list[str]:
        return ["10.1.2.3"]

    policy = RemotePolicy.parse(deny="10.0.0.0/8")
    error = _refused(_call("http://db.internal.test/x", policy, resolve=resolve), "10.1.2.3")
    assert "KALA_REMOTE_DENY" in error
    _refused(_call("http://10.9.9.9/x", policy), "10.9.9.9")  # a literal too
    assert RemotePolicy().refusal("x", ipaddress.ip_address("10.1.2.3")) is None


def test_deny_wins_over_allow(server_on_127_0_0_2: tuple[str, Any]) -> None:
    where, handler = server_on_127_0_0_2
    policy = RemotePolicy.parse(allow="127.0.0.0/8", deny="127.0.0.2")
    error = _refused(_call(f"http://{where}/here", policy), "127.0.0.2")
    assert "KALA_REMOTE_DENY" in error
    assert handler.seen == []
    named = RemotePolicy.parse(allow="127.0.0.0/8", deny="service.test")
    outcome = _call(f"http://service.test:{where.rsplit(':', 1)[1]}/here", named,
                    resolve=lambda host, port: ["127.0.0.2"])
    assert "KALA_REMOTE_DENY" in _refused(outcome, "service.test")
    assert handler.seen == []


# ---------------------------------------------------------------- configuration


@pytest.mark.parametrize("bad", ["10.0.0.1/8", "300.1.1.1", "fe80::/200", "a b", "x,,/8"])
def test_a_bad_entry_is_a_configuration_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="KALA_REMOTE_DENY"):
        Settings.from_env({"KALA_REMOTE_DENY": bad})
    with pytest.raises(ConfigError, match="KALA_REMOTE_ALLOW"):
        Settings(remote_allow=bad)


def test_a_bad_entry_stops_a_command_at_start(tmp_path: Path) -> None:
    env = {**os.environ, "KALA_DATA_DIR": str(tmp_path), "KALA_REMOTE_DENY": "10.0.0.1/8"}
    done = subprocess.run([sys.executable, "-m", "kala_celery", "db", "upgrade"], env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert "KALA_REMOTE_DENY: '10.0.0.1/8' is not a CIDR" in done.stderr
    assert not (tmp_path / "kala.db").exists()


def test_settings_carry_the_lists_to_other_processes() -> None:
    settings = Settings(remote_allow="127.0.0.1, metrics.local", remote_deny="10.0.0.0/8")
    again = Settings.from_env(settings.to_env())
    assert again.remote_policy == settings.remote_policy
    assert "metrics.local" in again.remote_policy.allow_hosts
    assert Settings().remote_policy == RemotePolicy()  # the default allows nothing extra


# ---------------------------------------------------------------- the API and a real worker


@pytest.mark.parametrize("url", ["http://169.254.169.254/latest/meta-data/",
                                 "http://[::ffff:169.254.169.254]/latest/",
                                 "http://0.0.0.0:8931/x"])
def test_the_create_refuses_a_literal_refused_address(api: Any, url: str) -> None:
    # a name is accepted: the worker checks what it resolves to at each run
    job_id = api.create(name="by name", type=1, schedule="R1/2099-01-01T00:00:00Z/PT1H",
                        remote_properties={"url": "http://metadata.google.internal/x"})
    body = {"name": "steal", "type": 1, "schedule": "R1/2099-01-01T00:00:00Z/PT1H",
            "remote_properties": {"url": url}}
    for response in (api.http.post("/job/", json=body),
                     api.http.put(f"/job/{job_id}/", json=body)):
        assert response.status_code == 400, response.text
        assert "refused to call" in response.json()["error"]
        assert "KALA_REMOTE_ALLOW" in response.json()["error"]
    assert api.job(job_id)["remote_properties"]["url"] == "http://metadata.google.internal/x"


def test_a_real_worker_never_connects_to_loopback(
    cluster: Any, silent: Silent, server_on_127_0_0_2: tuple[str, Any]
) -> None:
    where, handler = server_on_127_0_0_2
    handler.target = f"http://127.0.0.1:{silent.port}/secret"
    cluster.worker(extra_env={"KALA_REMOTE_ALLOW": "127.0.0.2"})  # not 127.0.0.1
    api = cluster.api  # allows loopback, so the jobs are stored and reach the worker

    def run_of(url: str) -> dict:
        job_id = api.create(name="peek", type=1, remote_properties={"url": url})
        [run] = finished(api, job_id)
        return run

    direct = run_of(f"http://127.0.0.1:{silent.port}/secret")
    redirected = run_of(f"http://{where}/go")
    allowed = run_of(f"http://{where}/here")
    for run in (direct, redirected):
        assert run["status"] == "Failed", run
        assert "refused to call 127.0.0.1: a loopback address" in run["error"], run
        assert "KALA_REMOTE_ALLOW" in run["error"]
    assert (allowed["status"], allowed["output"]) == ("Success", "here"), allowed
    assert handler.seen == [("/go", where), ("/here", where)]
    assert silent.quiet() == 0
