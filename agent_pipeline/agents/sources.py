"""Where the triage agent's candidate items come from: RSS and Atom feeds (feedparser), JSON
lists from an HTTP endpoint, and local files. Everything here is read from the open internet,
so everything is bounded: one deadline per request (headers included) and one for all the
sources of a run, fetched concurrently; a byte cap per document; no XML entity is ever
expanded; every text field is capped as it is parsed; redirects are followed hop by hop and a
public feed may not lead inward. A broken source is reported and skipped."""

from __future__ import annotations

import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import feedparser
import httpx
from feedparser.encodings import convert_to_utf8

from agent_pipeline.agents.bounded_http import (
    AddressRefused,
    BoundedResponse,
    IPAddress,
    ResponseTooLarge,
    UnsupportedEncoding,
    address_guard,
    bounded_client,
    bounded_request,
    deadline,
    plain_address,
)
from agent_pipeline.text import MAX_SUMMARY_CHARS, MAX_TITLE_CHARS, MAX_URL_CHARS, html_to_text

MAX_SOURCE_BYTES = 5_000_000
# One request, from connecting through the headers to the last byte (redirects included).
REQUEST_DEADLINE_SECONDS = 30.0
# Every source of a run, fetched concurrently: a slow source costs its own items, not the run.
FETCH_BUDGET_SECONDS = 90.0
FETCHES_AT_ONCE = 8
MAX_REDIRECTS = 5
MAX_ITEMS_PER_SOURCE = 1_000
MAX_ID_CHARS = 300
MAX_PUBLISHED_CHARS = 60
MAX_SOURCE_NAME_CHARS = 120
MAX_ERROR_CHARS = 300
# JSON sources: the first of these keys that an object has gives each field.
JSON_FIELDS = {
    "title": ("title", "name", "headline"),
    "url": ("url", "link", "href"),
    "summary": ("summary", "description", "body", "text"),
    "id": ("id", "guid", "uuid"),
    "published": ("published", "date", "published_at", "created_at", "updated"),
}
# No "<" inside: a run of "<<<<" would make a "[^>]+" match try every start (quadratic).
# An entity declaration in any encoding an XML parser would take: refused, never expanded.
_ENTITY_DECLARATIONS = tuple(
    "<!ENTITY".encode(encoding)
    for encoding in ("utf-8", "utf-16-le", "utf-16-be", "utf-32-le", "utf-32-be")
)
_DOCTYPE = re.compile(rb"<!DOCTYPE[^>\[]*(?:\[[^\]]*\])?\s*>")
# A DOCTYPE comes before the first element: only this much of a document is looked at for it.
DOCTYPE_SEARCH_BYTES = 4_096


class SourceError(Exception):
    """A source that could not be fetched or read; the message says why, in a bounded line
    (a server's error text can be long)."""

    def __init__(self, message: str):
        super().__init__(message if len(message) <= MAX_ERROR_CHARS else
                         message[: MAX_ERROR_CHARS - 1] + "…")


@dataclass(frozen=True)
class Fetched:
    items: list[dict[str, Any]]
    not_modified: bool = False  # answered 304: the items are the cached ones
    # Said of a source that was read, but not all of it (an ill-formed feed).
    warning: str | None = None
    # An HTTP source's ETag and Last-Modified, for the next conditional GET.
    validators: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Download:
    """A source's document as fetched, before parsing."""

    data: bytes = b""
    content_type: str = ""
    validators: dict[str, str] = field(default_factory=dict)
    not_modified: bool = False


def source_label(source: str) -> str:
    """The source for logs, stats and errors: a URL without user info and query string (they
    often carry tokens)."""
    try:
        parts = urlsplit(source)
        if parts.scheme in ("http", "https"):
            host = parts.hostname or ""
            port = f":{parts.port}" if parts.port else ""
            return f"{parts.scheme}://{host}{port}{parts.path}"
    except ValueError:  # a malformed port: keep the part before it
        return source.split("@")[-1].split("?")[0][:200]
    return source


def parse_sources(text: str) -> list[str]:
    """AGENT_SOURCES: comma-separated URLs or file paths, blanks and repeats removed."""
    return list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


def is_url(source: str) -> bool:
    return source.lower().startswith(("http://", "https://"))


def check_source(source: str) -> None:
    """SourceError when source is no usable http(s) URL or file path."""
    scheme = source.split("://", 1)[0].lower() if "://" in source else ""
    if scheme and scheme not in ("http", "https", "file"):
        raise SourceError(f"unsupported scheme {scheme!r} (use http, https or a file path)")
    if not is_url(source):
        return
    try:
        parts = urlsplit(source)
        parts.port  # noqa: B018 (a malformed port only raises when read)
        httpx.URL(source)
    except (ValueError, httpx.InvalidURL) as exc:
        raise SourceError(f"not a valid URL ({exc})") from None
    if not parts.hostname:
        raise SourceError("not a valid URL (no host)")


