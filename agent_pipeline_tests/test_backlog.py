"""The triage agent's backlog and the LLM's budgets, against the loopback OpenAI-compatible
server, real Redis and real Postgres: what a run cannot score (a limit reached, the API down,
a kill -9) waits in a Redis stream for the next run, which scores it first and pays for no item
twice; LLM_MAX_CALLS_PER_RUN and LLM_DAILY_BUDGET stop the calls, never the run."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg2
import pytest
import redis

from agent_pipeline.agents import AgentCache, AgentContext, AgentSettings
from agent_pipeline.agents.budget import BudgetReached, CallBudget
from agent_pipeline.agents.llm import LlmScorer, LlmSettings, Prices
from agent_pipeline.agents.triage import BACKLOG, ScoringFailed, triage_agent
from agent_pipeline.alerts import send_pending_alerts
from agent_pipeline.caching import stream_key
from agent_pipeline.resources.agent_runs import AgentRunsStore
from agent_pipeline.resources.redis import RedisStore
from agent_pipeline.settings import resources_from_env
from agent_pipeline_tests.helpers import rows, run_window, window_keys
from agent_pipeline_tests.llm_server import LoopbackLlm, Reply
from agent_pipeline_tests.services import free_port, throwaway_redis

REPO = Path(__file__).resolve().parent.parent
WINDOW = "2026-11-26-09:30"
ITEMS = 40
# The loopback LLM reports 50 prompt and 10 completion tokens a call: at these prices per
# million tokens, a call costs 0.00007.
PRICE_INPUT, PRICE_OUTPUT = 1.0, 2.0
CALL_COST = (50 * PRICE_INPUT + 10 * PRICE_OUTPUT) / 1e6


def write_items(folder: Path, count: int = ITEMS) -> str:
    path = folder / "items.json"
    path.write_text(json.dumps([{"title": f"Item {n:03d}", "id": str(n)} for n in range(count)]))
    return str(path)


def settings(source: str, llm: LoopbackLlm, **llm_settings) -> AgentSettings:
    return AgentSettings(
        interests="dagster", sources=source, scorer="llm",
        llm=LlmSettings(base_url=llm.base_url, api_key="sk-test", model="m",
                        **{"concurrency": 4, **llm_settings}),
    )


def run_triage(redis_url: str, source: str, llm: LoopbackLlm, **llm_settings) -> list[dict]:
    """The triage agent's run over source, as run_agent runs it; its stats as `.stats`."""
    queue = RedisStore(url=redis_url)
    queue.open()
    context = AgentContext(
        partition_key=WINDOW,
        window_start=datetime(2026, 11, 26, 9, 30, tzinfo=UTC),
        window_end=datetime(2026, 11, 26, 9, 40, tzinfo=UTC),
        cache=AgentCache(queue, 3600), log=logging.getLogger("test"),
        settings=settings(source, llm, **llm_settings), queue=queue,
    )
    try:
        outcomes = Outcomes(triage_agent(context))
        outcomes.stats = context.stats
        return outcomes
    finally:
        queue.close()


class Outcomes(list):
    stats: dict


def backlog_length(redis_url: str) -> int:
    return redis.Redis.from_url(redis_url).xlen(stream_key(BACKLOG))


# -- the backlog, through the agent -----------------------------------------------------------


def test_what_a_call_limit_leaves_is_scored_by_the_next_runs_oldest_first(redis_url, tmp_path):
    source = write_items(tmp_path, 10)
    one_at_a_time = {"max_calls_per_run": 4, "concurrency": 1}
    with LoopbackLlm() as llm:
        first = run_triage(redis_url, source, llm, **one_at_a_time)
        assert len(llm.requests) == 4 and len(first) == 4
        assert first.stats["llm_stopped"] == "LLM_MAX_CALLS_PER_RUN (4) reached"
        assert first.stats["llm_unscored_over_budget"] == 6
        assert first.stats["backlog_length"] == 6 and backlog_length(redis_url) == 6
        assert 0 <= first.stats["backlog_oldest_age_hours"] < 0.01
        second = run_triage(redis_url, source, llm, **one_at_a_time)
    # The backlog goes first, in the order its items were added: the first run's.
    assert list(llm.calls_per_title) == [f"Item {n:03d}" for n in range(8)]
    assert len(second) == 8 and second.stats["backlog_length"] == 2


def test_an_item_the_backlog_holds_is_not_fetched_into_it_twice(redis_url, tmp_path):
    source = write_items(tmp_path, 6)
    with LoopbackLlm() as llm:
        for _ in range(3):
            run_triage(redis_url, source, llm, max_calls_per_run=1)
        assert backlog_length(redis_url) == 3
        assert run_triage(redis_url, source, llm, max_calls_per_run=0).stats["backlog_added"] == 0
    assert sorted(llm.calls_per_title.values()) == [1] * 6
    assert backlog_length(redis_url) == 0


