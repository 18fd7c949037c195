from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from agent_pipeline.agents import AgentCache
from agent_pipeline.agents.sources import (
    MAX_SOURCE_BYTES,
    SourceError,
    fetch_url,
    items_from_feed,
    parse_items,
    parse_sources,
    read_file,
    source_label,
)
from agent_pipeline.agents.triage import AllSourcesFailed, bm25_scores, triage_agent
from agent_pipeline.resources.redis import RedisStore
from agent_pipeline_tests.feed_server import ATOM, JSON_ITEMS, RSS091, RSS1, RSS2, FeedServer
from agent_pipeline_tests.helpers import context, llm_settings
from agent_pipeline_tests.llm_server import LoopbackLlm, Reply, default_score
from agent_pipeline_tests.services import free_port

ROUTES = {
    "/rss2.xml": (200, "application/rss+xml", RSS2),
    "/rss1.xml": (200, "application/rdf+xml", RSS1),
    "/rss091.xml": (200, "application/rss+xml", RSS091),
    "/atom.xml": (200, "application/atom+xml", ATOM),
    "/items.json": (200, "application/json", JSON_ITEMS),
    "/broken.xml": (200, "application/rss+xml",
                    b'<rss version="2.0"><channel><title>T</title><item><title>Kept</title>'
                    b"<link>https://example.org/k</link></item><item><title>cut off"),
    "/garbage": (200, "text/html", b"\x00\x01 this is no feed \xff"),
    "/huge.xml": (200, "application/rss+xml", b"<rss>" + b" " * (MAX_SOURCE_BYTES + 10)),
    "/gone": (500, "text/plain", b"server error"),
}


@pytest.mark.parametrize(
    "path, titles",
    [
        ("/rss2.xml", ["Dagster adds faster backfills", "Gardening in winter"]),
        ("/rss1.xml", ["Postgres partial indexes"]),
        ("/rss091.xml", ["Redis streams for queues"]),
        ("/atom.xml", ["LLM agents on a schedule"]),
        ("/items.json", ["Data orchestration at scale"]),
    ],
)
def test_each_feed_format_is_read(path, titles):
    with FeedServer(ROUTES) as server:
        fetched = fetch_url(server.url(path))
    assert [item["title"] for item in fetched.items] == titles
    assert fetched.validators["etag"]
    first = fetched.items[0]
    assert first["url"].startswith("https://example.org/") and first["id"] and first["source"]


def test_feed_fields_are_plain_text_with_dates():
    (dagster, _) = items_from_feed(RSS2, "https://feeds.example.org/rss").items
    assert dagster["id"].endswith(":a-1")  # the feed's guid, under its source
    assert dagster == {
        "title": "Dagster adds faster backfills",
        "url": "https://example.org/a",
        "summary": "Partitioned jobs, now quicker.",
        "id": dagster["id"],
        "published": "2026-11-25T08:00:00+00:00",
        "source": "Data Weekly",
    }
    (json_item,) = parse_items(JSON_ITEMS, "https://api.example.org/items.json").items
    assert json_item["summary"] == "Many pipelines." and json_item["id"].endswith(":f-1")
    assert json_item["published"] == "2026-11-24"


@pytest.mark.parametrize(
    "path, error",
    [
        ("/garbage", "not a readable feed"),
        ("/huge.xml", "larger than 5,000,000 bytes"),
        ("/gone", "HTTP 500"),
        ("/missing", "HTTP 404"),
    ],
)
def test_bad_sources_raise_a_clear_error(path, error):
    with FeedServer(ROUTES) as server, pytest.raises(SourceError, match=error):
        fetch_url(server.url(path))


def test_an_ill_formed_feed_is_read_as_far_as_it_goes():
    """feedparser recovers what it can from a truncated feed, as feed readers do, and says
    that it did."""
    with FeedServer(ROUTES) as server:
        fetched = fetch_url(server.url("/broken.xml"))
    assert fetched.items[0]["title"] == "Kept"
    assert fetched.warning.startswith("ill-formed, read as far as it goes")


def test_an_unreachable_source_raises():
    with pytest.raises(SourceError, match="ConnectError"):
        fetch_url(f"http://127.0.0.1:{free_port()}/feed.xml")


def test_local_files_and_a_missing_one(tmp_path):
    (tmp_path / "items.json").write_bytes(JSON_ITEMS)
    assert [i["title"] for i in read_file(str(tmp_path / "items.json")).items] == [
        "Data orchestration at scale"
    ]
    with pytest.raises(SourceError, match="cannot read"):
        read_file(str(tmp_path / "nope.xml"))


def test_parse_sources():
    assert parse_sources(" a.xml, https://x/y ,, a.xml ") == ["a.xml", "https://x/y"]


def test_a_broken_source_is_skipped_and_reported(redis_url):
    with FeedServer(ROUTES) as server:
        sources = f"{server.url('/rss2.xml')}, {server.url('/gone')}"
        ctx = context(AgentCache(None, 60), sources=sources, scorer="keyword")
        outcomes = list(triage_agent(ctx))
    assert len(outcomes) == 2
    assert ctx.stats["sources_failed"] == {server.url("/gone"): "HTTP 500"}
    dagster = next(o for o in outcomes if o["id"].endswith(":a-1"))
    assert dagster["score"] == 100.0 and dagster["reason"] == "mentions dagster"


