"""The built-in agent `triage`: collects items from AGENT_SOURCES, scores each against
AGENT_INTERESTS with an LLM (AGENT_SCORER=llm) or offline keywords (keyword), and returns
outcomes with a score, a one-line reason, the source and the publication time. Scores are
cached in Redis under a hash of everything that decides them, so a run re-scores only new or
changed items."""

from __future__ import annotations

import json
import re
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import replace
from typing import Any

from rank_bm25 import BM25Plus

from agent_pipeline.agents import AgentContext
from agent_pipeline.agents.keywords import mentions_reason, parse_interests
from agent_pipeline.agents.llm import (
    PROMPT_VERSION,
    LlmError,
    LlmScorer,
    ScoringDeadline,
)
from agent_pipeline.agents.sources import (
    DEFAULT_POLICY,
    Fetched,
    FetchPolicy,
    SourceError,
    check_source,
    fetch_all,
    is_url,
    parse_sources,
    read_file,
    source_label,
)
from agent_pipeline.caching import content_hash
from agent_pipeline.errors import AgentPipelineError

KEYWORD_SCORER_VERSION = 1
QUEUE_GROUP = "scorers"
QUEUE_MAX = 100_000
# A window's stream outlives its runs by two days, long enough for any retry or re-execution.
QUEUE_TTL_SECONDS = 2 * 24 * 3600


class AllSourcesFailed(AgentPipelineError):
    """Every source failed: there is nothing to triage."""


class ScoringFailed(AgentPipelineError):
    """The LLM scored none of the items: a wrong key, a down API."""


def collect_items(
    context: AgentContext, sources: list[str], policy: FetchPolicy = DEFAULT_POLICY
) -> tuple[list[dict], dict[str, str]]:
    """Items of every source that could be read, and the error of each one that could not
    (by the source's label: a URL's query string may hold a token). HTTP sources are fetched
    concurrently within the policy's budget; an unchanged one costs a conditional GET, and a
    304 reuses its cached items."""
    results: dict[str, Fetched | SourceError] = {}
    remembered: dict[str, dict] = {}
    for source in sources:
        try:
            check_source(source)
            if is_url(source):
                remembered[source] = context.cache.get("feed", {"url": source}) or {}
            else:
                results[source] = read_file(source)
        except SourceError as exc:
            results[source] = exc
    fetched = fetch_all({url: cached.get("validators") for url, cached in remembered.items()},
                        policy)
    for url, result in fetched.items():
        if isinstance(result, Fetched) and result.not_modified:
            result = replace(result, items=remembered[url].get("items", []))
        elif isinstance(result, Fetched):
            context.cache.set(
                "feed", {"url": url}, {"validators": result.validators, "items": result.items}
            )
        results[url] = result
    items: list[dict] = []
    failures: dict[str, str] = {}
    warnings: dict[str, str] = {}
    for source in sources:  # in the configured order, whatever order the fetches ended in
        result, label = results[source], _unique_label(source, failures, warnings)
        if isinstance(result, SourceError):
            failures[label] = str(result)
            context.log.warning(f"Source {label} skipped: {result}")
            continue
        context.log.info(f"Source {label}: {len(result.items)} items")
        if result.warning:
            warnings[label] = result.warning
            context.log.warning(f"Source {label}: {result.warning}")
        items.extend(result.items)
    if warnings:
        context.stats["sources_warnings"] = warnings
    if sources and len(failures) == len(sources):
        details = "; ".join(f"{source}: {error}" for source, error in failures.items())
        raise AllSourcesFailed(f"every source failed: {details}")
    return items, failures


def _unique_label(source: str, *taken: Mapping[str, str]) -> str:
    """The source's label, numbered when another source (its twin but for the query string)
    has the same one."""
    label, n = source_label(source), 1
    while any(label in seen for seen in taken):
        n += 1
        label = f"{source_label(source)} ({n})"
    return label


def _scoring_content(item: Mapping[str, Any]) -> dict[str, Any]:
    return {key: item.get(key) for key in ("title", "summary", "url", "source")}


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def bm25_scores(items: list[Mapping[str, Any]], interests: str) -> list[dict[str, Any]]:
    """Offline relevance: BM25+ (rank_bm25) of each item's title and summary against the
    interests, scaled so that the best item of the batch scores 100; an item that mentions no
    interest scores 0. BM25+ rather than Okapi BM25, whose IDF is zero for a term found in
    half of a small batch (one of two items)."""
    if not items:
        return []
    documents = [_words(f"{item.get('title', '')} {item.get('summary', '')}") for item in items]
    query = _words(" ".join(parse_interests(interests)))
    raw = BM25Plus([document or [""] for document in documents]).get_scores(query)
    matched_terms = [sorted(set(query) & set(document)) for document in documents]
    best = max((value for value, m in zip(raw, matched_terms, strict=True) if m), default=0.0)
    results = []
    for matched, value in zip(matched_terms, raw, strict=True):
        score = round(100.0 * value / best, 1) if matched and best > 0 else 0.0
        results.append({"score": score, "reason": mentions_reason(matched)})
    return results


Remember = Callable[[str, dict[str, Any], tuple[float, str]], None]


