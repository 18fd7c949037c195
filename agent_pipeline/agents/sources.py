"""Where the triage agent's candidate items come from: RSS and Atom feeds (feedparser), JSON
lists from an HTTP endpoint, and local files. Each source is fetched on its own; a broken one
is reported and skipped."""

from __future__ import annotations

import hashlib
import html
import ipaddress
import json
import re
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import feedparser
import httpx

MAX_SOURCE_BYTES = 5_000_000
# A server that trickles bytes stays under the read timeout; this bounds the whole download.
SOURCE_DEADLINE_SECONDS = 60
MAX_ITEMS_PER_SOURCE = 1_000
# JSON sources: the first of these keys that an object has gives each field.
JSON_FIELDS = {
    "title": ("title", "name", "headline"),
    "url": ("url", "link", "href"),
    "summary": ("summary", "description", "body", "text"),
    "id": ("id", "guid", "uuid"),
    "published": ("published", "date", "published_at", "created_at", "updated"),
}
_TAGS = re.compile(r"<[^>]+>")


class SourceError(Exception):
    """A source that could not be fetched or read; the message says why."""


@dataclass(frozen=True)
class Fetched:
    items: list[dict[str, Any]]
    not_modified: bool = False  # answered 304: the items are the cached ones


def source_label(source: str) -> str:
    """The source for logs, stats and errors: a URL without user info and query string (they
    often carry tokens)."""
    parts = urlsplit(source)
    if parts.scheme in ("http", "https"):
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
        return f"{parts.scheme}://{host}{port}{parts.path}"
    return source


def parse_sources(text: str) -> list[str]:
    """AGENT_SOURCES: comma-separated URLs or file paths, blanks and repeats removed."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def _text(value: Any) -> str:
    """Plain text from a feed value that may hold HTML."""
    return " ".join(html.unescape(_TAGS.sub(" ", str(value or ""))).split())


def _item_id(source: str, item: Mapping[str, Any]) -> str:
    """The source's own id (prefixed by a short hash of the source, so that "1" from two
    sources are two items), else a hash of the source and the URL or title."""
    prefix = hashlib.sha256(source.encode()).hexdigest()[:8]
    if item.get("id"):
        return f"{prefix}:{item['id']}"
    basis = item.get("url") or item.get("title") or ""
    return f"{prefix}:{hashlib.sha256(str(basis).encode()).hexdigest()[:16]}"


def _published(entry: Mapping[str, Any]) -> str | None:
    parsed = entry.get("published_parsed") or entry.get("updated_parsed")
    if parsed:
        return datetime(*parsed[:6], tzinfo=UTC).isoformat()
    return entry.get("published") or entry.get("updated")


def items_from_feed(data: bytes, source: str) -> list[dict[str, Any]]:
    """Items of an RSS 0.9x/1.0/2.0 or Atom document."""
    feed = feedparser.parse(data)
    if feed.bozo and not feed.entries:
        raise SourceError(f"not a readable feed ({feed.get('bozo_exception', 'unknown error')})")
    source_name = _text(feed.feed.get("title")) or urlsplit(source).netloc or source
    items = []
    for entry in feed.entries[:MAX_ITEMS_PER_SOURCE]:
        item = {
            "title": _text(entry.get("title")),
            "url": entry.get("link"),
            "summary": _text(entry.get("summary") or entry.get("description")),
            "id": entry.get("id") or entry.get("guid"),
            "published": _published(entry),
            "source": source_name,
        }
        item["id"] = _item_id(source, item)
        items.append(item)
    return items


def items_from_json(data: bytes, source: str) -> list[dict[str, Any]]:
    """Items of a JSON list of objects, fields found by the names in JSON_FIELDS."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"not valid JSON ({exc})") from None
    if isinstance(document, dict) and isinstance(document.get("items"), list):
        document = document["items"]
    if not isinstance(document, list):
        raise SourceError("JSON source is not a list of objects (nor {'items': [...]})")
    source_name = urlsplit(source).netloc or Path(source).name
    items = []
    for entry in document[:MAX_ITEMS_PER_SOURCE]:
        if not isinstance(entry, dict):
            continue
        item: dict[str, Any] = {"source": source_name}
        for field, names in JSON_FIELDS.items():
            value = next((entry[name] for name in names if entry.get(name) is not None), None)
            item[field] = _text(value) if field in ("title", "summary") else value
        item["id"] = _item_id(source, item)
        items.append(item)
    return items


