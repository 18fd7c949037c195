from __future__ import annotations

import dataclasses
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from agent_pipeline.agents import AgentCache, load_agent
from agent_pipeline.agents.keywords import (
    keyword_reason,
    keyword_score,
    keywords_agent,
    load_sample_feed,
    parse_interests,
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
    gardening = next(o for o in first if o["id"] == "gr-1")
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


def test_a_past_window_reports_only_what_was_published_by_its_end():
    """The sample feed's items are dated from 1 November 2026: a window of the 10th sees
    what was out by then, not the later items a backfill must not report."""
    end = datetime(2026, 11, 10, 12, 10, tzinfo=UTC)
    context = replace(agent_context(AgentCache(None, 60), "dagster"),
                      window_start=end - timedelta(minutes=10), window_end=end)
    outcomes = list(keywords_agent(context))
    everything = load_sample_feed()
    assert 0 < len(outcomes) < len(everything)
    assert max(o["published"] for o in outcomes) < "2026-11-10T12:10"
    assert {o["id"] for o in outcomes} == {
        item["id"] for item in everything if item["published"] < "2026-11-10T12:10"
    }


@pytest.mark.parametrize(
    "published, known",
    [("2026-11-26T09:39:59Z", True), ("2026-11-26T09:40:00Z", False),
     ("Thu, 26 Nov 2026 10:00:00 GMT", False), ("2026-11-26T10:30:00+01:00", True),
     ("2026-11-27", False), (None, True), ("sometime", True), ("9" * 1_000, True)],
)
def test_known_by_window_end(published, known):
    context = agent_context(AgentCache(None, 60), "dagster")
    assert context.known_by_window_end({"title": "t", "published": published}) is known
