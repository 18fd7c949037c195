"""HTTP with hard bounds, for everything the agents ask of the internet (feeds, the LLM API).
httpx's timeouts bound each network operation, not a request: a server that sends its headers
one byte at a time never trips them. Here one deadline covers the whole request (connect,
headers, body), the body is read as it streams and given up past a byte cap, and the address
each connection really reached is reported, for the callers that check it."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
T = TypeVar("T")


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


def _peer(response: httpx.Response) -> IPAddress | None:
    stream = response.extensions.get("network_stream")
    server = stream.get_extra_info("server_addr") if stream is not None else None
    try:
        return plain_address(server[0]) if server else None
    except (ValueError, TypeError, IndexError):
        return None


async def bounded_request(
    client: httpx.AsyncClient,
    method: str,
    url: str | httpx.URL,
    *,
    max_bytes: int,
    deadline_seconds: float,
    headers: Mapping[str, str] | None = None,
    json: Any = None,
) -> BoundedResponse:
    """One request, done within deadline_seconds (TimeoutError otherwise) and with a body of
    at most max_bytes (ResponseTooLarge otherwise). Redirects are not followed: a caller that
    follows them checks each hop."""
    async with asyncio.timeout(deadline_seconds):
        async with client.stream(method, url, headers=headers, json=json) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise ResponseTooLarge(f"larger than {max_bytes:,} bytes")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > max_bytes:
                    raise ResponseTooLarge(f"larger than {max_bytes:,} bytes")
            return BoundedResponse(
                response.status_code, response.headers, bytes(body), response.url,
                _peer(response),
            )


class LoopThread:
    """An asyncio event loop on a thread of its own, so that synchronous code (worker
    threads) can make requests with hard deadlines: a coroutine on the loop is cancelled at
    its deadline, which a blocked socket read in a thread never is."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()
