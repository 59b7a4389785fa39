"""Remote (type 1) jobs: one HTTP call per attempt (docs/design.md Decision 12, docs/kala.md §7.2).

As Kala: the method is upper-cased (empty = GET), every header value is sent, a missing
Content-Type becomes ``application/json``, redirects are followed (at most 10), proxies come
from the environment, and the attempt succeeds only when a response arrives with an expected
status (default ``[200]``). Unlike Kala: the Content-Type check ignores case, the defaults are
applied to the request only (the job is not mutated), a timeout of 0 means 30 s and the whole
exchange (connect, redirects, body) shares that one deadline, and only the head and the tail
of the body are kept in memory.

What the call may reach (docs/design.md Decision 33, docs/security.md): every hop's host is
resolved once, the address is checked against the worker's RemotePolicy (loopback,
link-local, unspecified and multicast refused unless KALA_REMOTE_ALLOW names them;
KALA_REMOTE_DENY refuses more), and the connection goes to that checked address, the request
keeping its Host header and, over TLS, its server name (SNI) and certificate check for the
URL's host. A refusal is the attempt's error, and nothing is connected.
"""

from __future__ import annotations

import codecs
import ipaddress
import math
import re
import socket
import time
import urllib.request
from collections.abc import Callable, Mapping
from http import HTTPStatus

import httpx

from kala_celery.config import Address, RemotePolicy
from kala_celery.runs.outcome import OUTPUT_LIMIT, Outcome, tail

__all__ = ["DEFAULT_TIMEOUT", "MAX_REDIRECTS", "Resolve", "call", "resolve_host"]

# host, port -> the addresses it resolves to, the one to use first
Resolve = Callable[[str, int], list[str]]

DEFAULT_TIMEOUT = 30.0  # seconds, when the job's timeout is 0
MAX_REDIRECTS = 10
ERROR_BODY_LIMIT = 2000  # characters of the body quoted in a wrong-status error
_TAIL_BYTES = OUTPUT_LIMIT * 4  # a character is at most 4 bytes of UTF-8
_HEAD_BYTES = ERROR_BODY_LIMIT * 4
_METHOD = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP token (RFC 9110)


class _Deadline(Exception):
    """The attempt's deadline passed while the body was still arriving."""


class Refused(Exception):
    """The policy refuses the address a hop would connect to (the message says why)."""


def resolve_host(host: str, port: int) -> list[str]:
    """The host's addresses, as the system resolver gives them (its first is used)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _address(text: str) -> Address:
    return ipaddress.ip_address(text.partition("%")[0])  # an IPv6 zone (fe80::1%eth0) aside


class _Guarded(httpx.BaseTransport):
    """Resolve each request's host once, check that address, connect to it.

    The request sent names the checked address in its URL and keeps the original Host header
    (the client set it from the URL's host) and, over TLS, the original host as server name
    (httpcore's `sni_hostname` extension, which the certificate is checked against too). A
    proxy from the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY) is used as
    before: given the checked address over plain HTTP; an HTTPS URL keeps its name there (the
    tunnel's TLS needs it), so the proxy resolves it again."""

    def __init__(self, policy: RemotePolicy, resolve: Resolve) -> None:
        self._policy = policy
        self._resolve = resolve
        self._proxies = urllib.request.getproxies_environment()
        self._transports: dict[str | None, httpx.HTTPTransport] = {}

    def _transport(self, url: httpx.URL) -> tuple[httpx.HTTPTransport, bool]:
        """The transport for `url` (through the environment's proxy for it, if any), and
        whether that is a proxy."""
        proxy = self._proxies.get(url.scheme) or self._proxies.get("all")
        if proxy and urllib.request.proxy_bypass_environment(url.host, self._proxies):
            proxy = None
        if proxy not in self._transports:
            self._transports[proxy] = httpx.HTTPTransport(proxy=proxy)
        return self._transports[proxy], proxy is not None

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            literal: Address | None = _address(url.host)
        except ValueError:
            literal = None
        if literal is None:
            try:
                found = self._resolve(url.host, port)
            except OSError as exc:
                raise httpx.ConnectError(f"cannot resolve {url.host}: {exc}") from None
            if not found:
                raise httpx.ConnectError(f"cannot resolve {url.host}: no address")
            literal = _address(found[0])
        why = self._policy.refusal(url.host, literal)
        if why is not None:
            raise Refused(why)
        transport, proxied = self._transport(url)
        if proxied and url.scheme == "https":
            # httpcore's CONNECT tunnel takes the TLS server name from the URL, so the name
            # stays and the proxy resolves it again (docs/security.md, "Proxies")
            return transport.handle_request(request)
        extensions = dict(request.extensions)
        if url.scheme == "https":
            extensions.setdefault("sni_hostname", url.host)
        checked = httpx.Request(
            request.method,
            url.copy_with(host=str(literal)),
            headers=request.headers,  # Host: the URL's host, as the client set it
            stream=request.stream,
            extensions=extensions,
        )
        return transport.handle_request(checked)

    def close(self) -> None:
        for transport in self._transports.values():
            transport.close()


def call(
    *,
    url: str,
    method: str,
    body: str,
    headers: Mapping[str, list[str]] | None,
    timeout: int,
    expected_codes: list[int] | None,
    policy: RemotePolicy | None = None,
    resolve: Resolve = resolve_host,
) -> Outcome:
    """Make the job's request and say how it went. Never raises for network or HTTP failures.

    ``timeout`` in seconds for the whole attempt; 0 means DEFAULT_TIMEOUT and a negative one
    none at all (as Kala, Decision 12). ``policy``: what the call may reach (None: the
    default, nothing allowed or denied beyond it); ``resolve``: how a host name becomes
    addresses (the system resolver; a test gives its own)."""
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
    client = httpx.Client(
        transport=_Guarded(policy or RemotePolicy(), resolve),
        trust_env=False,  # the guard reads the proxy variables: every hop goes through it
    )
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
    except Refused as exc:
        return Outcome(ok=False, error=f"{method} {url}: {exc}")
    except (httpx.TimeoutException, _Deadline):
        return Outcome(ok=False, error=f"context deadline exceeded (timeout after {seconds:g} s)")
    except (httpx.HTTPError, httpx.InvalidURL, httpx.StreamError, OSError, ValueError) as exc:
        return Outcome(ok=False, error=f"{method} {url}: {type(exc).__name__}: {exc}")
    finally:
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
