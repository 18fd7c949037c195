"""HTTP with hard bounds, for everything the agents ask of the internet (feeds, the LLM API).
httpx's timeouts bound each network operation, not a request: a server that sends its headers
one byte at a time never trips them. Here one deadline covers the whole request (connect,
TLS, headers, body): every socket operation of the request waits at most until then. The body
is read as it streams and given up past a byte cap, decompression included. A caller may guard
which addresses a connection may reach: each address a name resolves to is checked before
connecting, and the connection goes to the checked address, so a name cannot resolve anew in
between (DNS rebinding)."""

from __future__ import annotations

import functools
import ipaddress
import socket
import ssl
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# A name with more addresses than this is tried on its first ones only: each try may wait
# until the deadline's end, and a hostile name may list hundreds.
MAX_ADDRESSES = 4
# One layer of these, decoded here under the byte cap; anything else is refused.
ACCEPTED_ENCODINGS = {"gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}

# Per thread: the request's deadline (time.monotonic()) and the check of addresses.
_bounds = threading.local()


class ResponseTooLarge(Exception):
    """The body went past the caller's byte cap; reading stopped there."""


class UnsupportedEncoding(Exception):
    """The body came in a Content-Encoding that is not decoded here."""


class AddressRefused(httpcore.ConnectError):
    """The address guard refused every address of the name: nothing was sent."""


@dataclass(frozen=True)
class BoundedResponse:
    status_code: int
    headers: httpx.Headers
    content: bytes
    url: httpx.URL

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


_NAT64 = ipaddress.ip_network("64:ff9b::/96")


def plain_address(address: str) -> IPAddress:
    """An IP address as ipaddress sees it, an IPv6 zone dropped, and an IPv6 address that
    carries an IPv4 one (mapped ::ffff:a.b.c.d, compatible ::a.b.c.d, 6to4, NAT64) taken as
    the IPv4 address it leads to."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return ip.ipv4_mapped
        if ip.sixtofour is not None:
            return ip.sixtofour
        if ip in _NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):
            return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every network operation this thread makes inside the block, through a bounded_client,
    ends within seconds from now (an enclosing deadline that ends sooner still holds)."""
    previous = getattr(_bounds, "deadline", None)
    at = time.monotonic() + seconds
    _bounds.deadline = at if previous is None else min(at, previous)
    try:
        yield
    finally:
        _bounds.deadline = previous


@contextmanager
def address_guard(check: Callable[[IPAddress], str | None] | None) -> Iterator[None]:
    """Inside the block, this thread's connections go only to addresses for which check
    returns None; a string is the reason an address is refused."""
    previous = getattr(_bounds, "guard", None)
    _bounds.guard = check
    try:
        yield
    finally:
        _bounds.guard = previous


def _clamp(timeout: float | None, error: type[Exception]) -> float | None:
    at = getattr(_bounds, "deadline", None)
    if at is None:
        return timeout
    remaining = at - time.monotonic()
    if remaining <= 0:
        raise error("the request's deadline passed")
    return remaining if timeout is None else min(timeout, remaining)


def _addresses(host: str, port: int) -> list[str]:
    try:
        return [str(plain_address(host))]
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise httpcore.ConnectError(f"cannot resolve {host} ({exc})") from None
    return list(dict.fromkeys(info[4][0] for info in infos))[:MAX_ADDRESSES]


class _DeadlineStream(httpcore.NetworkStream):
    """A connection whose every read and write waits at most until the thread's deadline."""

    def __init__(self, stream: httpcore.NetworkStream):
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _clamp(timeout, httpcore.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _clamp(timeout, httpcore.WriteTimeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, ssl_context: Any, server_hostname: str | None = None,
                  timeout: float | None = None) -> httpcore.NetworkStream:
        return _DeadlineStream(self._stream.start_tls(
            ssl_context, server_hostname, _clamp(timeout, httpcore.ConnectTimeout)
        ))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class _DeadlineBackend(httpcore.SyncBackend):
    def connect_tcp(self, host: str, port: int, timeout: float | None = None,
                    local_address: str | None = None,
                    socket_options: Any = None) -> httpcore.NetworkStream:
        addresses = _addresses(host, port)
        guard = getattr(_bounds, "guard", None)
        if guard is not None:
            for address in addresses:
                reason = guard(plain_address(address))
                if reason:
                    raise AddressRefused(f"{reason} ({address})")
        failure: Exception | None = None
        for address in addresses:  # the checked addresses themselves: no second lookup
            try:
                return _DeadlineStream(super().connect_tcp(
                    address, port, _clamp(timeout, httpcore.ConnectTimeout), local_address,
                    socket_options,
                ))
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc
        raise failure or httpcore.ConnectError(f"{host} has no address")


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client of the process: loading the CA bundle takes
    45 ms, which each run paid three times (its feeds, its LLM) before. A context is safe to
    share between threads."""
    return httpx.create_ssl_context()


def bounded_client(**options: Any) -> httpx.Client:
    """An httpx.Client whose connections honour deadline() and address_guard(). Redirects
    are not followed: a caller that follows them checks each hop. No proxy is taken from the
    environment."""
    transport = httpx.HTTPTransport(verify=_tls_context())
    # httpx takes no network backend of its own; its pool's is replaced, and the tests of
    # the deadline (a server that drips its headers) and of the guard fail if this ever
    # stops working.
    transport._pool._network_backend = _DeadlineBackend()
    return httpx.Client(transport=transport, follow_redirects=False, trust_env=False, **options)


def bounded_request(
    client: httpx.Client,
    method: str,
    url: str | httpx.URL,
    *,
    max_bytes: int,
    deadline_seconds: float,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
) -> BoundedResponse:
    """One request through a bounded_client, done within deadline_seconds (an
    httpx.TimeoutException otherwise) and with a body of at most max_bytes once decoded
    (ResponseTooLarge otherwise; UnsupportedEncoding for a Content-Encoding not decoded
    here)."""
    asked = {"Accept-Encoding": ", ".join(ACCEPTED_ENCODINGS), **(headers or {})}
    with deadline(deadline_seconds), client.stream(
        method, url, headers=asked, json=json
    ) as response:
        body = _read_body(response, max_bytes)
        return BoundedResponse(response.status_code, response.headers, body, response.url)


def _read_body(response: httpx.Response, max_bytes: int) -> bytes:
    """The body, decoded from at most one layer of gzip or deflate, read raw so that no
    more than max_bytes + 1 is ever decompressed (httpx's own decoding has no limit: a few
    KB of gzip become gigabytes)."""
    encodings = [
        part.strip().lower()
        for part in response.headers.get("Content-Encoding", "").split(",")
        if part.strip() and part.strip().lower() != "identity"
    ]
    if len(encodings) > 1 or (encodings and encodings[0] not in ACCEPTED_ENCODINGS):
        raise UnsupportedEncoding(
            f"Content-Encoding {response.headers.get('Content-Encoding')!r} is not accepted"
        )
    decoder = zlib.decompressobj(ACCEPTED_ENCODINGS[encodings[0]]) if encodings else None
    body = bytearray()
    for chunk in response.iter_raw():
        if decoder is not None:
            try:
                chunk = decoder.decompress(chunk, max_bytes + 1 - len(body))
            except zlib.error as exc:
                raise UnsupportedEncoding(f"a body that does not decode ({exc})") from None
            if decoder.unconsumed_tail:  # more output than the cap allows
                raise ResponseTooLarge(f"larger than {max_bytes:,} bytes")
        body += chunk
        if len(body) > max_bytes:
            raise ResponseTooLarge(f"larger than {max_bytes:,} bytes")
    if decoder is not None and not decoder.eof:  # cut off: not the whole document
        raise UnsupportedEncoding("a compressed body that ends early")
    return bytes(body)
