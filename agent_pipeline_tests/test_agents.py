from __future__ import annotations

import dataclasses
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from agent_pipeline.agents import AgentCache, load_agent
from agent_pipeline.agents.keywords import (
    DEFAULT_INTERESTS,
    REPLAY_EVERY,
    keyword_reason,
    keyword_score,
    keywords_agent,
    load_sample_feed,
    parse_interests,
    sample_feed_at,
)
from agent_pipeline.errors import ConfigurationError
from agent_pipeline.resources.agent import AgentResource
from agent_pipeline.resources.redis import RedisStore
from agent_pipeline_tests.helpers import agent_context


def test_parse_interests():
    assert parse_interests(" Dagster,  data   Orchestration,,dagster ") == [
        "dagster",
        "data orchestration",
    ]


@pytest.mark.parametrize(
    "title, summary, score",
    [
        ("Dagster and Redis", "", 100.0),  # both interests in the title
        ("Dagster news", "all about redis", 75.0),  # title counts double
        ("Nothing here", "rediscover dagsterish things", 0.0),  # whole words only
        ("", "", 0.0),
    ],
)
def test_keyword_score(title, summary, score):
    assert keyword_score({"title": title, "summary": summary}, ["dagster", "redis"]) == score


def test_keyword_reason_names_the_interests_mentioned():
    item = {"title": "Dagster news", "summary": "all about Redis, not rediscovery"}
    assert keyword_reason(item, ["redis", "dagster", "soup"]) == "mentions redis, dagster"


def test_keywords_agent_is_deterministic_and_relevant():
    interests = "dagster, data orchestration"
    first = list(keywords_agent(agent_context(AgentCache(None, 60), interests)))
    second = list(keywords_agent(agent_context(AgentCache(None, 60), interests)))
    assert first == second
    assert len(first) == len(load_sample_feed())
    best = max(first, key=lambda outcome: outcome["score"])
    assert "dagster" in best["title"].lower() or "orchestration" in best["title"].lower()
    gardening = next(o for o in first if o["id"].startswith("gr-1."))
    assert gardening["score"] == 0.0
    assert gardening["reason"] == "mentions none of your interests"
    assert best["reason"].startswith("mentions dagster") or "orchestration" in best["reason"]
    assert all({"title", "score", "url", "id", "summary"} <= set(o) for o in first)


def test_keywords_agent_scores_from_cache_on_the_second_run(redis_url):
    redis = RedisStore(url=redis_url)
    redis.open()
    first_cache = AgentCache(redis, ttl_seconds=60)
    first = list(keywords_agent(agent_context(first_cache, "postgres")))
    assert (first_cache.hits, first_cache.misses) == (0, len(first))

    second_cache = AgentCache(redis, ttl_seconds=60)
    second = list(keywords_agent(agent_context(second_cache, "postgres")))
    assert second == first
    assert (second_cache.hits, second_cache.misses) == (len(first), 0)

    # Other interests are other content: nothing is reused.
    third_cache = AgentCache(redis, ttl_seconds=60)
    list(keywords_agent(agent_context(third_cache, "redis")))
    assert third_cache.hits == 0
    redis.close()


def test_load_agent_built_in_and_dotted():
    assert load_agent("keywords") is keywords_agent
    assert load_agent("agent_pipeline.agents.keywords:keywords_agent") is keywords_agent


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("nosuchagent", "'nosuchagent' is neither a built-in agent (keywords, triage)"),
        ("no_such_module_xyz:run", "cannot import module 'no_such_module_xyz'"),
        ("agent_pipeline.agents.keywords:missing", "has no callable named 'missing'"),
        ("agent_pipeline.agents.keywords:DEFAULT_INTERESTS", "has no callable"),
    ],
)
def test_load_agent_errors_name_the_variable(spec, problem):
    with pytest.raises(ConfigurationError) as failure:
        load_agent(spec)
    assert str(failure.value).startswith("AGENT: ")
    assert problem in str(failure.value)


@pytest.mark.parametrize(
    "agent, scorer, gets_key",
    [
        ("triage", "llm", True),
        ("triage", "keyword", False),
        ("keywords", "llm", False),
        ("agent_pipeline_tests.sample_agents:many", "llm", False),
    ],
)
def test_the_llm_key_goes_only_to_the_scorer_that_calls_the_llm(agent, scorer, gets_key):
    resource = AgentResource(agent=agent, scorer=scorer, llm_api_key="sk-secret")
    settings = resource.settings()
    assert (settings.llm is not None) is gets_key
    assert ("sk-secret" in str(dataclasses.asdict(settings))) is gets_key


def test_a_window_reports_only_what_was_published_by_its_end():
    """The sample feed replays an item every 150 s: a window sees the feed's last 24 items
    before its end, four of them published within it; a backfill never reports later news."""
    end = datetime(2026, 11, 10, 12, 10, tzinfo=UTC)
    context = replace(agent_context(AgentCache(None, 60), "dagster"),
                      window_start=end - timedelta(minutes=10), window_end=end)
    outcomes = list(keywords_agent(context))
    assert len(outcomes) == len(load_sample_feed())
    published = sorted(o["published"] for o in outcomes)
    assert published[-1] == "2026-11-10T12:07:30Z" and published[0] == "2026-11-10T11:10:00Z"
    assert sum(o["published"] >= "2026-11-10T12:00" for o in outcomes) == 4
    assert sorted(o["id"].split(".")[0] for o in outcomes) == sorted(
        item["id"] for item in load_sample_feed())


def test_the_replayed_feed_has_news_that_matches_the_default_interests_in_every_window():
    """Each replay of an item is a new item (its own id), and each 10-minute window of the
    hour publishes at least one the default interests match: the schedule always has news."""
    interests = parse_interests(DEFAULT_INTERESTS)
    start = datetime(2026, 12, 5, 7, 0, tzinfo=UTC)
    seen_ids = set()
    for window in range(12):  # two hours: the feed goes round twice
        end = start + (window + 1) * timedelta(minutes=10)
        new = [item for item in sample_feed_at(end)
               if item["published"] >= (end - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M")]
        assert len(new) == timedelta(minutes=10) // REPLAY_EVERY
        assert any(keyword_score(item, interests) > 0 for item in new)
        assert not seen_ids & {item["id"] for item in new}
        seen_ids |= {item["id"] for item in new}
    # Just after a publication, the item is in the feed; just before, not yet.
    moment = datetime(2026, 12, 5, 7, 2, 30, tzinfo=UTC)
    assert sample_feed_at(moment)[-1]["published"] == "2026-12-05T07:00:00Z"
    assert sample_feed_at(moment + timedelta(microseconds=1))[-1]["published"] == (
        "2026-12-05T07:02:30Z")


@pytest.mark.parametrize(
    "published, known",
    [("2026-11-26T09:39:59Z", True), ("2026-11-26T09:40:00Z", False),
     ("Thu, 26 Nov 2026 10:00:00 GMT", False), ("2026-11-26T10:30:00+01:00", True),
     ("2026-11-27", False), (None, True), ("sometime", True), ("9" * 1_000, True)],
)
def test_known_by_window_end(published, known):
    context = agent_context(AgentCache(None, 60), "dagster")
    assert context.known_by_window_end({"title": "t", "published": published}) is known