def test_every_source_failing_fails_the_run():
    with FeedServer(ROUTES) as server:
        ctx = context(AgentCache(None, 60), sources=server.url("/gone"), scorer="keyword")
        with pytest.raises(AllSourcesFailed, match="every source failed: .*HTTP 500"):
            list(triage_agent(ctx))


def test_the_second_run_scores_from_cache_and_an_unchanged_feed_costs_a_304(redis_url):
    redis = RedisStore(url=redis_url)
    redis.open()
    routes = dict(ROUTES)
    with FeedServer(routes) as server, LoopbackLlm() as llm:
        sources = ", ".join(server.url(p) for p in ("/rss2.xml", "/atom.xml", "/items.json"))
        first = context(AgentCache(redis, 600), sources=sources, **llm_settings(llm))
        first_outcomes = list(triage_agent(first))
        assert len(llm.requests) == 4 and first.stats["llm_calls"] == 4
        assert first.stats["prompt_tokens"] == 200 and first.stats["cost"] == pytest.approx(
            (200 * 1.0 + 40 * 2.0) / 1e6
        )
        assert {o["title"]: o["score"] for o in first_outcomes}["LLM agents on a schedule"] == (
            float(default_score("LLM agents on a schedule"))
        )

        second = context(AgentCache(redis, 600), sources=sources, **llm_settings(llm))
        assert list(triage_agent(second)) == first_outcomes
        assert len(llm.requests) == 4  # no LLM call at all
        assert (second.stats["cache_hits"], second.stats["llm_calls"]) == (4, 0)
        conditional = [condition for path, condition in server.requests[3:]]
        assert all(conditional)  # every second fetch was a conditional GET, answered 304

        # A changed item is scored again; the others come from the cache.
        routes["/atom.xml"] = (200, "application/atom+xml",
                               ATOM.replace(b"Agents that email.", b"Agents that email daily."))
        third = context(AgentCache(redis, 600), sources=sources, **llm_settings(llm))
        list(triage_agent(third))
        assert len(llm.requests) == 5 and third.stats["cache_misses"] == 1
    redis.close()


def test_items_the_llm_cannot_score_are_left_out():
    def script(request, call):
        title = request["messages"][-1]["content"]
        return Reply(content="no json") if "Gardening" in title else Reply()

    with FeedServer(ROUTES) as server, LoopbackLlm(script) as llm:
        ctx = context(AgentCache(None, 60), sources=server.url("/rss2.xml"), **llm_settings(llm))
        outcomes = list(triage_agent(ctx))
    assert [o["title"] for o in outcomes] == ["Dagster adds faster backfills"]
    assert outcomes[0]["reason"] == "About Dagster adds faster backfills."


def test_bm25_scores_rank_by_the_interests_mentioned():
    items = [
        {"title": "Dagster and Postgres together", "summary": "dagster dagster postgres"},
        {"title": "Postgres tuning", "summary": "vacuum"},
        {"title": "Gardening in winter", "summary": "bulbs"},
    ]
    scored = bm25_scores(items, "dagster, postgres")
    assert [s["score"] for s in scored][0] == 100.0
    assert 0 < scored[1]["score"] < 100 and scored[2]["score"] == 0.0
    assert scored[0]["reason"] == "mentions dagster, postgres"
    assert scored[2]["reason"] == "mentions none of your interests"
    assert bm25_scores([], "dagster") == []


def test_a_hostile_json_document_is_one_bad_source():
    nested = b"[" * 100_000 + b"]" * 100_000
    with pytest.raises(SourceError, match="unreadable|not valid JSON"):
        parse_items(nested, "https://example.org/items.json")


def test_ids_from_two_sources_do_not_collide():
    first = parse_items(b'[{"title": "a", "id": "1"}]', "https://one.example/x.json").items
    second = parse_items(b'[{"title": "b", "id": "1"}]', "https://two.example/x.json").items
    assert first[0]["id"] != second[0]["id"] and first[0]["id"].endswith(":1")


def test_source_labels_drop_credentials():
    assert source_label("https://user:pw@feeds.example.org:8443/rss?token=s3cret") == (
        "https://feeds.example.org:8443/rss"
    )
    assert source_label("/data/items.json") == "/data/items.json"


def test_items_published_after_the_window_are_left_out():
    """RSS2's first item is dated 25 November, its second has no date: a window that ended
    on the 24th reports only the undated one."""
    with FeedServer(ROUTES) as server:
        ctx = context(AgentCache(None, 60), sources=server.url("/rss2.xml"), scorer="keyword")
        end = datetime(2026, 11, 24, tzinfo=UTC)
        ctx = replace(ctx, window_start=end - timedelta(minutes=10), window_end=end)
        outcomes = list(triage_agent(ctx))
    assert [o["title"] for o in outcomes] == ["Gardening in winter"]
    assert ctx.stats["items_after_window"] == 1