def test_a_backlog_item_the_feed_no_longer_lists_is_still_scored_and_reported(
    redis_url, tmp_path
):
    with LoopbackLlm() as llm:
        run_triage(redis_url, write_items(tmp_path, 3), llm, max_calls_per_run=1)
        (tmp_path / "items.json").write_text("[]")  # the feed moved on
        later = run_triage(redis_url, str(tmp_path / "items.json"), llm)
    assert sorted(o["title"] for o in later) == ["Item 001", "Item 002"]
    assert sorted(llm.calls_per_title.values()) == [1] * 3


def test_a_backlog_item_older_than_the_limit_is_dropped_and_counted(redis_url, tmp_path):
    source = write_items(tmp_path, 2)
    client = redis.Redis.from_url(redis_url)
    with LoopbackLlm() as llm:
        run_triage(redis_url, source, llm, max_calls_per_run=1)
        (_entry_id, fields), = client.xrange(stream_key(BACKLOG))
        # The entry as if added 25 hours ago: same member and item, an ID of that time (a
        # stream takes no ID older than its newest, so it starts again; the next run makes
        # its consumer group again).
        client.delete(stream_key(BACKLOG))
        old_ms = int(time.time() * 1000) - 25 * 3600 * 1000
        client.xadd(stream_key(BACKLOG), fields, id=f"{old_ms}-0")
        client.zadd(stream_key(BACKLOG) + ":members", {fields[b"member"]: old_ms})
        (tmp_path / "items.json").write_text("[]")
        later = run_triage(redis_url, source, llm)
    assert later.stats["backlog_expired"] == 1
    assert later == [] and len(llm.requests) == 1


