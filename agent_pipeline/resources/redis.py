"""Redis: a cache (TTL, keys from content hashes) and a work queue (a stream with a consumer
group). Unconfigured or unreachable, it degrades to no cache and no queue, and says so."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from typing import Any

import redis
from dagster import ConfigurableResource, InitResourceContext
from pydantic import Field, PrivateAttr

from agent_pipeline.caching import stream_key
from agent_pipeline.errors import ConfigurationError

log = logging.getLogger(__name__)

QueueEntry = tuple[str, dict[str, str]]

# Every key gets its TTL in the same call that creates it: a process killed between the two
# would otherwise leave a key that never expires.
# KEYS: stream. ARGV: group, TTL.
_CREATE_GROUP = """
local created = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
redis.call('EXPIRE', KEYS[1], ARGV[2])
if type(created) == 'table' and created.err and not string.find(created.err, 'BUSYGROUP') then
  return created
end
return 'OK'
"""
# KEYS: members (a sorted set: member -> the time its entry was added), stream. ARGV: TTL,
# the most entries the stream may hold, member, then the entry's field/value pairs. The entry
# ID if added; 0 when the member has an entry already; -1 when the stream is full.
_ADD_ONCE = """
if redis.call('ZSCORE', KEYS[1], ARGV[3]) then
  return 0
end
if redis.call('XLEN', KEYS[2]) >= tonumber(ARGV[2]) then
  return -1
