"""Agents are plain Python: a callable taking an AgentContext and returning an iterable of
mappings with at least `title` (str) and `score` (number). An agent returns what was known by
its window's end: a run for a past window (a backfill) must not report what came later, so
items published at or after window_end are left out (AgentContext.known_by_window_end)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from agent_pipeline.caching import cache_key
from agent_pipeline.dates import parse_timestamp
from agent_pipeline.errors import ConfigurationError

if TYPE_CHECKING:
    from agent_pipeline.agents.budget import SpendLedger
    from agent_pipeline.agents.llm import LlmSettings

Agent = Callable[["AgentContext"], Iterable[Mapping[str, Any]]]

BUILT_IN_AGENTS = {
    "keywords": "agent_pipeline.agents.keywords:keywords_agent",
    "triage": "agent_pipeline.agents.triage:triage_agent",
}
DEFAULT_AGENT = "keywords"


class KeyValueStore(Protocol):
    """What AgentCache needs of a store (the Redis resource, in the job): agents know no
    resource, only this."""

    @property
    def enabled(self) -> bool: ...

    def cache_get(self, key: str) -> Any: ...

    def cache_get_many(self, keys: list[str]) -> list[Any]: ...

    def cache_set(self, key: str, value: Any, ttl_seconds: int) -> None: ...


class AgentCache:
    """The agent's view of the Redis cache: namespaced content-hash keys, one TTL, and
    hit/miss counts for the run's metadata. Without Redis every lookup is a miss."""

    def __init__(self, redis: KeyValueStore | None, ttl_seconds: int):
        self._redis = redis
        self._ttl_seconds = ttl_seconds
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self._redis is not None and self._redis.enabled

    def get(self, namespace: str, content: Any) -> Any | None:
        value = self._redis.cache_get(cache_key(namespace, content)) if self.enabled else None
        if value is None:
            self.misses += 1
        else:
            self.hits += 1
        return value

    def get_many(self, namespace: str, contents: list[Any]) -> list[Any | None]:
        """Like get for each content, in one round trip."""
        if not contents:
            return []
        keys = [cache_key(namespace, content) for content in contents]
        values = self._redis.cache_get_many(keys) if self.enabled else [None] * len(keys)
        found = sum(value is not None for value in values)
        self.hits += found
        self.misses += len(values) - found
        return values

    def peek(self, namespace: str, content: Any) -> Any | None:
        """Like get, without counting a hit or a miss."""
        return self._redis.cache_get(cache_key(namespace, content)) if self.enabled else None

    def set(self, namespace: str, content: Any, value: Any) -> None:
        if self.enabled:
            self._redis.cache_set(cache_key(namespace, content), value, self._ttl_seconds)


@dataclass(frozen=True)
class AgentSettings:
    """What an agent is told, from the environment. A custom agent reads what it needs;
    the LLM's settings, its key among them, go only to the agent that scores with the LLM
    (the built-in triage with AGENT_SCORER=llm)."""

    interests: str = ""  # AGENT_INTERESTS
    sources: str = ""  # AGENT_SOURCES
    scorer: str = "keyword"  # AGENT_SCORER: llm or keyword
    llm: LlmSettings | None = None
    # BACKLOG_MAX_AGE_HOURS: an item left unscored longer than this leaves the backlog.
    backlog_max_age_hours: int = 24  # the default, DEFAULT_BACKLOG_MAX_AGE_HOURS


@dataclass(frozen=True)
class AgentContext:
    """What an agent gets: its window, a cache, a logger and its settings."""

    partition_key: str
    window_start: datetime
    window_end: datetime
    cache: AgentCache
    # Takes debug/info/warning/error calls, %-style arguments included: in a run, a structlog
    # logger bound with the run, window, agent and op; any logging.Logger elsewhere.
    log: Any
    settings: AgentSettings = field(default_factory=AgentSettings)
    # What the agent reports about its work (sources, cache, LLM calls, tokens): shown on the
    # run_agent op in the UI and kept in the row's result.
    stats: dict[str, Any] = field(default_factory=dict)
    # A work queue (the Redis resource in the job), for agents that queue their work: None,
    # or not enabled, is no queue. The triage agent keeps its backlog there.
    queue: Any = None
    # Where the LLM's spending is counted per day (agent_runs' database, in the job): what
    # LLM_DAILY_BUDGET is checked against. None: spending is not counted beyond the run.
    spend: SpendLedger | None = None

    def known_by_window_end(self, item: Mapping[str, Any]) -> bool:
        """False for an item published at or after the window's end (a backfilled window
        must not report later news); True when its `published` is before, or no date."""
        published = parse_timestamp(item.get("published"))
        return published is None or published < self.window_end


def load_agent(spec: str) -> Agent:
    """The agent named by AGENT: a built-in name or `package.module:callable`."""
    spec = spec.strip()
    target = BUILT_IN_AGENTS.get(spec, spec)
    module_name, sep, attribute = target.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigurationError(
            "AGENT",
            f"{spec!r} is neither a built-in agent ({', '.join(sorted(BUILT_IN_AGENTS))}) "
            "nor a 'package.module:callable'",
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError("AGENT", f"cannot import module {module_name!r}: {exc}") from None
    agent = getattr(module, attribute, None)
    if not callable(agent):
        raise ConfigurationError(
            "AGENT", f"{module_name!r} has no callable named {attribute!r}"
        )
    return agent
