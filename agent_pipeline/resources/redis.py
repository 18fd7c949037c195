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
# KEYS: stream. ARGV: TTL, then the entry's field/value pairs.
_ADD = """
local id = redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
redis.call('EXPIRE', KEYS[1], ARGV[1])
return id
"""
# KEYS: members set, stream. ARGV: TTL, member, then the entry's field/value pairs.
_ADD_ONCE = """
local added = redis.call('SADD', KEYS[1], ARGV[2])
redis.call('EXPIRE', KEYS[1], ARGV[1])
if added == 1 then
  local id = redis.call('XADD', KEYS[2], '*', unpack(ARGV, 3))
  redis.call('EXPIRE', KEYS[2], ARGV[1])
  return id
end
return false
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
        raw = self._call(None, "get", key)
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return None

    def cache_set(self, key: str, value: Any, ttl_seconds: int) -> None:
        if ttl_seconds <= 0:
            raise ValueError("ttl_seconds must be positive: the cache never keeps keys forever")
        self._call(None, "set", key, json.dumps(value, separators=(",", ":")), ex=ttl_seconds)

    # -- queue ------------------------------------------------------------------------------

    def queue_create(self, name: str, group: str, ttl_seconds: int) -> None:
        """Create the stream (expiring after ttl_seconds) and its consumer group; a no-op when
        both exist."""
        self._call(None, "eval", _CREATE_GROUP, 1, stream_key(name), group, ttl_seconds)

    def queue_add_once(
        self, name: str, member: str, fields: Mapping[str, str], ttl_seconds: int
    ) -> bool:
        """Add an entry for member unless one was ever added to this stream; atomic, so a
        crash cannot mark a member without its entry. Both keys expire after ttl_seconds.
        True when added."""
        flat = [part for pair in fields.items() for part in pair]
        added = self._call(
            None, "eval", _ADD_ONCE, 2, f"{stream_key(name)}:members", stream_key(name),
            ttl_seconds, member, "member", member, *flat,
        )
        return bool(added)

    def queue_add(self, name: str, fields: Mapping[str, str], ttl_seconds: int) -> str | None:
        flat = [part for pair in fields.items() for part in pair]
        return self._call(None, "eval", _ADD, 1, stream_key(name), ttl_seconds, *flat)

    def queue_read(
        self, name: str, group: str, consumer: str, count: int = 10, block_ms: int | None = None
    ) -> list[QueueEntry]:
        """New entries for this consumer; each stays pending until acknowledged."""
        answer = self._call(
            [], "xreadgroup", group, consumer, {stream_key(name): ">"}, count=count, block=block_ms
        )
        return [entry for _stream, entries in answer or [] for entry in entries]

    def queue_ack(self, name: str, group: str, entry_ids: list[str]) -> int:
        if not entry_ids:
            return 0
        return self._call(0, "xack", stream_key(name), group, *entry_ids)

    def queue_reclaim(
        self, name: str, group: str, consumer: str, min_idle_ms: int, count: int = 100
    ) -> list[QueueEntry]:
        """Entries read but never acknowledged (their reader died), handed to this consumer."""
        answer = self._call(
            None, "xautoclaim", stream_key(name), group, consumer, min_idle_ms, "0-0", count=count
        )
        if not answer:
            return []
        return [(entry_id, fields) for entry_id, fields in answer[1] if fields is not None]

    def queue_expire(self, name: str, ttl_seconds: int) -> None:
        """Let a finished window's stream (and its record of members) go after ttl_seconds."""
        self._call(None, "expire", stream_key(name), ttl_seconds)
        self._call(None, "expire", f"{stream_key(name)}:members", ttl_seconds)