def _short(value: Any, limit: int) -> str | None:
    """An identifier, URL or date as the source wrote it; None when missing or too long to
    be one."""
    if value is None or isinstance(value, dict | list):
        return None
    text = str(value).strip()
    return text if text and len(text) <= limit else None


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
        try:
            return datetime(*parsed[:6], tzinfo=UTC).isoformat()
        except (TypeError, ValueError):
            pass
    return _short(entry.get("published") or entry.get("updated"), MAX_PUBLISHED_CHARS)


def without_entities(data: bytes, content_type: str = "") -> bytes:
    """The document as UTF-8 with its DOCTYPE removed; SourceError if it declares entities.
    feedparser would hand declared entities to its lenient parser, which expands them without
    a limit: a 100 KB feed became a 300-million-character title."""
    if any(marker in data for marker in _ENTITY_DECLARATIONS):
        raise SourceError("declares XML entities (<!ENTITY>): refused, they are never expanded")
    # Converted the way feedparser converts, so that what it parses is what was checked.
    utf8 = convert_to_utf8({"content-type": content_type} if content_type else {}, data, {})
    if b"<!ENTITY" in utf8:
        raise SourceError("declares XML entities (<!ENTITY>): refused, they are never expanded")
    # One match at the first "<!DOCTYPE", in the prolog only: a regex search over a body of
    # repeated "<!DOCTYPE" would take quadratic time.
    start = utf8.find(b"<!DOCTYPE", 0, DOCTYPE_SEARCH_BYTES)
    if start < 0:
        return utf8
    found = _DOCTYPE.match(utf8, start, start + DOCTYPE_SEARCH_BYTES)
    end = found.end() if found else utf8.find(b">", start, start + DOCTYPE_SEARCH_BYTES) + 1
    return utf8[:start] + utf8[end:] if end > start else utf8


def items_from_feed(data: bytes, source: str, content_type: str = "") -> Fetched:
    """Items of an RSS 0.9x/1.0/2.0 or Atom document; entries without a title are left out."""
    feed = feedparser.parse(
        without_entities(data, content_type),
        response_headers={"content-type": "application/xml; charset=utf-8"},
    )
    problem = feed.get("bozo_exception", "unknown error") if feed.bozo else None
    entries = feed.entries[:MAX_ITEMS_PER_SOURCE]
    if problem and not entries:
        raise SourceError(f"not a readable feed ({problem})")
    source_name = (
        html_to_text(feed.feed.get("title"), MAX_SOURCE_NAME_CHARS) or urlsplit(source).netloc
    )
    items = []
    for entry in entries:
        item = {
            "title": html_to_text(entry.get("title"), MAX_TITLE_CHARS),
            "url": _short(entry.get("link"), MAX_URL_CHARS),
            "summary": html_to_text(
                entry.get("summary") or entry.get("description"), MAX_SUMMARY_CHARS
            ),
            "id": _short(entry.get("id") or entry.get("guid"), MAX_ID_CHARS),
            "published": _published(entry),
            "source": source_name or source_label(source),
        }
        if item["title"]:  # an item without a title is never worth a (paid) score
            item["id"] = _item_id(source, item)
            items.append(item)
    if entries and not items:
        raise SourceError(
            f"none of its {len(entries)} entries has a title"
            + (f" (ill-formed: {problem})" if problem else "")
        )
    warning = f"ill-formed, read as far as it goes ({problem})" if problem else None
    return Fetched(items, warning=warning)


def items_from_json(data: bytes, source: str) -> Fetched:
    """Items of a JSON list of objects, fields found by the names in JSON_FIELDS; objects
    without a title are left out."""
    try:
        document = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise SourceError(f"not valid JSON ({exc})") from None
    if isinstance(document, dict) and isinstance(document.get("items"), list):
        document = document["items"]
    if not isinstance(document, list):
        raise SourceError("JSON source is not a list of objects (nor {'items': [...]})")
    source_name = urlsplit(source).netloc or Path(source).name
    entries = document[:MAX_ITEMS_PER_SOURCE]
    items = []
    for entry in entries:
        if not isinstance(entry, dict):
            continue
        found = {
            name: next((entry[key] for key in keys if entry.get(key) is not None), None)
            for name, keys in JSON_FIELDS.items()
        }
        item: dict[str, Any] = {
            "title": html_to_text(found["title"], MAX_TITLE_CHARS),
            "url": _short(found["url"], MAX_URL_CHARS),
            "summary": html_to_text(found["summary"], MAX_SUMMARY_CHARS),
            "id": _short(found["id"], MAX_ID_CHARS),
            "published": _short(found["published"], MAX_PUBLISHED_CHARS),
            "source": source_name,
        }
        if item["title"]:
            item["id"] = _item_id(source, item)
            items.append(item)
    if entries and not items:
        raise SourceError(f"none of its {len(entries)} entries is an object with a title")
    return Fetched(items)


