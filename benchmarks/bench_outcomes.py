"""What 100,000 outcomes from one agent cost: time and peak memory, each measure in a fresh
process. The outcomes carry what a careless or hostile agent sends: ten JSON fields of about
8 KB each, a 2 KB summary and a 2 KB URL (agent_pipeline_tests.sample_agents:many_with_extras).

    .venv/bin/python benchmarks/bench_outcomes.py [--repeat 3]

Measures:
- validate, rank, store: validate_outcomes, rank_outcomes and build_result over the agent's
  output, and the row written to agent_runs in Postgres;
- whole run: agent_job through execute_in_process (in-memory instance; Postgres, Redis and an
  aiosmtpd server on loopback), from the job's start to the email sent.
Postgres and Redis as benchmarks/scratch.py says (BENCH_POSTGRES_URL, BENCH_REDIS_URL).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the sample agents live with the tests
AGENT = "agent_pipeline_tests.sample_agents:many_with_extras"
GOAL = "goal: under 3 s and under 400 MB peak for each"


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def measure_validate_rank_store(database_url: str) -> dict:
    import logging
    from datetime import UTC, datetime

    from agent_pipeline.agents import AgentCache, AgentContext
    from agent_pipeline.ranking import (
        build_result,
        iterate_outcomes,
        rank_outcomes,
        validate_outcomes,
    )
    from agent_pipeline.resources import AgentRunsStore
    from agent_pipeline_tests.sample_agents import many_with_extras

    store = AgentRunsStore(database_url=database_url)
    store.open()
    row_id = store.get_or_create_row(f"bench-{uuid.uuid4()}", "2026-11-29-10:00", AGENT)
    now = datetime.now(UTC)
    context = AgentContext("2026-11-29-10:00", now, now, AgentCache(None, 60),
                           logging.getLogger("bench"))
    started = time.perf_counter()
    validation = validate_outcomes(iterate_outcomes(many_with_extras(context)))
    ranking = rank_outcomes(validation.outcomes)
    result = build_result(validation, ranking)
    store.complete_run(row_id, result)
    seconds = time.perf_counter() - started
    store.close()
    return {"seconds": seconds, "peak_mb": peak_mb(),
            "row_chars": len(json.dumps(result)), "outcomes": validation.valid_total}


def measure_whole_run(env: dict, offset: int) -> dict:
    from aiosmtpd.controller import Controller
    from dagster import DagsterInstance

    from agent_pipeline.jobs import agent_job
    from agent_pipeline.settings import resources_from_env
    from agent_pipeline_tests.helpers import SmtpCatcher
    from agent_pipeline_tests.services import free_port

    handler = SmtpCatcher("127.0.0.1", free_port())
    server = Controller(handler, hostname="127.0.0.1", port=handler.port)
    server.start()
    try:
        os.environ.update(env, SMTP_PORT=str(handler.port))
        resources = resources_from_env(os.environ)
        # A window of its own for each run: a window that was sent is not sent again.
        window = agent_job.partitions_def.get_partition_keys()[-1 - offset]
        with DagsterInstance.ephemeral() as instance:
            started = time.perf_counter()
            result = agent_job.execute_in_process(
                partition_key=window, resources=resources, instance=instance
            )
            seconds = time.perf_counter() - started
        assert result.success and len(handler.received) == 1
    finally:
        server.stop()
    return {"seconds": seconds, "peak_mb": peak_mb()}


def child(measure: str, env: dict, offset: int) -> dict:
    """One measure in a fresh interpreter, so that its peak memory is its own."""
    answer = subprocess.run(
        [sys.executable, __file__, "--child", measure, "--env", json.dumps(env),
         "--offset", str(offset)],
        capture_output=True, text=True, cwd=ROOT,
    )
    if answer.returncode:
        sys.exit(f"{measure} failed:\n{answer.stderr[-3000:]}")
    return json.loads(answer.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="runs of each measure")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--env", help=argparse.SUPPRESS)
    parser.add_argument("--offset", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        env = json.loads(args.env)
        if args.child == "store":
            print(json.dumps(measure_validate_rank_store(env["DATABASE_URL"])))
        else:
            print(json.dumps(measure_whole_run(env, args.offset)))
        return

    import redis

    from benchmarks.scratch import REDIS_URL, scratch_database

    with scratch_database() as database_url:
        env = {
            "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "SMTP_HOST": "127.0.0.1",
            "SMTP_SECURITY": "none", "EMAIL_FROM": "bench@example.com",
            "EMAIL_TO": "reader@example.com", "EMAIL_ONLY_NEW": "false", "AGENT": AGENT,
        }
        results: dict[str, list[dict]] = {"validate, rank, store": [], "whole run": []}
        for offset in range(args.repeat):
            redis.Redis.from_url(REDIS_URL).flushdb()
            results["validate, rank, store"].append(child("store", env, offset))
            results["whole run"].append(child("run", env, offset))

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"100,000 outcomes with extra fields ({AGENT}), {args.repeat} runs each")
    for label, runs in results.items():
        seconds = statistics.median(run["seconds"] for run in runs)
        peak = max(run["peak_mb"] for run in runs)
        print(f"{label:24} median {seconds:6.2f} s   peak memory {peak:6.0f} MB")
    print(f"stored result row: {results['validate, rank, store'][0]['row_chars']:,} characters")
    print(GOAL)


if __name__ == "__main__":
    main()
