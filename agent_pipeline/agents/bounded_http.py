"""HTTP with hard bounds, for everything the agents ask of the internet (feeds, the LLM API).
httpx's timeouts bound each network operation, not a request: a server that sends its headers
one byte at a time never trips them. Here one deadline covers the whole request (connect,
TLS, headers, body): every socket operation of the request waits at most until then. The
body is read as it streams and given up past a byte cap, and the address each connection
really reached is reported, for the callers that check it."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpcore
import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_deadline = threading.local()


class ResponseTooLarge(Exception):
    """The body went past the caller's byte cap; reading stopped there."""


@dataclass(frozen=True)
class BoundedResponse:
    status_code: int
    headers: httpx.Headers
    content: bytes
    url: httpx.URL
    # The address the connection reached (None when the transport does not say).
    peer: IPAddress | None

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", errors="replace")


def plain_address(address: str) -> IPAddress:
    """An IP address as ipaddress sees it, an IPv6 zone dropped and an IPv4-mapped IPv6
    address (::ffff:127.0.0.1) taken as the IPv4 address it is."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Every network operation this thread makes inside the block, through a bounded_client,
    ends within seconds from now (an enclosing deadline that ends sooner still holds)."""
    previous = getattr(_deadline, "at", None)
    at = time.monotonic() + seconds
    _deadline.at = at if previous is None else min(at, previous)
    try:
        yield
    finally:
        _deadline.at = previous


def _clamp(timeout: float | None, error: type[Exception]) -> float | None:
    at = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    remaining = at - time.monotonic()
    if remaining <= 0:
        raise error("the request's deadline passed")
    return remaining if timeout is None else min(timeout, remaining)


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
        return _DeadlineStream(super().connect_tcp(
            host, port, _clamp(timeout, httpcore.ConnectTimeout), local_address, socket_options
        ))


def bounded_client(**options: Any) -> httpx.Client:
    """An httpx.Client whose connections honour deadline(). Redirects are not followed: a
    caller that follows them checks each hop. No proxy is taken from the environment."""
    transport = httpx.HTTPTransport()
    # httpx takes no network backend of its own; its pool's is replaced, and the tests of
    # the deadline (a server that drips its headers) fail if this ever stops working.
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
    httpx.TimeoutException otherwise) and with a body of at most max_bytes
    (ResponseTooLarge otherwise)."""
    with deadline(deadline_seconds), client.stream(
        method, url, headers=headers, json=json
    ) as response:
        peer = _peer(response)  # now: once read, a connection may be closed
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise ResponseTooLarge(f"larger than {max_bytes:,} bytes")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise ResponseTooLarge(f"larger than {max_bytes:,} bytes")
        return BoundedResponse(
            response.status_code, response.headers, bytes(body), response.url, peer
        )


def _peer(response: httpx.Response) -> IPAddress | None:
    stream = response.extensions.get("network_stream")
    try:
        server = stream.get_extra_info("server_addr") if stream is not None else None
        return plain_address(server[0]) if server else None
    except (OSError, ValueError, TypeError, IndexError):
        return None