def parse_items(data: bytes, source: str, content_type: str = "") -> Fetched:
    looks_like_json = "json" in content_type or source.lower().endswith(".json")
    try:
        if looks_like_json or data.lstrip()[:1] in (b"[", b"{"):
            return items_from_json(data, source)
        return items_from_feed(data, source, content_type)
    except SourceError:
        raise
    except Exception as exc:  # a hostile document (nested past the recursion limit, ...)
        raise SourceError(f"unreadable ({type(exc).__name__})") from None


def read_file(source: str) -> Fetched:
    path = Path(source.removeprefix("file://")).expanduser()
    try:
        with path.open("rb") as file:  # read with a cap: a FIFO or device has no size
            data = file.read(MAX_SOURCE_BYTES + 1)
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_SOURCE_BYTES:
        raise SourceError(f"larger than {MAX_SOURCE_BYTES:,} bytes")
    return parse_items(data, str(path))


# -- fetching -------------------------------------------------------------------------------


def is_internal_address(ip: IPAddress) -> bool:
    """Loopback, private, link-local (cloud metadata), reserved: anything not on the public
    internet."""
    return not ip.is_global


@dataclass(frozen=True)
class FetchPolicy:
    """The bounds of fetching. is_internal decides which addresses a public feed may not
    lead to; tests give one that takes a second loopback address as public."""

    request_deadline_seconds: float = REQUEST_DEADLINE_SECONDS
    budget_seconds: float = FETCH_BUDGET_SECONDS
    max_bytes: int = MAX_SOURCE_BYTES
    max_redirects: int = MAX_REDIRECTS
    at_once: int = FETCHES_AT_ONCE
    is_internal: Callable[[IPAddress], bool] = is_internal_address


DEFAULT_POLICY = FetchPolicy()


# Names that only resolve inside a network of the operator's own.
INTERNAL_NAME_SUFFIXES = (".localhost", ".local", ".internal", ".lan", ".home.arpa")


def is_internal_source(host: str, policy: FetchPolicy) -> bool:
    """Whether the operator pointed the source inside their own network, judged from the
    configured URL alone (the source's own DNS could say anything): an internal IP address,
    localhost, a name of one label (a compose or Kubernetes service) or under a private-use
    suffix."""
    try:
        return policy.is_internal(plain_address(host))
    except ValueError:
        pass
    name = host.lower().rstrip(".")
    return "." not in name or name == "localhost" or name.endswith(INTERNAL_NAME_SUFFIXES)


def _get(
    client: httpx.Client, url: str, headers: Mapping[str, str], policy: FetchPolicy,
    seconds: float,
) -> BoundedResponse:
    """GET url within seconds, following redirects one hop at a time. A public source may
    reach no internal address, on any hop: every address is checked before connecting, and
    the connection goes to the address checked."""
    target = httpx.URL(url)

    def refuse_internal(ip: IPAddress) -> str | None:
        return "an internal address" if policy.is_internal(ip) else None

    guard = None if is_internal_source(target.host, policy) else refuse_internal
    with deadline(seconds), address_guard(guard):
        for hop in range(policy.max_redirects + 1):
            if target.scheme not in ("http", "https"):
                raise SourceError(f"redirects to a {target.scheme or 'relative'} URL")
            try:
                response = bounded_request(
                    client, "GET", target, headers=headers, max_bytes=policy.max_bytes,
                    deadline_seconds=seconds,
                )
            except httpx.ConnectError as exc:
                if isinstance(exc.__cause__, AddressRefused):
                    where = "redirects to" if hop else f"{target.host} resolves to"
                    raise SourceError(f"{where} {exc}") from None
                raise
            location = response.headers.get("Location")
            if response.status_code in (301, 302, 303, 307, 308) and location:
                try:
                    target = response.url.join(location)
                except httpx.InvalidURL:
                    raise SourceError(
                        f"redirects to an invalid URL ({location[:100]!r})"
                    ) from None
                continue
            return response
    raise SourceError(f"more than {policy.max_redirects} redirects")


