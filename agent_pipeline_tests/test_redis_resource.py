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


def test_cache_refuses_keys_without_expiry(resource):
    with pytest.raises(ValueError, match="ttl_seconds"):
        resource.cache_set("k", 1, ttl_seconds=0)


def test_queue_add_read_ack(resource, redis_url):
    resource.queue_create("w1", "scorers", 60)
    resource.queue_create("w1", "scorers", 60)  # a second create is a no-op
    ids = [resource.queue_add("w1", {"item": str(n)}, 60) for n in range(3)]
    entries = resource.queue_read("w1", "scorers", "worker-a", count=10)
    assert [entry_id for entry_id, _ in entries] == ids
    assert [fields["item"] for _, fields in entries] == ["0", "1", "2"]
    assert resource.queue_read("w1", "scorers", "worker-b") == []
    assert resource.queue_ack("w1", "scorers", ids[:2]) == 2
    pending = redis.Redis.from_url(redis_url).xpending(stream_key("w1"), "scorers")
    assert pending["pending"] == 1


def test_unacknowledged_entries_are_reclaimed_by_another_consumer(resource):
    resource.queue_create("w2", "scorers", 60)
    for n in range(4):
        resource.queue_add("w2", {"item": str(n)}, 60)
    read = resource.queue_read("w2", "scorers", "dead-worker", count=4)
    resource.queue_ack("w2", "scorers", [read[0][0]])
    time.sleep(0.05)
    reclaimed = resource.queue_reclaim("w2", "scorers", "rescuer", min_idle_ms=10)
    assert [fields["item"] for _, fields in reclaimed] == ["1", "2", "3"]
    # Fresh entries are not taken from a live reader.
    assert resource.queue_reclaim("w2", "scorers", "other", min_idle_ms=60_000) == []


def test_queue_expire(resource, redis_url):
    resource.queue_create("w3", "scorers", 60)
    resource.queue_add("w3", {"item": "x"}, 60)
    resource.queue_expire("w3", 50)
    assert 0 < redis.Redis.from_url(redis_url).ttl(stream_key("w3")) <= 50


def test_without_url_everything_is_a_quiet_no_op():
    resource = RedisStore()
    resource.open()
    assert not resource.enabled
    assert resource.unavailable_reason == "REDIS_URL is not set"
    resource.cache_set("k", 1, ttl_seconds=10)
    assert resource.cache_get("k") is None
    assert resource.queue_add("w", {"a": "b"}, 60) is None
    assert resource.queue_read("w", "g", "c") == []


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


def test_queue_add_once_adds_each_member_once(resource):
    resource.queue_create("w4", "scorers", 60)
    assert resource.queue_add_once("w4", "item-a", {"payload": "1"}, 60)
    assert not resource.queue_add_once("w4", "item-a", {"payload": "2"}, 60)
    assert resource.queue_add_once("w4", "item-b", {"payload": "3"}, 60)
    entries = resource.queue_read("w4", "scorers", "worker", count=10)
    assert [(f["member"], f["payload"]) for _, f in entries] == [("item-a", "1"), ("item-b", "3")]


def test_every_key_gets_its_ttl_in_the_call_that_creates_it(resource, redis_url):
    """A process killed right after any of these calls leaves no key that never expires."""
    client = redis.Redis.from_url(redis_url)
    resource.queue_create("w5", "scorers", 60)
    assert 0 < client.ttl(stream_key("w5")) <= 60
    resource.queue_add_once("w6", "item-a", {"payload": "1"}, 60)
    resource.queue_add("w7", {"payload": "1"}, 60)
    resource.cache_set("agent_pipeline:cache:k", {"v": 1}, 60)
    keys = list(client.scan_iter())
    assert len(keys) == 5  # w5, w6 and its members set, w7, the cache key
    assert all(0 < client.ttl(key) <= 60 for key in keys)
