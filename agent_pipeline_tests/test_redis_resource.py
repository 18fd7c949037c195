from __future__ import annotations

import time

import pytest
import redis

from agent_pipeline.caching import stream_key
from agent_pipeline.errors import ConfigurationError
from agent_pipeline.resources.redis import RedisStore
from agent_pipeline_tests.services import free_port, throwaway_redis


@pytest.fixture
def resource(redis_url):
    resource = RedisStore(url=redis_url)
    resource.open()
    yield resource
    resource.close()


def test_cache_round_trip_with_ttl(resource, redis_url):
    assert resource.cache_get("k") is None
    resource.cache_set("k", {"score": 42.5, "ok": [1, 2]}, ttl_seconds=100)
    assert resource.cache_get("k") == {"score": 42.5, "ok": [1, 2]}
    ttl = redis.Redis.from_url(redis_url).ttl("k")
    assert 0 < ttl <= 100


def test_cache_entries_expire(resource):
    resource.cache_set("short", 1, ttl_seconds=1)
    assert resource.cache_get("short") == 1
    time.sleep(1.2)
    assert resource.cache_get("short") is None


def test_many_cached_values_in_one_call(resource, redis_url):
    resource.cache_set("a", {"score": 1}, ttl_seconds=60)
    redis.Redis.from_url(redis_url).set("broken", "not json")
    assert resource.cache_get_many(["a", "missing", "broken"]) == [{"score": 1}, None, None]
    assert resource.cache_get_many([]) == []


def test_cache_refuses_keys_without_expiry(resource):
    with pytest.raises(ValueError, match="ttl_seconds"):
        resource.cache_set("k", 1, ttl_seconds=0)


def entries(*members: str) -> list[tuple[str, dict[str, str]]]:
    return [(member, {"payload": member.upper()}) for member in members]


def test_queue_claim_done_oldest_first(resource, redis_url):
    resource.queue_create("w1", "scorers", 60)
    resource.queue_create("w1", "scorers", 60)  # a second create is a no-op
    assert resource.queue_add_once("w1", entries("a", "b", "c"), 60, 100) == (3, 0)
    claimed = resource.queue_claim("w1", "scorers", "triage", count=10)
    assert [(f["member"], f["payload"]) for _, f in claimed] == [("a", "A"), ("b", "B"), ("c", "C")]
    resource.queue_done("w1", "scorers", claimed[0][0], "a")
    client = redis.Redis.from_url(redis_url)
    assert client.xpending(stream_key("w1"), "scorers")["pending"] == 2
    assert resource.queue_status("w1")[0] == 2
    assert client.zrange(stream_key("w1") + ":members", 0, -1) == [b"b", b"c"]


def test_what_a_dead_reader_claimed_is_claimed_again_before_anything_new(resource):
    resource.queue_create("w2", "scorers", 60)
    resource.queue_add_once("w2", entries("a", "b"), 60, 100)
    first = resource.queue_claim("w2", "scorers", "triage", count=10)  # then the reader dies
    resource.queue_add_once("w2", entries("c"), 60, 100)
    again = resource.queue_claim("w2", "scorers", "triage", count=10)
    assert [f["member"] for _, f in again] == ["a", "b", "c"]
    assert [entry_id for entry_id, _ in again][:2] == [entry_id for entry_id, _ in first]
    assert [f["member"] for _, f in resource.queue_claim("w2", "scorers", "triage", 1)] == ["a"]


def test_a_member_is_added_once_until_done_and_the_stream_has_a_cap(resource):
    resource.queue_create("w4", "scorers", 60)
    assert resource.queue_add_once("w4", entries("a", "a", "b"), 60, 100) == (2, 0)
    assert resource.queue_add_once("w4", entries("a", "c", "d"), 60, 3) == (1, 1)  # d: full
    (entry_id, _fields), *_ = resource.queue_claim("w4", "scorers", "triage", 10)
    resource.queue_done("w4", "scorers", entry_id, "a")
    assert resource.queue_add_once("w4", entries("a"), 60, 100) == (1, 0)  # may come back


