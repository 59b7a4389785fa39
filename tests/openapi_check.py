"""Check an HTTP response against the API's OpenAPI document (kala_celery/api/openapi.py).

Every response the tests see from our API goes through `check_response`, so it must conform:
a documented status for the operation, its content type, a body valid against its schema, or
no body where none is documented. Tests get that by talking to the API only through this
module: tests/live.py's clients, `client(...)` for an httpx.Client of their own, and `get`,
`post`, `put`, `delete`, `request` for one-off calls (httpx's, checked). Responses from other
servers (Kala, Flower, a test's HTTP target) or from paths outside the API (the dashboard's
HTML pages) are not checked. Validators are compiled once per schema and cached: a check costs
a regex match and one jsonschema validation.
"""

from __future__ import annotations

import json
import re
import ssl
from dataclasses import dataclass
from functools import cache
from typing import Any

import httpx
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from kala_celery.api.openapi import document
from kala_celery.api.routes import ROUTES

BASE = "urn:kala-openapi"
API_PATHS = ("/api/v1", "/health", "/metrics")  # create_app's; the dashboard is not the API
# Paths the document does not know: what the API answers there (Decision 1, 16, 26).
ROUTE_MISS = {
    "301": {"description": "unclean path", "content": {"text/html": {"schema": {}}}},
    "308": {"description": "unclean path"},
    "401": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
    "404": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
    "405": {"content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
}


class NonConforming(AssertionError):
    pass


@dataclass(frozen=True, eq=False)  # hashed by identity: validators are cached per checker
class Checker:
    doc: dict[str, Any]
    routes: tuple[tuple[re.Pattern[str], str], ...]
    registry: Registry

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]] | None:
        """(path template, operation) the API routes this request to, like werkzeug: the
        first matching path that has the method (literal paths sort first)."""
        method = "get" if method.lower() == "head" else method.lower()
        for pattern, template in self.routes:
            if pattern.fullmatch(path) and method in self.doc["paths"][template]:
                return template, self.doc["paths"][template][method]
        return None

    def validate(self, pointer: str, schema: dict[str, Any], value: Any, where: str) -> None:
        validator = _validator(self, pointer, json.dumps(schema, sort_keys=True))
        errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            error = errors[0]
            raise NonConforming(f"{where}: {error.message} at {list(error.absolute_path)}")


@cache
def _validator(checker: Checker, pointer: str, _text: str) -> Draft202012Validator:
    return Draft202012Validator({"$ref": f"{BASE}#{pointer}"}, registry=checker.registry)


def _escape(part: str) -> str:
    return part.replace("~", "~0").replace("/", "~1")


@cache
def checker_for(prefix: str = "/api/v1", health: str | None = "/health",
                metrics: str | None = "/metrics") -> Checker:
    doc = document(ROUTES, prefix, health_path=health, metrics_path=metrics)
    templates = sorted(doc["paths"], key=lambda t: (t.count("{"), t))
    routes = tuple(
        (re.compile(re.sub(r"\\{[^/]+?\\}", "[^/]+", re.escape(t))), t) for t in templates
    )
    registry = Registry().with_resource(BASE, Resource(contents=doc, specification=DRAFT202012))
    doc["components"]["routeMiss"] = ROUTE_MISS
    return Checker(doc, routes, registry)


def check(checker: Checker, method: str, path: str, status: int, content_type: str | None,
          body: bytes | None) -> None:
    """Raise NonConforming unless the response is what the document says (`body` None: not
    read, as of a streamed response: the status and content type only)."""
    where = f"{method} {path} -> {status}"
    found = checker.operation(method, path)
    if found is None:
        template, responses, pointer = "", ROUTE_MISS, "/components/routeMiss"
    else:
        template, operation = found
        responses = operation["responses"]
        verb = "get" if method.lower() == "head" else method.lower()
        pointer = f"/paths/{_escape(template)}/{verb}/responses"
    spec = responses.get(str(status))
    if spec is None:
        raise NonConforming(f"{where}: status {status} is not documented for {template or path}")
    content = spec.get("content")
    if not content:
        if body:
            raise NonConforming(f"{where}: documented without a body, got {body[:100]!r}")
        return
    if method.upper() == "HEAD":
        return
    media = (content_type or "").split(";")[0].strip().lower()
    if media not in content:
        raise NonConforming(f"{where}: content type {content_type!r}, documented {list(content)}")
    if media != "application/json" or body is None:
        return
    try:
        value = json.loads(body)
    except ValueError as exc:
        raise NonConforming(f"{where}: not JSON ({exc}): {body[:100]!r}") from None
    schema = content[media]["schema"]
    checker.validate(f"{pointer}/{status}/content/{_escape(media)}/schema", schema, value, where)


def check_response(checker: Checker, response: httpx.Response, api_paths: tuple[str, ...],
                   *, read: bool = True) -> None:
    """Check an httpx response if its path is the API's (under one of api_paths); with
    `read` False (a streamed response, its body not read yet), its status and type only."""
    path = response.request.url.path
    if not any(path == p or path.startswith(p.rstrip("/") + "/") for p in api_paths):
        return
    check(checker, response.request.method, path, response.status_code,
          response.headers.get("content-type"), response.content if read else None)


class CheckedClient(httpx.Client):
    """An httpx.Client whose every response must conform to the document (a streamed one:
    its status and content type, as its body is the caller's to read)."""

    def __init__(self, checker: Checker, api_paths: tuple[str, ...], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._checker = checker
        self._api_paths = api_paths

    def send(self, request: httpx.Request, *, stream: bool = False, **kwargs: Any
             ) -> httpx.Response:
        response = super().send(request, stream=stream, **kwargs)
        check_response(self._checker, response, self._api_paths, read=not stream)
        return response


def client(prefix: str = "/api/v1", *, health: str | None = "/health",
           metrics: str | None = "/metrics", **kwargs: Any) -> CheckedClient:
    """An httpx.Client (httpx's keyword arguments) for our API mounted at `prefix`, with
    /health and /metrics where they are mounted (None: not mounted, as with init_kala's
    defaults): every response from those paths is checked against that app's document."""
    api_paths = tuple(path for path in (prefix, health, metrics) if path)
    if "verify" not in kwargs and "cert" not in kwargs:
        kwargs["verify"] = _tls()  # httpx builds one per client otherwise: ~50 ms each
    return CheckedClient(checker_for(prefix, health, metrics), api_paths, **kwargs)


@cache
def _tls() -> ssl.SSLContext:
    """httpx's default TLS context, made once (its CA bundle takes ~50 ms to load)."""
    return httpx.create_ssl_context()


def request(method: str, url: str, **kwargs: Any) -> httpx.Response:
    """httpx.request to the standalone API (create_app's paths), its response checked; a new
    client and connection per call, as httpx.request."""
    client_args = {k: kwargs.pop(k) for k in ("verify", "cert", "proxy", "trust_env")
                   if k in kwargs}
    with client(**client_args) as one:
        return one.request(method, url, **kwargs)


def get(url: str, **kwargs: Any) -> httpx.Response:
    """httpx.get, checked: see `request`."""
    return request("GET", url, **kwargs)


def post(url: str, **kwargs: Any) -> httpx.Response:
    """httpx.post, checked: see `request`."""
    return request("POST", url, **kwargs)


def put(url: str, **kwargs: Any) -> httpx.Response:
    """httpx.put, checked: see `request`."""
    return request("PUT", url, **kwargs)


def delete(url: str, **kwargs: Any) -> httpx.Response:
    """httpx.delete, checked: see `request`."""
    return request("DELETE", url, **kwargs)
