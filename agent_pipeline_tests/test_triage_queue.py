"""Scoring through the window's Redis stream: a failure or a kill -9 half way loses nothing,
and the re-run of the window pays for no item twice (but those in flight at the kill)."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis

from agent_pipeline.agents import AgentCache, AgentContext, AgentSettings
from agent_pipeline.agents.llm import LlmScorer, LlmSettings
from agent_pipeline.agents.triage import ScoringFailed, triage_agent
from agent_pipeline.caching import stream_key
from agent_pipeline.resources.redis import RedisStore
from agent_pipeline_tests.llm_server import LoopbackLlm, Reply
from agent_pipeline_tests.services import throwaway_redis

REPO = Path(__file__).resolve().parent.parent
WINDOW = "2026-11-26-09:30"
ITEMS = 40


def write_items(folder: Path) -> str:
    path = folder / "items.json"
    path.write_text(json.dumps([{"title": f"Item {n:02d}", "id": str(n)} for n in range(ITEMS)]))
    return str(path)


def settings(source: str, llm: LoopbackLlm) -> AgentSettings:
    return AgentSettings(
        interests="dagster", sources=source, scorer="llm",
        llm=LlmSettings(base_url=llm.base_url, api_key="sk-test", model="m", concurrency=4),
    )


def run_triage(redis_url: str, source: str, llm: LoopbackLlm) -> list[dict]:
    queue = RedisStore(url=redis_url)
    queue.open()
    context = AgentContext(
        partition_key=WINDOW,
        window_start=datetime(2026, 11, 26, 9, 30, tzinfo=UTC),
        window_end=datetime(2026, 11, 26, 9, 40, tzinfo=UTC),
        cache=AgentCache(queue, 3600), log=logging.getLogger("test"),
        settings=settings(source, llm), queue=queue,
    )
    try:
        return list(triage_agent(context))
    finally:
        queue.close()


def pending(redis_url: str) -> int:
    client = redis.Redis.from_url(redis_url)
    return client.xpending(stream_key(f"triage:{WINDOW}"), "scorers")["pending"]


def test_an_exception_half_way_costs_its_item_and_a_rerun_scores_each_item_once(
    redis_url, tmp_path, monkeypatch
):
    source = write_items(tmp_path)
    real_score, calls = LlmScorer.score, []

    def failing_score(self, item):
        calls.append(item["title"])
        if len(calls) == 15:
            raise RuntimeError("scorer crashed")
        return real_score(self, item)

    with LoopbackLlm() as llm:
        monkeypatch.setattr(LlmScorer, "score", failing_score)
        assert len(run_triage(redis_url, source, llm)) == ITEMS - 1
        assert len(llm.requests) == ITEMS - 1
        assert pending(redis_url) == 1  # read, never acknowledged

        monkeypatch.setattr(LlmScorer, "score", real_score)
        outcomes = run_triage(redis_url, source, llm)
    assert len(outcomes) == ITEMS
    assert sorted(llm.calls_per_title.values()) == [1] * ITEMS  # each item scored once
    assert pending(redis_url) == 0


RUN_TRIAGE = """
import sys
from agent_pipeline_tests.test_triage_queue import run_triage
class Remote:  # the LLM runs in the test process; only its URL travels
    base_url = sys.argv[3]
run_triage(sys.argv[1], sys.argv[2], Remote())
"""


@pytest.mark.slow
def test_a_worker_killed_half_way_loses_nothing(redis_url, tmp_path):
    source = write_items(tmp_path)
    with LoopbackLlm(lambda request, call: Reply(delay=0.2)) as llm:
        worker = subprocess.Popen(
            [sys.executable, "-c", RUN_TRIAGE, redis_url, source, llm.base_url],
            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        deadline = time.monotonic() + 60
        while len(llm.requests) < 12 and time.monotonic() < deadline:
            time.sleep(0.02)
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait()
        paid_before_kill = len(llm.requests)
        assert paid_before_kill < ITEMS and pending(redis_url) > 0

        outcomes = run_triage(redis_url, source, llm)
    assert len(outcomes) == ITEMS
    assert set(llm.calls_per_title) == {f"Item {n:02d}" for n in range(ITEMS)}
    # Only the calls in flight at the kill (at most LLM_CONCURRENCY) were paid twice.
    assert ITEMS <= len(llm.requests) <= ITEMS + 4
    assert pending(redis_url) == 0


def test_a_refused_key_fails_the_run_and_a_rerun_after_the_fix_scores_everything(
    redis_url, tmp_path
):
    source = write_items(tmp_path)
    key_works = False

    def script(request, call):
        return Reply() if key_works else Reply(status=401)

    with LoopbackLlm(script) as llm:
        with pytest.raises(ScoringFailed, match="HTTP 401: the API refused LLM_API_KEY"):
            run_triage(redis_url, source, llm)
        assert pending(redis_url) == ITEMS  # nothing acknowledged: all left for the re-run
        key_works = True
        outcomes = run_triage(redis_url, source, llm)
    assert len(outcomes) == ITEMS and pending(redis_url) == 0


def test_redis_failing_half_way_pays_for_no_item_twice(tmp_path):
    """Redis refuses writes (out of memory) part way: the agent finishes without it, and
    scores only what the queue had not scored yet. On a server of its own: a cap on the
    shared one would fail other tests' writes too."""
    source = write_items(tmp_path)

    def script(request, call):
        if len(llm.requests) == 10:
            admin.set("filler", "x" * 100_000)
            admin.config_set("maxmemory", 1)
        return Reply()

    with throwaway_redis("--maxmemory-policy", "noeviction") as url, \
            LoopbackLlm(script) as llm:
        admin = redis.Redis.from_url(url)
        outcomes = run_triage(url, source, llm)
    assert len(outcomes) == ITEMS
    assert sorted(llm.calls_per_title.values()) == [1] * ITEMS


def test_after_a_run_every_redis_key_expires(redis_url, tmp_path):
    with LoopbackLlm() as llm:
        assert len(run_triage(redis_url, write_items(tmp_path), llm)) == ITEMS
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter())
    assert keys and all(client.ttl(key) > 0 for key in keys)


@pytest.mark.parametrize("policy", ["allkeys-lru", "noeviction"])
def test_a_full_redis_costs_the_cache_never_the_run(tmp_path, policy):
    """Redis at its memory cap: under LRU it evicts (the queue too, part way); under
    noeviction it refuses writes. Either way the run scores every item."""
    source = tmp_path / "items.json"
    source.write_text(json.dumps(
        [{"title": f"Item {n:03d}", "summary": "x" * 2_000, "id": str(n)} for n in range(300)]
    ))
    with throwaway_redis("--maxmemory", "1mb", "--maxmemory-policy", policy) \
            as url, LoopbackLlm() as llm:
        outcomes = run_triage(url, str(source), llm)
        used = redis.Redis.from_url(url).info("memory")["used_memory"]
    assert len(outcomes) == 300
    assert used < 2 * 1024 * 1024