def test_entries_older_than_the_cutoff_are_dropped_read_or_not(resource, redis_url):
    client = redis.Redis.from_url(redis_url)
    resource.queue_create("w3", "scorers", 60)
    now_ms = int(time.time() * 1000)
    hour = 3600 * 1000
    # Entries added 30 and 20 hours ago (IDs are their times), then one now.
    for member, age in (("old", 30 * hour), ("older-read", 20 * hour)):
        client.xadd(stream_key("w3"), {"member": member}, id=f"{now_ms - age}-0")
        client.zadd(stream_key("w3") + ":members", {member: now_ms - age})
    resource.queue_claim("w3", "scorers", "triage", 1)  # "old" is read, never done
    resource.queue_add_once("w3", entries("new"), 60, 100)
    assert resource.queue_status("w3") == (3, now_ms - 30 * hour)
    assert resource.queue_drop_older_than("w3", now_ms - 24 * hour) == 1
    assert [f["member"] for _, f in resource.queue_claim("w3", "scorers", "triage", 10)] == [
        "older-read", "new"
    ]
    assert client.zrange(stream_key("w3") + ":members", 0, -1) == [b"older-read", b"new"]


def test_without_url_everything_is_a_quiet_no_op():
    resource = RedisStore()
    resource.open()
    assert not resource.enabled
    assert resource.unavailable_reason == "REDIS_URL is not set"
    resource.cache_set("k", 1, ttl_seconds=10)
    assert resource.cache_get("k") is None
    assert resource.queue_add_once("w", entries("a"), 60, 100) == (0, 0)
    assert resource.queue_claim("w", "g", "c", 10) == []
    assert resource.queue_status("w") == (0, None)


def test_an_unreachable_server_turns_the_cache_off_for_the_run(caplog):
    resource = RedisStore(url=f"redis://127.0.0.1:{free_port()}/0", socket_timeout=1)
    resource.open()
    assert resource.enabled
    assert resource.cache_get("k") is None
    assert not resource.enabled
    assert resource.unavailable_reason.startswith("Redis unavailable (ConnectionError")
    resource.cache_set("k", 1, ttl_seconds=10)
    resource.cache_get("k")
    assert len([r for r in caplog.records if "unavailable" in r.getMessage()]) == 1


def test_a_malformed_url_names_the_variable():
    with pytest.raises(ConfigurationError, match="^REDIS_URL: "):
        RedisStore(url="redis://host:notaport/0").open()


def test_a_redis_that_refuses_writes_turns_the_cache_off():
    """maxmemory reached with noeviction: writes fail with OOM; the run must go on. On a
    server of its own: a cap on the shared one would fail other tests' writes too."""
    with throwaway_redis("--maxmemory-policy", "noeviction") as url:
        admin = redis.Redis.from_url(url)
        admin.set("filler", "x" * 100_000)
        admin.config_set("maxmemory", 1)
        resource = RedisStore(url=url)
        resource.open()
        resource.cache_set("k", 1, ttl_seconds=10)
        assert not resource.enabled
        assert resource.unavailable_reason.startswith("Redis unavailable (OutOfMemoryError")
        assert resource.cache_get("k") is None
        resource.close()


def test_every_key_gets_its_ttl_in_the_call_that_creates_it(resource, redis_url):
    """A process killed right after any of these calls leaves no key that never expires."""
    client = redis.Redis.from_url(redis_url)
    resource.queue_create("w5", "scorers", 60)
    assert 0 < client.ttl(stream_key("w5")) <= 60
    resource.queue_add_once("w6", entries("a"), 60, 100)
    resource.cache_set("agent_pipeline:cache:k", {"v": 1}, 60)
    keys = list(client.scan_iter())
    assert len(keys) == 4  # w5, w6 and its members set, the cache key
    assert all(0 < client.ttl(key) <= 60 for key in keys)
