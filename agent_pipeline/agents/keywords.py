"""The default agent: scores the items of a feed shipped in the package against the user's
interests (AGENT_INTERESTS). Offline, no keys, deterministic.

The sample feed replays along the clock, so the schedule has news in every window: item n of
the replay is the feed's item n mod 24, published REPLAY_EVERY after item n-1 (four in each
10-minute window, the whole feed once an hour), with an id of its own, so each replay is a
new item to the digest."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Any

from agent_pipeline.agents import AgentContext

DEFAULT_INTERESTS = "dagster, data orchestration, postgres, redis, llm agents"
# Part of every cache key: bump it when the scoring changes, so old scores are not reused.
SCORER_VERSION = 1
TITLE_WEIGHT, SUMMARY_WEIGHT = 2, 1
REPLAY_START = datetime(1970, 1, 1, tzinfo=UTC)
REPLAY_EVERY = timedelta(seconds=150)


def load_sample_feed() -> list[dict[str, Any]]:
    text = resources.files("agent_pipeline.agents").joinpath("sample_feed.json").read_text()
    return json.loads(text)


def sample_feed_at(moment: datetime) -> list[dict[str, Any]]:
    """The replayed sample feed as it reads at `moment`, oldest first: the last len(feed)
    items published before it, like the latest entries of a real feed."""
    feed = load_sample_feed()
    # Items 0 .. published_count-1 are out: item n is published at REPLAY_START + n * step.
    published_count = -(-(moment - REPLAY_START) // REPLAY_EVERY)
    items = []
    for n in range(max(0, published_count - len(feed)), published_count):
        item = feed[n % len(feed)]
        published = REPLAY_START + n * REPLAY_EVERY
        items.append({**item, "id": f"{item['id']}.{n}",
                      "published": published.isoformat().replace("+00:00", "Z")})
    return items


def parse_interests(text: str) -> list[str]:
    """Comma-separated phrases, lowercased, blanks and repeats removed, order kept."""
    seen: dict[str, None] = {}
    for phrase in text.split(","):
        phrase = " ".join(phrase.lower().split())
        if phrase:
            seen.setdefault(phrase, None)
    return list(seen)


def _mentions(phrase: str, text: str) -> bool:
    # Whole words only: "redis" must not match "rediscover".
    return re.search(rf"(?<!\w){re.escape(phrase)}(?!\w)", text) is not None


def mentions_reason(matched: list[str]) -> str:
    """One line for the email: which interests (or their words) the item mentions."""
    return f"mentions {', '.join(matched)}" if matched else "mentions none of your interests"


def keyword_reason(item: Mapping[str, Any], interests: list[str]) -> str:
    text = f"{item.get('title', '')} {item.get('summary', '')}".lower()
    return mentions_reason([phrase for phrase in interests if _mentions(phrase, text)])


def keyword_score(item: Mapping[str, Any], interests: list[str]) -> float:
    """0-100: how many interests the item mentions, a title mention counting double."""
    if not interests:
        return 0.0
    title = str(item.get("title", "")).lower()
    summary = str(item.get("summary", "")).lower()
    points = 0
    for phrase in interests:
        if _mentions(phrase, title):
            points += TITLE_WEIGHT
        elif _mentions(phrase, summary):
            points += SUMMARY_WEIGHT
    return round(100.0 * points / (TITLE_WEIGHT * len(interests)), 1)


def keywords_agent(context: AgentContext) -> Iterator[dict[str, Any]]:
    """The sample feed as it reads at the window's end, each item with its keyword score;
    scores come from the cache when the item and the interests are unchanged."""
    interests = parse_interests(context.settings.interests or DEFAULT_INTERESTS)
    items = sample_feed_at(context.window_end)
    context.log.info(
        "Scoring %d sample feed items against %d interests", len(items), len(interests)
    )
    for item in items:
        cache_content = {"scorer": SCORER_VERSION, "interests": interests, "item": item}
        score = context.cache.get("keyword-score", cache_content)
        if score is None:
            score = keyword_score(item, interests)
            context.cache.set("keyword-score", cache_content, score)
        yield {**item, "score": score, "reason": keyword_reason(item, interests)}