end
local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 4))
redis.call('ZADD', KEYS[1], tonumber(string.match(id, '^(%d+)')), ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[1])
redis.call('EXPIRE', KEYS[2], ARGV[1])
return id
"""
# KEYS: members, stream. ARGV: group, entry ID, member. Done with an entry: acknowledged and
# deleted, its member forgotten, in one step.
_DONE = """
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('ZREM', KEYS[1], ARGV[3])
return 1
"""
# KEYS: members, stream. ARGV: the oldest entry time (ms) to keep. How many entries went.
_DROP_OLDER = """
local dropped = redis.call('XTRIM', KEYS[2], 'MINID', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
return dropped
"""


class RedisStore(ConfigurableResource):
    """Redis for the agent's cache and work queue; optional (REDIS_URL unset: no cache)."""

    url: str | None = Field(
        default=None,
        description="redis://host:6379/0 from REDIS_URL; unset means no cache and no queue.",
    )
    socket_timeout: float = Field(
        default=5.0, description="Seconds to wait on Redis before treating it as down."
    )

    _client: redis.Redis | None = PrivateAttr(default=None)
    _unavailable_reason: str | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        self.open()

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        self.close()

    def open(self) -> None:
        if not self.url:
            self._unavailable_reason = "REDIS_URL is not set"
            return
        try:
            self._client = redis.Redis.from_url(
                self.url,
                socket_timeout=self.socket_timeout,
                socket_connect_timeout=self.socket_timeout,
                decode_responses=True,
            )
        except ValueError as exc:
            raise ConfigurationError(
                "REDIS_URL", f"is not a Redis URL (expected redis://host:6379/0): {exc}"
            ) from None
        self._unavailable_reason = None

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    @property
    def enabled(self) -> bool:
        """True while Redis is configured and has not failed during this run."""
        return self._client is not None and self._unavailable_reason is None

    @property
    def unavailable_reason(self) -> str | None:
        return self._unavailable_reason

    def _call(self, default: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        if not self.enabled:
            return default
        try:
            return getattr(self._client, method)(*args, **kwargs)
        except redis.RedisError as exc:
            self._turn_off(exc)
            return default

    def _turn_off(self, exc: Exception) -> None:
        # Down, out of memory, read-only after a failover, refused: the run goes on without
        # cache and queue. Said once: every later call is a no-op for the rest of the run.
        self._unavailable_reason = f"Redis unavailable ({type(exc).__name__}: {exc})"
        log.warning("Redis is unavailable, going on without cache and queue: %s", exc)

    # -- cache ------------------------------------------------------------------------------

    def cache_get(self, key: str) -> Any | None:
        """The JSON value cached under key, or None (missing, expired, or no Redis)."""
        return _json_or_none(self._call(None, "get", key))

    def cache_get_many(self, keys: list[str]) -> list[Any | None]:
        """cache_get for each key, in one round trip (MGET)."""
        raw = self._call(None, "mget", keys) if keys else []
        return [_json_or_none(value) for value in raw or [None] * len(keys)]

    def cache_set(self, key: str, value: Any, ttl_seconds: int) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive: the cache never keeps keys forever")
        self._call(None, "set", key, json.dumps(value, separators=(",", ":")), ex=ttl_seconds)

    # -- queue ------------------------------------------------------------------------------
    # A stream with one consumer group, and a sorted set of the members that have an entry.

    def queue_create(self, name: str, group: str, ttl_seconds: int) -> None:
        """Create the stream (expiring after ttl_seconds) and its consumer group; a no-op when
        both exist, but for the expiry, pushed back."""
        self._call(None, "eval", _CREATE_GROUP, 1, stream_key(name), group, ttl_seconds)
        self._call(None, "expire", _members_key(name), ttl_seconds)

    def queue_add_once(
        self,
        name: str,
        entries: list[tuple[str, Mapping[str, str]]],
        ttl_seconds: int,
        max_length: int,
    ) -> tuple[int, int]:
        """Add an entry for each (member, fields) whose member has none in the stream, while
        it holds fewer than max_length; each atomic, so a crash cannot mark a member without
        its entry; one round trip for all. (added, refused because the stream was full)."""
        if not entries or not self.enabled:
            return 0, 0
        keys = (_members_key(name), stream_key(name))
        try:
            pipeline = self._client.pipeline(transaction=False)
            for member, fields in entries:
                flat = [part for pair in fields.items() for part in pair]
                pipeline.eval(_ADD_ONCE, 2, *keys, ttl_seconds, max_length, member,
                              "member", member, *flat)
            answers = pipeline.execute()
        except redis.RedisError as exc:
            self._turn_off(exc)
            return 0, 0
        added = sum(isinstance(answer, str) for answer in answers)
        return added, sum(answer == -1 for answer in answers)

    def queue_claim(
        self, name: str, group: str, consumer: str, count: int
    ) -> list[QueueEntry]:
        """Up to count entries for consumer, oldest first: those read before and never
        finished (their reader died, or left them for later), then those never read. Each
        stays pending until queue_done."""
        claimed = self._call(
            None, "xautoclaim", stream_key(name), group, consumer, 0, "0-0", count=count
        )
        entries = [(entry_id, fields) for entry_id, fields in (claimed or [None, []])[1]
                   if fields is not None]  # None: trimmed away while pending
        if len(entries) < count:
            answer = self._call([], "xreadgroup", group, consumer, {stream_key(name): ">"},
                                count=count - len(entries))
            entries += [entry for _stream, found in answer or [] for entry in found]
        return sorted(entries, key=lambda entry: _entry_time(entry[0]))

    def queue_done(self, name: str, group: str, entry_id: str, member: str) -> None:
        """Finished with an entry: it leaves the stream, and its member may be added again."""
        self._call(None, "eval", _DONE, 2, _members_key(name), stream_key(name), group,
                   entry_id, member)

    def queue_drop_older_than(self, name: str, oldest_ms: int) -> int:
        """Drop the entries added before oldest_ms (milliseconds since the epoch), read or not;
        how many."""
        return self._call(0, "eval", _DROP_OLDER, 2, _members_key(name), stream_key(name),
                          oldest_ms) or 0

    def queue_status(self, name: str) -> tuple[int, int | None]:
        """(entries in the stream, when the oldest was added in ms since the epoch or None)."""
        length = self._call(0, "xlen", stream_key(name)) or 0
        oldest = self._call([], "xrange", stream_key(name), count=1) if length else []
        return length, _entry_time(oldest[0][0]) if oldest else None


def _json_or_none(raw: str | None) -> Any | None:
    """A cached JSON value; None for a missing key, or a value that is not JSON."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return None


def _members_key(name: str) -> str:
    return f"{stream_key(name)}:members"


def _entry_time(entry_id: str) -> int:
    """When a stream entry was added, in ms since the epoch: the first part of its ID."""
    return int(entry_id.split("-", 1)[0])