def parse_items(data: bytes, source: str, content_type: str = "") -> list[dict[str, Any]]:
    looks_like_json = "json" in content_type or source.lower().endswith(".json")
    try:
        if looks_like_json or data.lstrip()[:1] in (b"[", b"{"):
            return items_from_json(data, source)
        return items_from_feed(data, source)
    except SourceError:
        raise
    except Exception as exc:  # a hostile document (nested past the recursion limit, ...)
        raise SourceError(f"unreadable ({type(exc).__name__})") from None


def read_file(source: str) -> Fetched:
    path = Path(source.removeprefix("file://")).expanduser()
    try:
        size = path.stat().st_size
        if size > MAX_SOURCE_BYTES:
            raise SourceError(f"larger than {MAX_SOURCE_BYTES:,} bytes")
        return Fetched(parse_items(path.read_bytes(), str(path)))
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None


def fetch_url(
    client: httpx.Client, url: str, validators: Mapping[str, str] | None = None
) -> tuple[Fetched, dict[str, str]]:
    """GET url (conditional when validators hold an ETag or Last-Modified); the items and the
    validators to remember for next time."""
    headers = {}
    if validators and validators.get("etag"):
        headers["If-None-Match"] = validators["etag"]
    if validators and validators.get("last_modified"):
        headers["If-Modified-Since"] = validators["last_modified"]
    try:
        with client.stream("GET", url, headers=headers) as response:
            if response.status_code == 304:
                return Fetched([], not_modified=True), dict(validators or {})
            if response.status_code != 200:
                raise SourceError(f"HTTP {response.status_code}")
            data = b""
            deadline = time.monotonic() + SOURCE_DEADLINE_SECONDS
            for chunk in response.iter_bytes():
                data += chunk
                if len(data) > MAX_SOURCE_BYTES:
                    raise SourceError(f"larger than {MAX_SOURCE_BYTES:,} bytes")
                if time.monotonic() > deadline:
                    raise SourceError(f"took over {SOURCE_DEADLINE_SECONDS} s to download")
            remembered = {
                "etag": response.headers.get("ETag", ""),
                "last_modified": response.headers.get("Last-Modified", ""),
            }
            content_type = response.headers.get("Content-Type", "")
    except httpx.HTTPError as exc:
        raise SourceError(f"{type(exc).__name__}: {exc}") from None
    return Fetched(parse_items(data, url, content_type)), remembered


def is_private_host(host: str) -> bool:
    """Loopback, private, link-local or otherwise internal, by what the name resolves to."""
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host, None)}
    except OSError:
        return False  # unresolvable: the request itself will fail
    return any(
        not ipaddress.ip_address(address.split("%")[0]).is_global for address in addresses
    )


def _no_redirect_inward(response: httpx.Response) -> None:
    """A feed on a public host must not redirect the agent to an internal address."""
    target = response.next_request
    if target is not None and not is_private_host(response.request.url.host):
        if is_private_host(target.url.host):
            raise SourceError(f"redirects to an internal address ({target.url.host})")


def http_client(timeout_seconds: float = 20.0) -> httpx.Client:
    return httpx.Client(
        timeout=timeout_seconds,
        follow_redirects=True,
        max_redirects=5,
        headers={"User-Agent": "agent_pipeline/0.1"},
        event_hooks={"response": [_no_redirect_inward]},
    )