def score_through_queue(
    context: AgentContext,
    queue: Any,
    scorer: LlmScorer,
    misses: list[dict],
    key_of: Mapping[int, dict[str, Any]],
    remember: Remember,
) -> list[LlmError]:
    """Score items through the window's Redis stream: each item is added once, read by this
    attempt's workers through a consumer group and acknowledged once it has an answer. A retry
    of the window first takes over what a failed or killed attempt read but never
    acknowledged; an item already scored is acknowledged without another LLM call. Items the
    API could not score stay unacknowledged, for the next attempt; their errors are returned."""
    stream = f"triage:{context.partition_key}"
    queue.queue_create(stream, QUEUE_GROUP, QUEUE_TTL_SECONDS)
    for item in misses:
        key = key_of[id(item)]
        queue.queue_add_once(
            stream, content_hash(key), {"cache_key": json.dumps(key), "item": json.dumps(item)},
            QUEUE_TTL_SECONDS,
        )
    consumer = f"attempt-{uuid.uuid4().hex[:12]}"
    # Runs of agent_job never overlap, so whatever is pending now belongs to a dead attempt.
    entries = queue.queue_reclaim(stream, QUEUE_GROUP, consumer, min_idle_ms=0, count=QUEUE_MAX)
    entries += queue.queue_read(stream, QUEUE_GROUP, consumer, count=QUEUE_MAX)

    def work(entry: tuple[str, dict[str, str]]) -> None:
        entry_id, fields = entry
        key = json.loads(fields["cache_key"])
        cached = context.cache.peek("triage-score", key)
        if cached is not None:
            remember(fields["member"], key, (cached["score"], cached["reason"]))
        elif not queue.enabled:
            return  # Redis went away: the caller scores what is left without the queue
        else:
            result = scorer.score(json.loads(fields["item"]))  # LlmError: left unacknowledged
            if result is not None:
                remember(fields["member"], key, result)
        # Also acknowledged when the model's answers were malformed: asking again in this
        # window would not help; the next window's run tries the item afresh.
        queue.queue_ack(stream, QUEUE_GROUP, [entry_id])

    failures = [r for r in scorer.score_all(entries, work) if isinstance(r, LlmError)]
    queue.queue_expire(stream, QUEUE_TTL_SECONDS)
    return failures


def score_with_llm(
    context: AgentContext,
    scorer: LlmScorer,
    misses: list[dict],
    key_of: Mapping[int, dict[str, Any]],
    scores: dict[int, dict[str, Any] | None],
) -> list[LlmError]:
    """Fill scores for the misses (through the queue when Redis is there); the API errors of
    the items it could not score."""
    by_member = {content_hash(key_of[id(item)]): item for item in misses}
    lock = threading.Lock()

    def remember(member: str, key: dict[str, Any], result: tuple[float, str]) -> None:
        value = {"score": result[0], "reason": result[1]}
        context.cache.set("triage-score", key, value)
        item = by_member.get(member)
        if item is not None:
            with lock:
                scores[id(item)] = value

    failures: list[LlmError] = []
    queue = context.queue
    if queue is not None and queue.enabled:
        failures = score_through_queue(context, queue, scorer, misses, key_of, remember)
    if queue is None or not queue.enabled:  # no Redis, or it failed part way
        rest = [item for item in misses if id(item) not in scores]

        def score_one(item: dict[str, Any]) -> None:
            result = scorer.score(item)
            if result is not None:
                remember(content_hash(key_of[id(item)]), key_of[id(item)], result)

        failures = [r for r in scorer.score_all(rest, score_one) if isinstance(r, LlmError)]
    return failures


def triage_agent(context: AgentContext) -> Iterator[dict[str, Any]]:
    settings = context.settings
    sources = parse_sources(settings.sources)
    collected, failures = collect_items(context, sources)
    # A backfilled window reports what was known by its end, not what came later.
    items = [item for item in collected if context.known_by_window_end(item)]
    interests = settings.interests
    llm = settings.llm if settings.scorer == "llm" else None
    scorer_name = "llm" if llm else "keyword"
    model = llm.model if llm else ""
    key_of = {
        id(item): {"scorer": scorer_name, "model": model, "prompt": PROMPT_VERSION,
                   "keyword_version": KEYWORD_SCORER_VERSION, "interests": interests,
                   "item": _scoring_content(item)}
        for item in items
    }
    scores: dict[int, dict[str, Any] | None] = {}
    misses = []
    for item in items:
        cached = context.cache.get("triage-score", key_of[id(item)])
        if cached is None:
            misses.append(item)
        else:
            scores[id(item)] = cached
    stats: dict[str, Any] = {
        "sources": len(sources), "sources_failed": failures, "items": len(items),
        "items_after_window": len(collected) - len(items),
        "cache_hits": len(items) - len(misses), "cache_misses": len(misses), "llm_calls": 0,
    }
    if llm and misses:
        with LlmScorer(llm, interests, context.log) as scorer:
            failures = score_with_llm(context, scorer, misses, key_of, scores)
        late = sum(isinstance(failure, ScoringDeadline) for failure in failures)
        stats.update(llm_calls=scorer.usage.calls, prompt_tokens=scorer.usage.prompt_tokens,
                     completion_tokens=scorer.usage.completion_tokens,
                     llm_failures=len(failures) - late, llm_unscored_at_deadline=late,
                     llm_answers_rejected=scorer.usage.rejected_answers)
        if failures and len(failures) == len(misses):
            raise ScoringFailed(f"no item could be scored: {failures[0]}")
        cost = scorer.usage.cost(settings.llm_price_input, settings.llm_price_output)
        if cost is not None:
            stats["cost"] = cost
    else:
        # BM25 weighs each item against the window's other items, so its scores are not
        # cached per item; they cost nothing to compute again.
        for item, scored in zip(misses, bm25_scores(misses, interests), strict=True):
            scores[id(item)] = scored
    context.stats.update(stats)
    for item in items:
        scored = scores.get(id(item))
        if scored is not None:  # None: the LLM gave no usable answer; logged by the scorer
            yield {**item, **scored}
