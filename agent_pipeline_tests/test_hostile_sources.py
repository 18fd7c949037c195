"""Feeds as an attacker serves them, each from a real HTTP server on loopback: an entity bomb,
headers sent one byte at a time, a redirect inward, a malformed URL, a feed with no usable
item."""

from __future__ import annotations

import gzip
import ipaddress
import socket
import struct
import tracemalloc
import zlib

import pytest

from agent_pipeline.agents import AgentCache
from agent_pipeline.agents.sources import (
    FetchPolicy,
    SourceError,
    check_source,
    fetch_all,
    fetch_url,
    is_internal_source,
    parse_items,
    without_entities,
)
from agent_pipeline.agents.triage import AllSourcesFailed, collect_items, triage_agent
from agent_pipeline.resources.redis import RedisStore
from agent_pipeline_tests.feed_server import RSS2, DripServer, FeedServer
from agent_pipeline_tests.helpers import context, llm_settings
from agent_pipeline_tests.llm_server import LoopbackLlm
from agent_pipeline_tests.services import free_port


def entity_bomb(encoding: str = "utf-8") -> bytes:
    """100 KB that a lenient parser expands to a 300-million-character title."""
    declaration = f'<?xml version="1.0" encoding="{encoding}"?>\n'
    document = (
        declaration
        + f'<!DOCTYPE rss [\n<!ENTITY a "{"x" * 10_000}">\n]>\n'
        + '<rss version="2.0"><channel><title>Bomb</title>'
        + f"<item><title>{'&a;' * 30_000}</title></item></channel></rss>"
    )
    return document.encode(encoding)


