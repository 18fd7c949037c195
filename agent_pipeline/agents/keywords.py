"""The default agent: scores the items of a feed shipped in the package against the user's
interests (AGENT_INTERESTS). Offline, no keys, deterministic."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from importlib import resources
from typing import Any

from agent_pipeline.agents import AgentContext

DEFAULT_INTERESTS = "dagster, data orchestration, postgres, redis, llm agents"
# Part of every cache key: bump it when the scoring changes, so old scores are not reused.
SCORER_VERSION = 1
TITLE_WEIGHT, SUMMARY_WEIGHT = 2, 1


def load_sample_feed() -> list[dict[str, Any]]:
    text = resources.files("agent_pipeline.agents").joinpath("sample_feed.json").read_text()
    return json.loads(text)


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
    """Every sample feed item published before the window's end, with its keyword score;
    scores come from the cache when the item and the interests are unchanged."""
    interests = parse_interests(context.settings.interests or DEFAULT_INTERESTS)
    items = [item for item in load_sample_feed() if context.known_by_window_end(item)]
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
