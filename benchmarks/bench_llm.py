"""The triage agent's scoring of 1,000 items with an LLM answering in 100 ms and
LLM_CONCURRENCY=16: wall time against the ideal (1000 x 0.1 s / 16 = 6.25 s), then a second
run over the same items, all from the Redis cache.

    .venv/bin/python benchmarks/bench_llm.py [--items 1000] [--concurrency 16] [--latency 0.1]

The run as run_agent makes it: the Redis cache and backlog (BENCH_REDIS_URL, default
redis://127.0.0.1:6379/14, flushed) and the LLM's spend counted call by call in a scratch
Postgres database (BENCH_POSTGRES_URL); the LLM is a loopback server speaking the
chat-completions protocol, in a process of its own, as a real LLM is on another machine (in
this process its threads would compete with the agent's for the interpreter).
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

# The loopback LLM lives with the tests; make it importable when run as a script.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis  # noqa: E402

from agent_pipeline.agents import AgentCache, AgentContext, AgentSettings  # noqa: E402
from agent_pipeline.agents.llm import LlmSettings, Prices  # noqa: E402
from agent_pipeline.agents.triage import triage_agent  # noqa: E402
from agent_pipeline.resources.agent_runs import AgentRunsStore  # noqa: E402
from agent_pipeline.resources.redis import RedisStore  # noqa: E402
from agent_pipeline_tests.llm_server import LoopbackLlm, Reply  # noqa: E402
from benchmarks.scratch import REDIS_URL, scratch_database  # noqa: E402


def serve_llm(latency: float, pipe) -> None:
    """In the LLM's own process: serve until told to stop, then report what it saw."""
    with LoopbackLlm(lambda request, call: Reply(delay=latency)) as llm:
        pipe.send(llm.base_url)
        pipe.recv()  # stop
        pipe.send({"calls": len(llm.requests), "max_in_flight": llm.max_in_flight})


class LlmProcess:
    """The loopback LLM in a child process; calls() asks it how many requests it answered."""

    def __init__(self, latency: float):
        self._pipe, child_end = multiprocessing.Pipe()
        self._process = multiprocessing.Process(target=serve_llm, args=(latency, child_end))

    def __enter__(self) -> LlmProcess:
        self._process.start()
        self.base_url = self._pipe.recv()
        return self

    def stop(self) -> dict:
        self._pipe.send("stop")
        seen = self._pipe.recv()
        self._process.join(timeout=30)
        return seen

    def __exit__(self, *exc_info: object) -> None:
        if self._process.is_alive():
            self._process.kill()


def run(
    source: str, cache: RedisStore, ledger: AgentRunsStore, llm: LlmProcess, concurrency: int
) -> tuple[float, dict]:
    """The triage agent's run as run_agent makes it: the Redis cache and backlog, and the
    spend counted in Postgres call by call."""
    context = AgentContext(
        partition_key="2026-11-26-09:30",
        window_start=datetime(2026, 11, 26, 9, 30, tzinfo=UTC),
        window_end=datetime(2026, 11, 26, 9, 40, tzinfo=UTC),
        cache=AgentCache(cache, 3600),
        log=logging.getLogger("bench"),
        settings=AgentSettings(
            interests="dagster, postgres", sources=source, scorer="llm",
            llm=LlmSettings(base_url=llm.base_url, api_key="sk-bench", model="bench",
                            concurrency=concurrency, prices=Prices(0.15, 0.60)),
        ),
        queue=cache,
        spend=ledger,
    )
    started = time.perf_counter()
    outcomes = list(triage_agent(context))
    elapsed = time.perf_counter() - started
    assert len(outcomes) == context.stats["items"], "some items were not scored"
    return elapsed, context.stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--latency", type=float, default=0.1, help="seconds per LLM answer")
    args = parser.parse_args()
    redis.Redis.from_url(REDIS_URL).flushdb()
    cache = RedisStore(url=REDIS_URL)
    cache.open()
    with tempfile.TemporaryDirectory() as folder, scratch_database() as database_url:
        ledger = AgentRunsStore(database_url=database_url)
        ledger.open()
        source = str(Path(folder) / "items.json")
        Path(source).write_text(json.dumps(
            [{"title": f"Item {n}", "summary": f"Summary {n}", "id": str(n)}
             for n in range(args.items)]
        ))
        with LlmProcess(args.latency) as llm:
            first, stats = run(source, cache, ledger, llm, args.concurrency)
            second, cached = run(source, cache, ledger, llm, args.concurrency)
            seen = llm.stop()
        assert seen["calls"] == stats["llm_calls"] == args.items, (seen, stats["llm_calls"])
        assert cached["llm_calls"] == 0
        ledger.close()
    ideal = args.items * args.latency / args.concurrency
    print(f"{args.items} items, LLM latency {args.latency * 1000:.0f} ms, "
          f"concurrency {args.concurrency}; max in flight {seen['max_in_flight']}")
    print(f"first run   {first:6.2f} s  ({stats['llm_calls']} LLM calls; ideal {ideal:.2f} s, "
          f"{first / ideal:.2f}x; goal at most 1.25x)")
    print(f"cached run  {second:6.2f} s  ({cached['llm_calls']} LLM calls, "
          f"{cached['cache_hits']} cache hits; goal under 1 s with no LLM call)")
    cache.close()


if __name__ == "__main__":
    main()
