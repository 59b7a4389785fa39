"""The API on a real socket (werkzeug server in a thread) for HTTP tests."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import httpx
from flask import Flask
from werkzeug.serving import make_server

from kala_celery.api import create_app
from kala_celery.api.state import KalaState
from kala_celery.config import Settings
from tests.openapi_check import API_PATHS, CheckedClient, checker_for


class LiveServer:
    def __init__(self, app: Flask) -> None:
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


# The suite's listeners are on loopback, which a worker refuses to call by default
# (docs/security.md): the APIs and workers the tests start allow it; the default stays.
LOOPBACK_ALLOW = "127.0.0.0/8,::1"


@dataclass
class Api:
    """A running API: `http` talks to /api/v1, `raw` to the server root, `state` is the store."""

    server: LiveServer
    state: KalaState
    http: httpx.Client
    raw: httpx.Client

    def create(self, **job: object) -> str:
        response = self.http.post("/job/", json=job)
        assert response.status_code == 201, response.text
        return response.json()["id"]

    def job(self, job_id: str) -> dict:
        response = self.http.get(f"/job/{job_id}/")
        assert response.status_code == 200, response.text
        return response.json()["job"]

    def close(self) -> None:
        self.http.close()
        self.raw.close()
        self.server.stop()
        self.state.engine.dispose()


def start_api(settings: Settings) -> Api:
    """The API for `settings` on a real socket of 127.0.0.1 (stop it with `close()`)."""
    app = create_app(settings)
    server = LiveServer(app)
    checker = checker_for()  # every response must conform to the OpenAPI document
    return Api(
        server=server,
        state=app.extensions["kala"],
        http=CheckedClient(checker, API_PATHS, base_url=f"{server.url}/api/v1", timeout=30),
        raw=CheckedClient(checker, API_PATHS, base_url=server.url, timeout=30),
    )
