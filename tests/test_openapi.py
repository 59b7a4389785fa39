"""The OpenAPI document (Decision 26): served, valid OpenAPI 3.1, complete (every route and
its limits), and the checker that holds every test's responses to it can fail."""

from __future__ import annotations

import pytest
from flask import Flask
from openapi_spec_validator import validate

from kala_celery.api.openapi import OPERATIONS, document
from kala_celery.api.routes import ROUTES
from kala_celery.wire import limits
from tests import openapi_check as ours
from tests.live import Api, LiveServer
from tests.openapi_check import NonConforming, check, checker_for


def test_the_document_is_valid_openapi_3_1_and_names_every_route() -> None:
    doc = document(ROUTES)
    validate(doc)
    assert doc["openapi"] == "3.1.0"
    for rule, methods, view in ROUTES:
        path = "/api/v1" + rule.replace("<", "{").replace(">", "}")
        for method in methods:
            assert doc["paths"][path][method.lower()]["operationId"] == view.__name__
            if path.endswith("/"):  # the slash-less form redirects (Decision 1)
                redirect = doc["paths"][path.rstrip("/")][method.lower()]["responses"]
                assert set(redirect) >= ({"301"} if method == "GET" else {"308"})
    # every route has its operation and every operation its route
    assert set(OPERATIONS) == {view.__name__ for _rule, _methods, view in ROUTES}
    assert {"/health", "/metrics"} <= set(doc["paths"])
    assert doc["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"


def test_a_route_without_an_operation_fails_the_document() -> None:
    def undocumented() -> None: ...

    with pytest.raises(KeyError, match="undocumented"):
        document([*ROUTES, ("/new/", ["GET"], undocumented)])


def test_the_job_schema_states_the_limits_table() -> None:
    job = document(ROUTES)["components"]["schemas"]["JobInput"]

    def field(path: str) -> dict:
        schema = job
        for part in path.split("."):
            schema = schema["properties"][part]["anyOf"][0]  # every input field takes null
        return schema

    for path, limit in limits.FIELDS.items():
        schema = field(path)
        if limit.maximum is not None:
            assert (schema["minimum"], schema["maximum"]) == (limit.minimum, limit.maximum), path
        else:
            assert schema["maxLength"] == limit.max_length, path
    assert str(limits.MAX_NESTING) in job["description"]


def test_served_at_openapi_json_for_the_app_as_mounted(api: Api) -> None:
    response = api.http.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json;charset=UTF-8"
    assert response.json() == document(ROUTES)


@pytest.mark.parametrize(
    ("method", "path", "status", "ctype", "body", "problem"),
    [
        ("GET", "/api/v1/job/x/", 200, "application/json", b'{"job": {}}', "required"),
        ("GET", "/api/v1/job/x/", 418, None, b"", "not documented"),
        ("GET", "/api/v1/job/x/", 404, None, b"body", "without a body"),
        ("GET", "/api/v1/stats/", 200, "text/html", b"<p>", "content type"),
        ("POST", "/api/v1/job/", 400, "application/json", b"{", "not JSON"),
        ("POST", "/api/v1/job/", 400, "application/json", b'{"error": 1}', "not of type"),
        ("GET", "/api/v1/nothing/", 404, "text/plain", b"404 page not found\n", "content type"),
        ("GET", "/api/v1/job/", 200, "application/json",
         b'{"jobs": {"a": {"name": "a", "extra": 1}}}', "'extra' was unexpected"),
    ],
)
def test_the_checker_refuses_what_the_document_does_not_say(
    method: str, path: str, status: int, ctype: str | None, body: bytes, problem: str
) -> None:
    with pytest.raises(NonConforming, match=problem):
        check(checker_for(), method, path, status, ctype, body)


def test_the_checker_passes_kala_shapes() -> None:
    checker = checker_for()
    check(checker, "GET", "/api/v1/job/x/", 404, None, b"")
    check(checker, "DELETE", "/api/v1/job/all/", 204, None, b"")
    check(checker, "GET", "/api/v1/job/all/", 404, None, b"")  # Kala: GET reaches {id}
    check(checker, "GET", "/api/v1/job", 301, "text/html; charset=utf-8", b"<a>")
    check(checker, "PATCH", "/api/v1/job/x/", 405, "application/json", b'{"error": "no"}')
    check(checker, "GET", "/api/v1/job/stats/x/", 200, "application/json",
          b'{"job_stats": null}')


def test_the_checked_clients_refuse_a_server_that_does_not_conform() -> None:
    """What the HTTP tests use instead of bare httpx (`ours.get`, `ours.client`) checks the
    API's paths of the app as mounted, streamed responses too, and leaves other paths alone."""
    app = Flask("not-kala")
    for path in ("/api/v1/stats/", "/kala/stats/", "/webui/"):
        app.add_url_rule(path, path, lambda: "<p>stats</p>")  # text/html, not the document's
    server = LiveServer(app)
    try:
        with pytest.raises(NonConforming, match="content type"):
            ours.get(f"{server.url}/api/v1/stats/")
        with ours.client(base_url=server.url) as client:
            with pytest.raises(NonConforming, match="content type"):
                client.get("/api/v1/stats/")
            with pytest.raises(NonConforming, match="content type"), client.stream(
                    "GET", "/api/v1/stats/"):
                pass
            assert client.get("/webui/").status_code == 200  # the dashboard: not the API
        with ours.client("/kala", health=None, metrics=None, base_url=server.url) as client:
            with pytest.raises(NonConforming, match="content type"):
                client.get("/kala/stats/")
            assert client.get("/api/v1/stats/").status_code == 200  # not this app's API
    finally:
        server.stop()


def test_the_dashboard_links_the_document(api: Api) -> None:
    page = api.raw.get("/webui/")
    assert page.status_code == 200
    assert 'href="/api/v1/openapi.json"' in page.text
