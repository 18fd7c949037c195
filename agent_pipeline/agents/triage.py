"""The built-in agent `triage`: collects items from AGENT_SOURCES, scores each against
AGENT_INTERESTS with an LLM (AGENT_SCORER=llm) or offline keywords (keyword), and returns
outcomes with a score, a one-line reason, the source and the publication time. Scores are
cached in Redis under a hash of everything that decides them, so a run re-scores only new or
changed items."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from rank_bm25 import BM25Plus

from agent_pipeline.agents import AgentContext
from agent_pipeline.agents.budget import BudgetReached, CallBudget
from agent_pipeline.agents.keywords import mentions_reason, parse_interests
from agent_pipeline.agents.llm import (
    PROMPT_VERSION,
    LimitReached,
    LlmError,
    LlmScorer,
    LlmSettings,
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
# The backlog: a Redis stream of the items a run could not score, read by the next run.
BACKLOG = "triage-backlog"
BACKLOG_GROUP = "scorers"
# Runs of agent_job never overlap, so one consumer: what it has claimed and not finished is
# a dead or stopped run's, claimed again by the next.
BACKLOG_CONSUMER = "triage"
# Bounds what Redis keeps and a run reads: past it, new unscored items are not added, and
# wait for a later run to fetch them again.
BACKLOG_MAX_ITEMS = 10_000


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


@dataclass
class Scored:
    """What scoring found: a score for each member (an item's content hash), the items read
    from the backlog, and the LLM errors of the items left unscored."""

    values: dict[str, dict[str, Any]] = field(default_factory=dict)
    backlog_items: dict[str, dict[str, Any]] = field(default_factory=dict)
    failures: list[LlmError] = field(default_factory=list)
    asked: int = 0  # items put to the LLM (not found in the cache meanwhile)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, member: str, value: dict[str, Any]) -> None:
        with self._lock:
            self.values[member] = value

    def count_asked(self) -> None:
        with self._lock:
            self.asked += 1


def backlog_work(
    context: AgentContext, queue: Any, misses: list[dict], member_of: Mapping[int, str],
    key_of: Mapping[int, dict[str, Any]], stats: dict[str, Any],
) -> list[tuple[str, str, dict[str, Any], dict[str, Any]]] | None:
    """The run's unscored items through the backlog: entries older than BACKLOG_MAX_AGE_HOURS
    dropped (and counted), this run's misses added (once: an item the backlog holds is not
    added again), then everything claimed, oldest first, a dead run's claimed entries among
    them. (entry ID, member, cache key, item) each; None when Redis failed on the way."""
    max_age_ms = context.settings.backlog_max_age_hours * 3600 * 1000
    # The stream outlives its oldest entry by a day, then goes with an abandoned install.
    ttl_seconds = max_age_ms // 1000 + 24 * 3600
    queue.queue_create(BACKLOG, BACKLOG_GROUP, ttl_seconds)
    expired = queue.queue_drop_older_than(BACKLOG, int(time.time() * 1000) - max_age_ms)
    added, refused = queue.queue_add_once(
        BACKLOG,
        [(member_of[id(item)],
          {"cache_key": json.dumps(key_of[id(item)]), "item": json.dumps(item, default=str)})
         for item in misses],
        ttl_seconds, BACKLOG_MAX_ITEMS,
    )
    entries = queue.queue_claim(BACKLOG, BACKLOG_GROUP, BACKLOG_CONSUMER, BACKLOG_MAX_ITEMS)
    if not queue.enabled:
        return None
    stats.update(backlog_expired=expired, backlog_added=added)
    if refused:
        stats["backlog_full_refused"] = refused
        context.log.warning(
            f"The backlog holds {BACKLOG_MAX_ITEMS:,} items: {refused} new ones were not added "
            "and wait for a later run to fetch them again."
        )
    if expired:
        context.log.warning(
            f"Dropped {expired} backlog item(s) left unscored for more than "
            f"{context.settings.backlog_max_age_hours} hours (BACKLOG_MAX_AGE_HOURS)."
        )
    work = []
    for entry_id, fields in entries:
        try:
            work.append((entry_id, fields["member"], json.loads(fields["cache_key"]),
                         json.loads(fields["item"])))
        except (KeyError, ValueError):  # not an entry of ours: nothing to score
            queue.queue_done(BACKLOG, BACKLOG_GROUP, entry_id, fields.get("member", ""))
    return work


def score_with_llm(
    context: AgentContext,
    scorer: LlmScorer,
    misses: list[dict],
    key_of: Mapping[int, dict[str, Any]],
    stats: dict[str, Any],
) -> Scored:
    """Score the misses, and the backlog with them when Redis is there: the oldest first,
    each scored once (an entry leaves the backlog once its score is cached), and what a limit
    or the API leaves unscored stays for the next run. Without Redis there is no backlog:
    the misses are scored directly, and what is left unscored is fetched again later."""
    member_of = {id(item): content_hash(key_of[id(item)]) for item in misses}
    scored = Scored()
    queue = context.queue
    work = None
    if queue is not None and queue.enabled:
        work = backlog_work(context, queue, misses, member_of, key_of, stats)
    if work is not None:

        def score_entry(entry: tuple[str, str, dict[str, Any], dict[str, Any]]) -> None:
            entry_id, member, key, item = entry
            if not queue.enabled:
                return  # Redis went away: what is left is scored below, without the backlog
            scored.backlog_items[member] = item
            value = context.cache.peek("triage-score", key)
            if value is None:
                scored.count_asked()
                result = scorer.score(item)  # LlmError: left in the backlog
                if result is not None:
                    value = {"score": result[0], "reason": result[1]}
                    context.cache.set("triage-score", key, value)
            if value is not None:
                scored.add(member, value)
            # Also done when the model's answers were malformed: asking again would not help.
            queue.queue_done(BACKLOG, BACKLOG_GROUP, entry_id, member)

        scored.failures = _llm_errors(scorer.score_all(work, score_entry))
        length, oldest_ms = queue.queue_status(BACKLOG)
        stats["backlog_length"] = length
        if oldest_ms is not None:
            stats["backlog_oldest_age_hours"] = round(
                max(time.time() - oldest_ms / 1000, 0) / 3600, 2
            )
    if queue is None or not queue.enabled:  # no Redis, or it failed part way
        reason = getattr(queue, "unavailable_reason", None) or "no Redis"
        context.log.warning(f"No backlog ({reason}): items left unscored wait for a later run.")
        stats["backlog"] = f"none: {reason}"
        rest = [item for item in misses if member_of[id(item)] not in scored.values]

        def score_one(item: dict[str, Any]) -> None:
            scored.count_asked()
            result = scorer.score(item)
            if result is not None:
                value = {"score": result[0], "reason": result[1]}
                context.cache.set("triage-score", key_of[id(item)], value)
                scored.add(member_of[id(item)], value)

        scored.failures = _llm_errors(scorer.score_all(rest, score_one))
    return scored


def _llm_errors(results: list[Any]) -> list[LlmError]:
    return [result for result in results if isinstance(result, LlmError)]


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
    cached_values = context.cache.get_many("triage-score", [key_of[id(item)] for item in items])
    for item, cached in zip(items, cached_values, strict=True):
        if cached is None:
            misses.append(item)
        else:
            scores[id(item)] = cached
    stats: dict[str, Any] = {
        "sources": len(sources), "sources_failed": failures, "items": len(items),
        "items_after_window": len(collected) - len(items),
        "cache_hits": len(items) - len(misses), "cache_misses": len(misses), "llm_calls": 0,
    }
    if llm:
        budget = CallBudget(
            max_calls_per_run=llm.max_calls_per_run, daily_budget=llm.daily_budget,
            prices=llm.prices, ledger=context.spend,
        )
        with LlmScorer(llm, interests, context.log, budget=budget) as scorer:
            try:
                scored = score_with_llm(context, scorer, misses, key_of, stats)
            finally:
                budget.flush()
        fetched = set()
        for item in items:
            member = content_hash(key_of[id(item)])
            fetched.add(member)
            if member in scored.values:
                scores[id(item)] = scored.values[member]
        # Earlier runs' items that this run did not fetch again, scored now: still news.
        backlog_items = [
            {**item, **scored.values[member]}
            for member, item in scored.backlog_items.items()
            if member in scored.values and member not in fetched
            and context.known_by_window_end(item)
        ]
        stats.update(_llm_stats(scorer, budget, scored, llm))
        if budget.stopped_by:
            context.log.warning(f"Stopped calling the LLM: {budget.stopped_by}.")
        if stats["llm_unscored_at_deadline"]:
            context.log.warning(
                f"{stats['llm_unscored_at_deadline']} item(s) left unscored: "
                f"{next(f for f in scored.failures if isinstance(f, ScoringDeadline))}."
            )
        api_failures = [f for f in scored.failures if not isinstance(f, LimitReached)]
        if api_failures and len(api_failures) == scored.asked:
            raise ScoringFailed(f"no item could be scored: {api_failures[0]}")
    else:
        backlog_items = []
        # BM25 weighs each item against the window's other items, so its scores are not
        # cached per item; they cost nothing to compute again.
        for item, value in zip(misses, bm25_scores(misses, interests), strict=True):
            scores[id(item)] = value
    context.stats.update(stats)
    for item in items:
        value = scores.get(id(item))
        if value is not None:  # None: not scored (yet), or no usable answer from the LLM
            yield {**item, **value}
    yield from backlog_items  # earlier runs' items, scored now


def _llm_stats(
    scorer: LlmScorer, budget: CallBudget, scored: Scored, llm: LlmSettings
) -> dict[str, Any]:
    """What the LLM cost this run, what is left of today's budget, and why it stopped."""
    late = sum(isinstance(failure, ScoringDeadline) for failure in scored.failures)
    limited = sum(isinstance(failure, BudgetReached) for failure in scored.failures)
    stats: dict[str, Any] = {
        "llm_calls": scorer.usage.calls, "prompt_tokens": scorer.usage.prompt_tokens,
        "completion_tokens": scorer.usage.completion_tokens,
        "llm_failures": len(scored.failures) - late - limited,
        "llm_unscored_at_deadline": late, "llm_unscored_over_budget": limited,
        "llm_answers_rejected": scorer.usage.rejected_answers,
    }
    if llm.prices is not None:
        stats["cost"] = llm.prices.cost(scorer.usage.prompt_tokens,
                                        scorer.usage.completion_tokens)
    today = budget.spent_today()
    if today is not None and llm.prices is not None:
        stats["llm_spend_today"] = today[1]
    if llm.daily_budget is not None:
        stats["llm_daily_budget"] = llm.daily_budget
    if budget.stopped_by:
        stats["llm_stopped"] = budget.stopped_by
    if budget.daily_budget_reached:
        stats["llm_daily_budget_reached"] = True
    return stats