def download(
    client: httpx.Client,
    url: str,
    validators: Mapping[str, str] | None = None,
    policy: FetchPolicy = DEFAULT_POLICY,
    budget_ends: float | None = None,
) -> Download:
    """GET url (conditional when validators hold an ETag or Last-Modified) within the
    policy's request deadline, and before budget_ends (a time.monotonic() value) if given;
    SourceError saying why it could not."""
    headers = {}
    if validators and validators.get("etag"):
        headers["If-None-Match"] = validators["etag"]
    if validators and validators.get("last_modified"):
        headers["If-Modified-Since"] = validators["last_modified"]
    check_source(url)
    seconds = policy.request_deadline_seconds
    if budget_ends is not None:
        seconds = min(seconds, budget_ends - time.monotonic())
        if seconds <= 0:
            raise _over_budget(policy)
    ends = time.monotonic() + seconds
    try:
        response = _get(client, url, headers, policy, seconds)
    except (ResponseTooLarge, UnsupportedEncoding) as exc:
        raise SourceError(str(exc)) from None
    except httpx.TimeoutException as exc:
        if budget_ends is not None and time.monotonic() >= budget_ends:
            raise _over_budget(policy) from None
        if time.monotonic() >= ends:
            raise SourceError(
                f"no complete answer within {policy.request_deadline_seconds:g} s"
            ) from None
        raise SourceError(f"{type(exc).__name__}: {exc}") from None
    except httpx.HTTPError as exc:
        raise SourceError(f"{type(exc).__name__}: {exc}") from None
    if response.status_code == 304:
        return Download(validators=dict(validators or {}), not_modified=True)
    if response.status_code != 200:
        raise SourceError(f"HTTP {response.status_code}")
    return Download(
        data=response.content,
        content_type=response.headers.get("Content-Type", ""),
        validators={
            "etag": _header_value(response.headers.get("ETag", ""), MAX_ID_CHARS),
            "last_modified": _header_value(
                response.headers.get("Last-Modified", ""), MAX_PUBLISHED_CHARS
            ),
        },
    )


def _header_value(value: str, limit: int) -> str:
    """A value fit to send back in a request header: printable ASCII, bounded; else none (it
    would make every later request of the source fail to encode)."""
    return value if len(value) <= limit and value.isascii() and value.isprintable() else ""


def _over_budget(policy: FetchPolicy) -> SourceError:
    return SourceError(f"not fetched within the run's {policy.budget_seconds:g} s budget")


def http_client() -> httpx.Client:
    return bounded_client(
        # Per operation, under the request deadline: a dead connection fails fast.
        timeout=httpx.Timeout(20.0),
        headers={"User-Agent": "agent_pipeline/0.1"},
    )


def fetch(
    client: httpx.Client,
    url: str,
    validators: Mapping[str, str] | None = None,
    policy: FetchPolicy = DEFAULT_POLICY,
    budget_ends: float | None = None,
) -> Fetched:
    """url downloaded and parsed; SourceError saying why it could not be."""
    downloaded = download(client, url, validators, policy, budget_ends)
    if downloaded.not_modified:
        return Fetched([], not_modified=True, validators=downloaded.validators)
    parsed = parse_items(downloaded.data, url, downloaded.content_type)
    return replace(parsed, validators=downloaded.validators)


def fetch_all(
    urls: Mapping[str, Mapping[str, str] | None], policy: FetchPolicy = DEFAULT_POLICY
) -> dict[str, Fetched | SourceError]:
    """Every URL (each with its remembered validators) fetched and parsed concurrently, at
    most the policy's at_once at a time, the fetching within its budget; each one's items or
    error. Parsing happens as each download ends, so at most at_once documents are held."""
    budget_ends = time.monotonic() + policy.budget_seconds

    def one(url: str) -> Fetched | SourceError:
        try:
            client = clients[is_internal_source(httpx.URL(url).host, policy)]
            return fetch(client, url, urls[url], policy, budget_ends)
        except SourceError as exc:
            return exc
        except Exception as exc:  # whatever else a hostile source causes costs it alone
            return SourceError(f"failed unexpectedly ({type(exc).__name__})")

    # Two pools: a connection a source of the operator's own opened unguarded must never be
    # reused by a public source's (guarded) redirect to the same host.
    with http_client() as internal, http_client() as public, ThreadPoolExecutor(
        max_workers=policy.at_once
    ) as pool:
        clients = {True: internal, False: public}
        return dict(zip(urls, pool.map(one, urls), strict=True))


def fetch_url(
    url: str, validators: Mapping[str, str] | None = None, policy: FetchPolicy = DEFAULT_POLICY
) -> Fetched:
    """One URL fetched and parsed, its validators with it; SourceError if it could not be."""
    result = fetch_all({url: validators}, policy)[url]
    if isinstance(result, SourceError):
        raise result
    return result