@pytest.mark.parametrize("encoding", ["utf-8", "utf-16"])
def test_an_entity_bomb_is_refused_without_expanding_it(encoding):
    routes = {"/bomb.xml": (200, "application/rss+xml", entity_bomb(encoding))}
    tracemalloc.start()
    try:
        with FeedServer(routes) as server, pytest.raises(SourceError, match="XML entities"):
            fetch_url(server.url("/bomb.xml"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Expanded, the title alone is 300 million characters; refused, nothing grows.
    assert peak < 50_000_000


def test_a_doctype_without_entities_is_read():
    """Old RSS 0.91 feeds name Netscape's DTD: the DOCTYPE goes, the feed is read, nothing is
    fetched from the DTD's URL."""
    feed = RSS2.replace(
        b"<rss",
        b'<!DOCTYPE rss PUBLIC "-//Netscape Communications//DTD RSS 0.91//EN" '
        b'"http://127.0.0.1:9/rss-0.91.dtd">\n<rss',
        1,
    )
    fetched = parse_items(feed, "https://feeds.example.org/rss")
    assert [item["title"] for item in fetched.items][0] == "Dagster adds faster backfills"


def test_a_bombed_source_is_reported_and_the_others_are_read():
    routes = {
        "/bomb.xml": (200, "application/rss+xml", entity_bomb()),
        "/rss2.xml": (200, "application/rss+xml", RSS2),
    }
    with FeedServer(routes) as server:
        ctx = context(AgentCache(None, 60), scorer="keyword",
                      sources=f"{server.url('/bomb.xml')}, {server.url('/rss2.xml')}")
        outcomes = list(triage_agent(ctx))
    assert len(outcomes) == 2
    assert "XML entities" in ctx.stats["sources_failed"][server.url("/bomb.xml")]


def test_headers_sent_one_byte_at_a_time_meet_the_request_deadline():
    with DripServer(RSS2, interval=0.2) as server:
        with pytest.raises(SourceError, match="no complete answer within 1.5 s"):
            fetch_url(server.url(), policy=FetchPolicy(request_deadline_seconds=1.5))
    # It gave up in the status line or the headers: the deadline counts them too.
    assert server.sent < 60


@pytest.mark.slow
def test_slow_sources_cost_their_own_items_not_the_run():
    """Sources are fetched together: two that drip for minutes are cut at the run's fetch
    budget, and the good one's items are there."""
    routes = {"/rss2.xml": (200, "application/rss+xml", RSS2)}
    with DripServer(RSS2) as slow, DripServer(RSS2) as slower, FeedServer(routes) as good:
        sources = [slow.url(), good.url("/rss2.xml"), slower.url()]
        ctx = context(AgentCache(None, 60))
        items, failures = collect_items(ctx, sources, FetchPolicy(budget_seconds=2.0))
    assert [item["title"] for item in items] == ["Dagster adds faster backfills",
                                                  "Gardening in winter"]
    assert failures == {
        slow.url(): "not fetched within the run's 2 s budget",
        slower.url(): "not fetched within the run's 2 s budget",
    }


# A second loopback address stands in for a public host: the only addresses a test may reach
# are this machine's, so the policy is told that 127.0.0.2 is "public" and the rest of
# 127.0.0.0/8 internal. Everything else is real: the 302, the hop, the connection.
PUBLIC_STAND_IN = ipaddress.ip_address("127.0.0.2")
POLICY = FetchPolicy(is_internal=lambda ip: ip != PUBLIC_STAND_IN)


def test_a_public_feed_cannot_redirect_the_agent_inward():
    internal_routes = {"/feed.xml": (200, "application/rss+xml", RSS2)}
    with FeedServer(internal_routes) as internal:
        public_routes = {
            "/feed.xml": (302, "text/plain", b"", {"Location": internal.url("/feed.xml")}),
        }
        with FeedServer(public_routes, host="127.0.0.2") as public, pytest.raises(
            SourceError, match=r"redirects to an internal address \(127.0.0.1\)"
        ):
            fetch_url(public.url("/feed.xml"), policy=POLICY)
    assert internal.requests == []  # refused before connecting


def test_redirects_are_followed_hop_by_hop_within_bounds():
    with FeedServer({}, host="127.0.0.2") as public:
        public.routes.update({
            "/old.xml": (301, "text/plain", b"", {"Location": "/moved.xml"}),
            "/moved.xml": (307, "text/plain", b"", {"Location": public.url("/feed.xml")}),
            "/feed.xml": (200, "application/rss+xml", RSS2),
            "/loop.xml": (302, "text/plain", b"", {"Location": "/loop.xml"}),
            "/ftp.xml": (302, "text/plain", b"", {"Location": "ftp://127.0.0.2/feed.xml"}),
        })
        fetched = fetch_url(public.url("/old.xml"), policy=POLICY)
        assert fetched.items[0]["title"] == "Dagster adds faster backfills"
        with pytest.raises(SourceError, match="more than 5 redirects"):
            fetch_url(public.url("/loop.xml"), policy=POLICY)
        with pytest.raises(SourceError, match="redirects to a ftp URL"):
            fetch_url(public.url("/ftp.xml"), policy=POLICY)


def test_a_feed_on_the_users_own_network_may_redirect_within_it():
    """A source the user points at an internal address is theirs: its redirects inside the
    network are followed (the default policy, everything on loopback)."""
    with FeedServer({"/feed.xml": (200, "application/rss+xml", RSS2)}) as server:
        server.routes["/old.xml"] = (302, "text/plain", b"", {"Location": "/feed.xml"})
        fetched = fetch_url(server.url("/old.xml"))
    assert len(fetched.items) == 2


@pytest.mark.parametrize(
    "source, problem",
    [
        ("http://host:abc/feed.xml", "not a valid URL"),
        ("http://host:99999/feed.xml", "not a valid URL"),
        ("http:///feed.xml", "no host"),
        ("ftp://host/feed.xml", "unsupported scheme 'ftp'"),
    ],
)
def test_malformed_source_urls_are_named(source, problem):
    with pytest.raises(SourceError, match=problem):
        check_source(source)


def test_a_malformed_source_is_skipped_and_the_run_goes_on():
    with FeedServer({"/rss2.xml": (200, "application/rss+xml", RSS2)}) as server:
        ctx = context(AgentCache(None, 60), scorer="keyword",
                      sources=f"http://host:abc/feed.xml, {server.url('/rss2.xml')}")
        outcomes = list(triage_agent(ctx))
    assert len(outcomes) == 2
    assert "not a valid URL" in ctx.stats["sources_failed"]["http://host:abc/feed.xml"]


def test_a_feed_with_no_usable_item_is_reported_and_costs_no_llm_call():
    routes = {
        "/unclosed.xml": (200, "application/rss+xml", b"<rss><channel><item><title>unclosed"),
        "/untitled.json": (200, "application/json", b'[{"title": ""}, {"url": "https://x/"}]'),
        "/rss2.xml": (200, "application/rss+xml", RSS2),
    }
    with FeedServer(routes) as server, LoopbackLlm() as llm:
        sources = ", ".join(server.url(path) for path in routes)
        ctx = context(AgentCache(None, 60), sources=sources, **llm_settings(llm))
        outcomes = list(triage_agent(ctx))
    assert sorted(request["messages"][-1]["content"].split("Title: ")[1].split("\n")[0]
                  for request in llm.requests) == ["Dagster adds faster backfills",
                                                   "Gardening in winter"]
    assert len(outcomes) == 2
    failed = ctx.stats["sources_failed"]
    assert failed[server.url("/unclosed.xml")].startswith("none of its 1 entries has a title")
    assert failed[server.url("/untitled.json")] == (
        "none of its 2 entries is an object with a title"
    )


def test_every_text_field_is_capped_as_it_is_parsed():
    long_title = "word " * 100_000
    feed = (
        b'<rss version="2.0"><channel><title>' + b"T" * 10_000 + b"</title><item><title>"
        + long_title.encode() + b"</title><link>https://example.org/" + b"a" * 5_000
        + b"</link><description>" + b"d " * 100_000 + b"</description><guid>"
        + b"g" * 1_000 + b"</guid></item></channel></rss>"
    )
    (item,) = parse_items(feed, "https://feeds.example.org/rss").items
    assert len(item["title"]) <= 300 and len(item["summary"]) <= 2_000
    assert len(item["source"]) <= 120
    assert item["url"] is None  # longer than any URL a link may have
    assert len(item["id"]) < 40  # no usable guid: a hash of the title instead



@pytest.mark.parametrize(
    "host, internal",
    [("feeds.example.org", False), ("93.184.216.34", False), ("10.0.0.5", True),
     ("127.0.0.1", True), ("[::1]", True), ("localhost", True), ("feedserver", True),
     ("news.intranet.local", True), ("svc.cluster.internal", True)],
)
def test_whether_a_source_is_the_operators_own_is_read_from_its_url_not_its_dns(host, internal):
    """A public name whose DNS answers with an internal address is still a public source: its
    every connection is checked."""
    assert is_internal_source(host.strip("[]"), FetchPolicy()) is internal


def gzip_bomb(size: int) -> bytes:
    """A valid gzip stream of size zero bytes. One megabyte of zeros is compressed once and its
    deflate block repeated: a full flush makes each copy independent of the ones before, so the
    bomb takes a third of a second to build instead of the seconds of compressing it all."""
    chunk = b"\0" * 1_000_000
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    block = packer.compress(chunk) + packer.flush(zlib.Z_FULL_FLUSH)
    count = size // len(chunk)
    crc = 0
    for _ in range(count):
        crc = zlib.crc32(chunk, crc)
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\xff"  # gzip, deflate, no name or time
    trailer = struct.pack("<II", crc, count * len(chunk) & 0xFFFFFFFF)
    return header + block * count + packer.flush() + trailer


def test_the_bomb_is_a_valid_gzip_stream_of_its_size():
    assert len(gzip.decompress(gzip_bomb(20_000_000))) == 20_000_000


def test_a_compressed_body_is_decoded_within_the_cap():
    bomb = gzip_bomb(1_000_000_000)  # a gigabyte, about 1 MB on the wire
    routes = {
        "/bomb.xml": (200, "application/rss+xml", bomb, {"Content-Encoding": "gzip"}),
        "/twice.xml": (200, "application/rss+xml", gzip.compress(gzip.compress(RSS2)),
                       {"Content-Encoding": "gzip, gzip"}),
        "/small.xml": (200, "application/rss+xml", gzip.compress(RSS2),
                       {"Content-Encoding": "gzip"}),
        "/cut.xml": (200, "application/rss+xml", gzip.compress(RSS2)[:-30],
                     {"Content-Encoding": "gzip"}),
    }
    tracemalloc.start()
    try:
        with FeedServer(routes) as server:
            with pytest.raises(SourceError, match="larger than 5,000,000 bytes"):
                fetch_url(server.url("/bomb.xml"))
            _, peak = tracemalloc.get_traced_memory()
            with pytest.raises(SourceError, match="'gzip, gzip' is not accepted"):
                fetch_url(server.url("/twice.xml"))
            assert len(fetch_url(server.url("/small.xml")).items) == 2
            with pytest.raises(SourceError, match="a compressed body that ends early"):
                fetch_url(server.url("/cut.xml"))
    finally:
        tracemalloc.stop()
    assert peak < 50_000_000


def test_a_validator_that_cannot_be_sent_back_costs_nothing(redis_url):
    """An ETag with a non-ASCII character is not remembered: sent back, it would fail every
    later fetch of the source."""
    redis = RedisStore(url=redis_url)
    redis.open()
    routes = {"/rss2.xml": (200, "application/rss+xml", RSS2, {"ETag": '"caf\u00e9"'})}
    with FeedServer(routes) as server:
        for _ in range(2):
            ctx = context(AgentCache(redis, 600), scorer="keyword", sources=server.url("/rss2.xml"))
            assert len(list(triage_agent(ctx))) == 2
            assert ctx.stats["sources_failed"] == {}
    redis.close()


def test_the_doctype_is_looked_for_in_the_prolog_only():
    """A regex search for the DOCTYPE over a body of repeated "<!DOCTYPE" took minutes for
    200 KB (quadratic); only the first 4 KB are looked at now, so one late in the body is
    left alone, and a flood is one bad source."""
    late = b"<rss>" + b" " * 5_000 + b'<!DOCTYPE rss SYSTEM "x.dtd">'
    assert without_entities(late).endswith(late)  # (after the XML declaration added)
    early = b'<!DOCTYPE rss SYSTEM "x.dtd"><rss/>'
    assert b"DOCTYPE" not in without_entities(early)
    assert without_entities(early).endswith(b"<rss/>")
    with pytest.raises(SourceError):
        parse_items(b"<rss>" + b"<!DOCTYPE" * 500_000, "https://feeds.example.org/rss")


def test_an_entity_bomb_in_ebcdic_is_refused():
    """Caught after the conversion to UTF-8 that feedparser makes: no byte pattern of the
    declaration is left to match in the raw document."""
    with pytest.raises(SourceError, match="XML entities"):
        parse_items(entity_bomb("cp037"), "https://feeds.example.org/rss")


def test_source_errors_are_bounded_and_twin_sources_are_counted_apart():
    assert len(str(SourceError("x" * 60_000))) == 300
    down = f"http://127.0.0.1:{free_port()}/feed.xml"
    ctx = context(AgentCache(None, 60))
    with pytest.raises(AllSourcesFailed):  # both failed, though they share a label
        collect_items(ctx, [f"{down}?token=a", f"{down}?token=b"])


def test_a_connection_an_internal_source_left_open_is_not_reused_by_a_public_one():
    """The operator's own source leaves a kept-alive connection to localhost; a public
    source then redirects to that host and port. It is refused: public sources have a pool
    of their own, whose every connection was checked."""
    internal_routes = {"/feed.xml": (200, "application/rss+xml", RSS2),
                       "/admin": (200, "application/json", b'[{"title": "SECRET"}]')}
    with FeedServer(internal_routes, keep_alive=True) as internal:
        own = f"http://localhost:{internal.url('/').split(':')[2]}"
        public_routes = {"/feed.xml": (302, "text/plain", b"", {"Location": f"{own}admin"})}
        with FeedServer(public_routes, host="127.0.0.2", keep_alive=True) as public:
            one_at_a_time = FetchPolicy(is_internal=POLICY.is_internal, at_once=1)
            results = fetch_all({f"{own}feed.xml": None, public.url("/feed.xml"): None},
                                one_at_a_time)
    assert len(results[f"{own}feed.xml"].items) == 2
    assert "redirects to an internal address" in str(results[public.url("/feed.xml")])
    assert [path for path, _ in internal.requests] == ["/feed.xml"]


def test_a_public_name_is_checked_at_connect_and_reached_at_the_address_checked(monkeypatch):
    """public.test resolves first to the public stand-in, then (rebinding) to an internal
    address on the same port: the connection goes where the check said, once; a name that
    resolves inward is refused before connecting."""
    with FeedServer({"/feed.xml": (200, "application/rss+xml", RSS2)},
                    host="127.0.0.2") as outside:
        port = int(outside.url("/").split(":")[2].rstrip("/"))
        with FeedServer({"/feed.xml": (200, "application/rss+xml", b"[]")},
                        port=port) as inside:
            answers = iter(["127.0.0.2"] + ["127.0.0.1"] * 10)
            real = socket.getaddrinfo

            def rebinding(host, *args, **kwargs):
                if host in ("public.test", "inward.test"):
                    address = "127.0.0.1" if host == "inward.test" else next(answers)
                    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
                return real(host, *args, **kwargs)

            monkeypatch.setattr(socket, "getaddrinfo", rebinding)
            fetched = fetch_url(f"http://public.test:{port}/feed.xml", policy=POLICY)
            with pytest.raises(SourceError, match=r"inward.test resolves to an internal "
                                                  r"address \(127.0.0.1\)"):
                fetch_url(f"http://inward.test:{port}/feed.xml", policy=POLICY)
    assert len(fetched.items) == 2
    assert inside.requests == [] and len(outside.requests) == 1
