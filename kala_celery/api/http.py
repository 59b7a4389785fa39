"""Kala's HTTP conventions for the blueprint: JSON/empty/error responses, the 1 MiB body
limit, token auth, slash redirects (docs/design.md Decision 1), route misses, 405 and gzip."""

from __future__ import annotations

import gzip
import hmac
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit

from flask import Response, request
from werkzeug.exceptions import MethodNotAllowed, NotFound
from werkzeug.routing import RequestRedirect

from kala_celery import wire

JSON_TYPE = "application/json;charset=UTF-8"
MAX_BODY = 1 << 20  # Kala reads at most 1 MiB of a request body
T = TypeVar("T")


class BodyTooLarge(Exception):
    pass


def json_response(obj: Any, status: int = 200) -> Response:
    return Response(wire.dumps(obj), status=status, content_type=JSON_TYPE)


def error_response(message: str, status: int) -> Response:
    """docs/design.md Decision 2: {"error": "..."} as JSON."""
    return json_response({"error": message}, status)


def empty_response(status: int) -> Response:
    response = Response(b"", status=status)
    response.headers.pop("Content-Type", None)
    return response


def read_body() -> bytes:
    """The request body, refusing (not truncating, as Kala does) anything over 1 MiB."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise BodyTooLarge
    body = request.stream.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise BodyTooLarge
    return body


def decode_first_mib(decode: Callable[[bytes], T]) -> T:
    """Decode a job body as Kala does: only its first 1 MiB counts, so a longer body whose
    document ends (and is followed only by blanks) within it is accepted as Kala accepts it
    (Decision 23); one whose document does not is 413 (Kala: 400 `unexpected end of JSON
    input`). The rest of the body is read and dropped."""
    body = request.stream.read(MAX_BODY + 1)
    if len(body) <= MAX_BODY:
        return decode(body)
    try:
        data = decode(body[:MAX_BODY])
    except wire.WireError:
        raise BodyTooLarge from None
    while request.stream.read(1 << 16):  # bounded by what the client sends
        pass
    return data


def under(prefix: str) -> bool:
    path = request.path
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def check_token(token: str | None) -> Response | None:
    """docs/design.md Decision 16: with a token configured, every API route needs
    `Bearer <token>`."""
    if not token:
        return None
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
        return None
    response = error_response("missing or wrong bearer token", 401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="kala"'
    return response


def routing_response() -> Response | None:
    """Answer a request under the API prefix that matched no route the Kala way."""
    exc = request.routing_exception
    if exc is None:
        return None
    if isinstance(exc, RequestRedirect):
        parts = urlsplit(exc.new_url)
        location = parts.path + (f"?{parts.query}" if parts.query else "")
        if request.method in ("GET", "HEAD"):
            body = f'<a href="{location}">Moved Permanently</a>.\n\n'.encode()
            response = Response(body, status=301, content_type="text/html; charset=utf-8")
        else:  # 308 keeps the method and body, so a POST to /job still creates the job
            response = empty_response(308)
        response.headers["Location"] = location
        return response
    if isinstance(exc, MethodNotAllowed):
        response = empty_response(405)
        if exc.valid_methods:
            response.headers["Allow"] = ", ".join(sorted(exc.valid_methods))
        return response
    if isinstance(exc, NotFound):
        return route_miss()
    return None


def route_miss() -> Response:
    response = Response(b"404 page not found\n", status=404)
    response.headers["Content-Type"] = "text/plain; charset=utf-8"
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response


def gzip_if_asked(response: Response) -> Response:
    """Compress the body when the client accepts gzip (Kala wraps every response)."""
    if "gzip" not in request.headers.get("Accept-Encoding", "").lower():
        return response
    if response.direct_passthrough or "Content-Encoding" in response.headers:
        return response
    response.headers.add("Vary", "Accept-Encoding")
    data = response.get_data()
    if not data:
        return response
    response.set_data(gzip.compress(data, compresslevel=6))
    response.headers["Content-Encoding"] = "gzip"
    return response
