"""Remote (type 1) jobs: one HTTP call per attempt (docs/design.md Decision 12, docs/kala.md §7.2).

As Kala: the method is upper-cased (empty = GET), every header value is sent, a missing
Content-Type becomes ``application/json``, redirects are followed (at most 10), proxies come
from the environment, and the attempt succeeds only when a response arrives with an expected
status (default ``[200]``). Unlike Kala: the Content-Type check ignores case, the defaults are
applied to the request only (the job is not mutated), a timeout of 0 means 30 s and the whole
exchange (connect, redirects, body) shares that one deadline, and only the head and the tail
of the body are kept in memory.
"""

from __future__ import annotations

import codecs
import math
import re
import time
from collections.abc import Mapping
from http import HTTPStatus

import httpx

from kala_celery.runs.outcome import OUTPUT_LIMIT, Outcome, tail

__all__ = ["DEFAULT_TIMEOUT", "MAX_REDIRECTS", "call"]

DEFAULT_TIMEOUT = 30.0  # seconds, when the job's timeout is 0
MAX_REDIRECTS = 10
ERROR_BODY_LIMIT = 2000  # characters of the body quoted in a wrong-status error
_TAIL_BYTES = OUTPUT_LIMIT * 4  # a character is at most 4 bytes of UTF-8
_HEAD_BYTES = ERROR_BODY_LIMIT * 4
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token (RFC 9110)


class _Deadline(Exception):
    """The attempt's deadline passed while the body was still arriving."""


def call(
    *,
    url: str,
    method: str,
    body: str,
    headers: Mapping[str, list[str]] | None,
    timeout: int,
    expected_codes: list[int] | None,
    client: httpx.Client | None = None,
) -> Outcome:
    """Make the job's request and say how it went. Never raises for network or HTTP failures.

    ``timeout`` in seconds for the whole attempt; 0 means DEFAULT_TIMEOUT and a negative one
    none at all (as Kala, Decision 12). ``client`` lets a caller reuse a connection pool;
    without one a short-lived client is used."""
    method = (method or "GET").upper()
    seconds = DEFAULT_TIMEOUT if not timeout else math.inf if timeout < 0 else float(timeout)
    expected = list(expected_codes) if expected_codes else [200]
    if not _METHOD.fullmatch(method):
        return Outcome(ok=False, error=f"net/http: invalid method {method!r}")
    try:
        target = httpx.URL(url)
    except (httpx.InvalidURL, TypeError, ValueError) as exc:
        return Outcome(ok=False, error=f"invalid URL {url!r}: {exc}")
    if target.scheme not in ("http", "https") or not target.host:
        return Outcome(
            ok=False, error=f"invalid URL {url!r}: need an http:// or https:// URL with a host"
        )

    request_headers = _headers(headers)
    own_client = client is None
    if client is None:
        client = httpx.Client()
    try:
        return _exchange(
            client,
            method,
            target,
            body.encode("utf-8") if body else None,
            request_headers,
            seconds,
            expected,
        )
    except (httpx.TimeoutException, _Deadline):
        return Outcome(ok=False, error=f"context deadline exceeded (timeout after {seconds:g} s)")
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError, ValueError) as exc:
        return Outcome(ok=False, error=f"{method} {url}: {type(exc).__name__}: {exc}")
    finally:
        if own_client:
            client.close()


def _headers(headers: Mapping[str, list[str]] | None) -> list[tuple[bytes, bytes]]:
    """Every value of every name, in order (repeated names stay repeated), plus the default
    Content-Type when no header of that name (in any case) is there. Values are sent as UTF-8,
    as Go sends them."""
    pairs = [
        (str(name).encode("utf-8"), str(value).encode("utf-8"))
        for name, values in (headers or {}).items()
        for value in values or ()
    ]
    if not any(str(name).lower() == "content-type" for name in (headers or {})):
        pairs.append((b"Content-Type", b"application/json"))
    return pairs


def _exchange(
    client: httpx.Client,
    method: str,
    url: httpx.URL,
    content: bytes | None,
    headers: list[tuple[bytes, bytes]],
    seconds: float,
    expected: list[int],
) -> Outcome:
    deadline = time.monotonic() + seconds
    request = client.build_request(method, url, content=content, headers=headers)
    for hop in range(MAX_REDIRECTS + 1):
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _Deadline
        limit = None if remaining == math.inf else remaining
        request.extensions["timeout"] = httpx.Timeout(limit).as_dict()
        response = client.send(request, stream=True, follow_redirects=False)
        try:
            if response.next_request is not None:  # a redirect with a Location
                if hop == MAX_REDIRECTS:
                    return Outcome(
                        ok=False,
                        http_status=response.status_code,
                        error=f"{method} {url}: stopped after {MAX_REDIRECTS} redirects",
                    )
                request = response.next_request
                continue
            return _judge(response, _read(response, deadline), expected)
        finally:
            response.close()
    raise AssertionError("unreachable")  # the loop returns on its last hop


def _read(response: httpx.Response, deadline: float) -> tuple[bytes, bytes]:
    """The body's first _HEAD_BYTES and last _TAIL_BYTES (the whole body is read, as Go does,
    but never held in memory)."""
    head = bytearray()
    kept = bytearray()
    cut = False
    for chunk in response.iter_bytes():
        if len(head) < _HEAD_BYTES:
            head += chunk[: _HEAD_BYTES - len(head)]
        kept += chunk
        if len(kept) > 2 * _TAIL_BYTES:
            del kept[:-_TAIL_BYTES]
            cut = True
        if time.monotonic() > deadline:
            raise _Deadline
    if len(kept) > _TAIL_BYTES:
        del kept[:-_TAIL_BYTES]
        cut = True
    if cut:  # do not start in the middle of a UTF-8 sequence (continuation bytes: 10xxxxxx)
        skip = 0
        while skip < 3 and skip < len(kept) and kept[skip] & 0xC0 == 0x80:
            skip += 1
        del kept[:skip]
    return bytes(head), bytes(kept)


def _decode(data: bytes, encoding: str, *, final: bool = True) -> str:
    """Decode with replacement characters; not final: an incomplete sequence at the end (a cut
    made by us) is dropped instead of replaced."""
    return codecs.getincrementaldecoder(encoding)(errors="replace").decode(data, final=final)


def _judge(response: httpx.Response, body: tuple[bytes, bytes], expected: list[int]) -> Outcome:
    encoding = response.charset_encoding or "utf-8"
    try:
        codecs.lookup(encoding)
    except LookupError:
        encoding = "utf-8"
    head, kept = body
    output = tail(_decode(kept, encoding))
    status = response.status_code
    if status in expected:
        return Outcome(ok=True, output=output, http_status=status)
    reason = response.reason_phrase
    if not reason:
        try:
            reason = HTTPStatus(status).phrase
        except ValueError:
            reason = "status code " + str(status)
    prefix = _decode(head, encoding, final=len(head) < _HEAD_BYTES)[:ERROR_BODY_LIMIT]
    return Outcome(ok=False, output=output, http_status=status, error=f"{status} {reason}{prefix}")