def test_an_exception_half_way_costs_its_item_and_the_next_run_scores_each_item_once(
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
        assert backlog_length(redis_url) == 1  # claimed, never done

        monkeypatch.setattr(LlmScorer, "score", real_score)
        outcomes = run_triage(redis_url, source, llm)
    assert len(outcomes) == ITEMS
    assert sorted(llm.calls_per_title.values()) == [1] * ITEMS  # each item scored once
    assert backlog_length(redis_url) == 0


RUN_TRIAGE = """
import sys
from agent_pipeline_tests.test_backlog import run_triage
class Remote:  # the LLM runs in the test process; only its URL travels
    base_url = sys.argv[3]
run_triage(sys.argv[1], sys.argv[2], Remote())
"""


@pytest.mark.slow
def test_a_run_killed_while_scoring_leaves_its_claimed_items_to_the_next(redis_url, tmp_path):
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
        assert len(llm.requests) < ITEMS and backlog_length(redis_url) > 0

        outcomes = run_triage(redis_url, source, llm)
    assert len(outcomes) == ITEMS
    assert set(llm.calls_per_title) == {f"Item {n:03d}" for n in range(ITEMS)}
    # Only the calls in flight at the kill (at most LLM_CONCURRENCY) were paid twice.
    assert ITEMS <= len(llm.requests) <= ITEMS + 4
    assert backlog_length(redis_url) == 0


def test_a_refused_key_fails_the_run_and_a_run_after_the_fix_scores_everything(
    redis_url, tmp_path
):
    source = write_items(tmp_path)
    key_works = False

    def script(request, call):
        return Reply() if key_works else Reply(status=401)

    with LoopbackLlm(script) as llm:
        with pytest.raises(ScoringFailed, match="HTTP 401: the API refused LLM_API_KEY"):
            run_triage(redis_url, source, llm)
        assert backlog_length(redis_url) == ITEMS  # nothing done: all left for the next run
        key_works = True
        outcomes = run_triage(redis_url, source, llm)
    assert len(outcomes) == ITEMS and backlog_length(redis_url) == 0


def test_redis_failing_half_way_pays_for_no_item_twice(tmp_path):
    """Redis refuses writes (out of memory) part way: the agent finishes without it, and
    scores only what it had not scored yet. On a server of its own: a cap on the shared one
    would fail other tests' writes too."""
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
    assert outcomes.stats["backlog"].startswith("none: Redis unavailable (OutOfMemoryError")


def test_without_redis_there_is_no_backlog_and_the_run_says_so(tmp_path, caplog):
    source = write_items(tmp_path, 10)
    with LoopbackLlm() as llm:
        outcomes = run_triage(f"redis://127.0.0.1:{free_port()}/0", source, llm,
                              max_calls_per_run=4)
    assert len(outcomes) == 4 and len(llm.requests) == 4
    assert outcomes.stats["backlog"].startswith("none: Redis unavailable (ConnectionError")
    assert outcomes.stats["llm_unscored_over_budget"] == 6
    assert any(r.getMessage().startswith("No backlog (Redis unavailable") for r in caplog.records)


@pytest.mark.parametrize("policy", ["allkeys-lru", "noeviction"])
def test_a_full_redis_costs_the_cache_never_the_run(tmp_path, policy):
    """Redis at its memory cap: under LRU it evicts (the backlog too, part way); under
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


def test_after_a_run_every_redis_key_expires(redis_url, tmp_path):
    with LoopbackLlm() as llm:
        assert len(run_triage(redis_url, write_items(tmp_path), llm, max_calls_per_run=30)) == 30
    client = redis.Redis.from_url(redis_url)
    keys = list(client.scan_iter())
    assert stream_key(BACKLOG).encode() in keys
    assert keys and all(client.ttl(key) > 0 for key in keys)


# -- the call budget ---------------------------------------------------------------------------


def test_the_daily_budget_is_per_utc_day_and_shared_by_runs(pg_store):
    clock = [datetime(2026, 12, 4, 23, 59, tzinfo=UTC)]
    prices = Prices(PRICE_INPUT, PRICE_OUTPUT)

    def budget() -> CallBudget:
        return CallBudget(0, 3 * CALL_COST, prices, pg_store, clock=lambda: clock[0])

    first, second = budget(), budget()  # two runs at once
    for _ in range(2):
        first.acquire()
        first.settle(50, 10)
    second.acquire()
    second.settle(50, 10)
    with pytest.raises(BudgetReached, match=r"LLM_DAILY_BUDGET \(0.00021\) reached"):
        first.acquire()
    assert first.daily_budget_reached and pg_store.llm_spend_on(date(2026, 12, 4))[0] == 3
    clock[0] += timedelta(minutes=1)  # 00:00 UTC: a new day, a new budget
    fresh = budget()
    fresh.acquire()
    fresh.settle(50, 10)
    assert pg_store.llm_spend_on(date(2026, 12, 5)) == (1, pytest.approx(CALL_COST))


def test_a_request_that_is_not_answered_costs_a_call_but_no_spend(pg_store):
    budget = CallBudget(2, None, Prices(PRICE_INPUT, PRICE_OUTPUT), pg_store)
    budget.acquire()
    budget.release()  # a timeout: nothing to pay
    budget.acquire()
    budget.settle(50, 10)
    with pytest.raises(BudgetReached, match=r"LLM_MAX_CALLS_PER_RUN \(2\) reached"):
        budget.acquire()
    assert budget.spent_today() == (0, 0.0)  # without a daily budget: counted at the end
    budget.flush()
    assert budget.spent_today() == (1, pytest.approx(CALL_COST))


def test_concurrent_calls_stop_at_the_budget_not_past_it(pg_store, redis_url, tmp_path):
    source = write_items(tmp_path)
    with LoopbackLlm(lambda request, call: Reply(delay=0.05)) as llm:
        queue = RedisStore(url=redis_url)
        queue.open()
        context = AgentContext(
            partition_key=WINDOW, window_start=datetime(2026, 11, 26, 9, 30, tzinfo=UTC),
            window_end=datetime(2026, 11, 26, 9, 40, tzinfo=UTC),
            cache=AgentCache(queue, 3600), log=logging.getLogger("test"),
            settings=AgentSettings(
                interests="dagster", sources=source, scorer="llm",
                llm=LlmSettings(base_url=llm.base_url, api_key="sk-test", model="m",
                                concurrency=8, prices=Prices(PRICE_INPUT, PRICE_OUTPUT),
                                daily_budget=12.5 * CALL_COST),
            ),
            queue=queue, spend=pg_store,
        )
        outcomes = list(triage_agent(context))
        queue.close()
    assert len(llm.requests) == 12 and len(outcomes) == 12
    assert llm.max_in_flight > 1  # the calls did run side by side
    assert context.stats["llm_spend_today"] == pytest.approx(12 * CALL_COST)


# -- through agent_job, as the schedule runs it ----------------------------------------------


@pytest.fixture
def triage_env(production_env, tmp_path):
    production_env.setenv("AGENT", "triage")
    production_env.setenv("AGENT_SCORER", "llm")
    production_env.setenv("AGENT_SOURCES", write_items(tmp_path, 200))
    production_env.setenv("LLM_API_KEY", "sk-test")
    production_env.setenv("LLM_PRICE_INPUT", str(PRICE_INPUT))
    production_env.setenv("LLM_PRICE_OUTPUT", str(PRICE_OUTPUT))
    return production_env


def agent_stats(row: dict) -> dict:
    return row["result"]["agent_stats"]


@pytest.mark.slow
def test_two_hundred_items_fifty_calls_a_run_are_all_scored_in_four_windows(
    triage_env, postgres_url
):
    triage_env.setenv("LLM_MAX_CALLS_PER_RUN", "50")
    with LoopbackLlm() as llm:
        triage_env.setenv("LLM_BASE_URL", llm.base_url)
        calls = []
        for window in window_keys(5):
            before = len(llm.requests)
            assert run_window(window).success
            calls.append(len(llm.requests) - before)
    assert calls == [50, 50, 50, 50, 0]
    assert Counter(llm.calls_per_title.values()) == {1: 200}  # each of the 200 once
    found = rows(postgres_url)
    assert [agent_stats(r)["backlog_length"] for r in found] == [150, 100, 50, 0, 0]
    assert [agent_stats(r)["cache_hits"] for r in found] == [0, 50, 100, 150, 200]
    assert agent_stats(found[0])["llm_stopped"] == "LLM_MAX_CALLS_PER_RUN (50) reached"
    assert "llm_stopped" not in agent_stats(found[4])
    assert all(r["status"] == "succeeded" for r in found)


@pytest.mark.slow
def test_a_daily_budget_worth_thirty_calls(triage_env, postgres_url, smtp_server):
    triage_env.setenv("LLM_DAILY_BUDGET", repr(30 * CALL_COST))
    triage_env.setenv("ALERT_EMAIL_TO", "ops@example.com")
    first, second, third = window_keys(3)
    with LoopbackLlm() as llm:
        triage_env.setenv("LLM_BASE_URL", llm.base_url)
        run = run_window(first)
        assert run.success and len(llm.requests) == 30
        assert run_window(second).success and len(llm.requests) == 30  # the same day: none
        # The day's spend as if it had been yesterday's: today starts afresh.
        with psycopg2.connect(postgres_url) as connection, connection.cursor() as cursor:
            cursor.execute("UPDATE llm_spend SET day = day - 1")
        connection.close()
        assert run_window(third).success and len(llm.requests) == 60
    found = rows(postgres_url)
    stats = [agent_stats(r) for r in found]
    assert [s["llm_calls"] for s in stats] == [30, 0, 30]
    assert stats[0]["llm_spend_today"] == pytest.approx(30 * CALL_COST)
    assert stats[0]["llm_daily_budget"] == pytest.approx(30 * CALL_COST)
    assert stats[1]["llm_stopped"].startswith("LLM_DAILY_BUDGET (0.0021) reached: 0.0021 spent")
    assert all(r["status"] == "succeeded" for r in found)
    metadata = {e.step_key: e.step_output_data.metadata
                for e in run.all_events if e.is_successful_output}["run_agent"]
    assert metadata["agent_cost"].value == pytest.approx(30 * CALL_COST)
    assert metadata["agent_backlog_length"].value == 170
    # The digest says what it cost.
    digest = smtp_server.received[0].message
    assert "This digest cost 0.0021 (30 LLM calls, 1,800 tokens)." in digest.get_body(
        ("plain",)).get_content()
    # One alert for the day, however many runs found the budget spent.
    resources = resources_from_env(os.environ)
    store = AgentRunsStore(database_url=postgres_url)  # the resource's is an EnvVar
    store.open()
    try:
        sent = send_pending_alerts(store, resources["smtp"], resources["digest"],
                                   logging.getLogger("test"))
    finally:
        store.close()
    today = datetime.now(UTC).date().isoformat()
    assert sent == [f"budget:{today}"]
    alert = smtp_server.received[-1].message
    assert alert["Subject"] == f"agent_pipeline: LLM daily budget reached on {today} (UTC)"
    assert alert["To"] == "ops@example.com"


def test_redis_down_leaves_the_run_succeeding_without_a_backlog(triage_env, postgres_url):
    triage_env.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    triage_env.setenv("LLM_MAX_CALLS_PER_RUN", "50")
    with LoopbackLlm() as llm:
        triage_env.setenv("LLM_BASE_URL", llm.base_url)
        run = run_window(window_keys(1)[0])
    assert run.success and len(llm.requests) == 50
    (row,) = rows(postgres_url)
    assert row["status"] == "succeeded"
    assert agent_stats(row)["backlog"].startswith("none: Redis unavailable")
    assert any("No backlog (Redis unavailable" in line for line in run.logs)
