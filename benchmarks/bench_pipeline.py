"""How much Dagster costs per run: N runs of agent_job in process against N runs of the same
steps as a plain Python script, on the same Postgres, Redis and SMTP server.

    .venv/bin/python benchmarks/bench_pipeline.py [--runs 30]

Postgres and Redis as benchmarks/scratch.py says (BENCH_POSTGRES_URL, BENCH_REDIS_URL; the
Redis database is flushed); the SMTP server is aiosmtpd on loopback.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path

# The SMTP catcher lives with the tests; make it importable when run as a script.
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import yaml  # noqa: E402
from aiosmtpd.controller import Controller  # noqa: E402
from dagster import DagsterInstance  # noqa: E402

from agent_pipeline.agents import AgentCache, AgentContext  # noqa: E402
from agent_pipeline.delivery import (  # noqa: E402
    deliver_window_email,
    redeliver_failed,
    window_email,
)
from agent_pipeline.jobs import agent_job  # noqa: E402
from agent_pipeline.ops import MAX_STATS_JSON_CHARS  # noqa: E402
from agent_pipeline.partitions import window_bounds  # noqa: E402
from agent_pipeline.ranking import (  # noqa: E402
    build_result,
    iterate_outcomes,
    rank_outcomes,
    storable_stats,
    validate_outcomes,
)
from agent_pipeline.resources import AgentRunsStore, RedisStore  # noqa: E402
from agent_pipeline.settings import resources_from_env  # noqa: E402
from agent_pipeline_tests.helpers import SmtpCatcher  # noqa: E402
from agent_pipeline_tests.services import free_port  # noqa: E402
from agent_pipeline_tests.topology import (  # noqa: E402
    instance_from_config,
    production_storage,
)
from benchmarks.scratch import REDIS_URL, scratch_database  # noqa: E402


def plain_run(window: str, resources: dict) -> None:
    """The same steps as agent_job, as a script would write them: the functions the ops
    call, the same email, without Dagster (and without the ops' lookups of the row by the
    Dagster run's id, which a script holding the row's id does not need)."""
    store, redis, smtp = resources["agent_runs"], resources["redis"], resources["smtp"]
    digest, agent = resources["digest"], resources["agent"]
    log = logging.getLogger("bench")
    store.open()
    redis.open()
    try:
        row_id = store.get_or_create_row(f"plain-{uuid.uuid4()}", window, agent.agent)
        start, end = window_bounds(window)
        context = AgentContext(
            window, start, end, AgentCache(redis, agent.cache_ttl_seconds), log,
            agent.settings(), queue=redis, spend=store,
        )
        validation = validate_outcomes(iterate_outcomes(agent.load()(context)))
        ranking = rank_outcomes(validation.outcomes, min_score=agent.digest_min_score())
        stats = storable_stats(context.stats, MAX_STATS_JSON_CHARS)
        result = build_result(validation, ranking, stats)
        store.store_result(row_id, result)
        message = window_email(digest, window, ranking.top, None, result)
        deliver_window_email(store, smtp, row_id, message)
        redeliver_failed(store, smtp, digest, log)
        store.succeed_run(row_id)
    finally:
        redis.close()
        store.close()


def dagster_run(window: str, resources: dict, instance: DagsterInstance) -> None:
    result = agent_job.execute_in_process(
        partition_key=window, resources=resources, instance=instance
    )
    assert result.success


def instance_in(home: str, storage: str, database_url: str = "") -> DagsterInstance:
    """A Dagster instance in home: `sqlite` as the local dagster.yaml has it (SQLite storage,
    the compute log manager it names), `dagster` with Dagster's own Postgres storages and
    compute log manager, `production` with the storages and the compute log manager that
    deploy/dagster.yaml names."""
    compute_logs = {**yaml.safe_load((REPO / "dagster.yaml").read_text())["compute_logs"],
                    "config": {"base_dir": str(Path(home, "compute_logs"))}}
    if storage == "sqlite":
        config = {"storage": {"sqlite": {"base_dir": home}}, "compute_logs": compute_logs}
    elif storage == "dagster":
        config = {"storage": {"postgres": {"postgres_url": database_url}}}
    else:
        config = {**production_storage(database_url), "compute_logs": compute_logs}
    return instance_from_config(home, config)


Runs = dict[str, tuple[list[str], Callable[[str], None]]]  # label: (its windows, a run of one)


def timed_in_turn(runs: Runs) -> dict[str, list[float]]:
    """Each kind's durations over its windows, the kinds taking turns run by run: this
    machine's speed drifts by a fifth within minutes, and taking turns spreads the drift over
    every kind alike instead of loading it on whichever ran last. The first runs of each kind
    are warm-up; the caller drops them."""
    durations: dict[str, list[float]] = {label: [] for label in runs}
    for turn in range(len(next(iter(runs.values()))[0])):
        for label, (windows, run) in runs.items():
            started = time.perf_counter()
            run(windows[turn])
            durations[label].append(time.perf_counter() - started)
    return durations


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30, help="runs of each kind (default 30)")
    args = parser.parse_args()

    with scratch_database() as database_url:
        handler = SmtpCatcher("127.0.0.1", free_port())
        smtp_port = handler.port
        smtp_server = Controller(handler, hostname="127.0.0.1", port=smtp_port)
        smtp_server.start()
        try:
            os.environ.update(
                DATABASE_URL=database_url,
                REDIS_URL=REDIS_URL,
                SMTP_HOST="127.0.0.1",
                SMTP_PORT=str(smtp_port),
                SMTP_SECURITY="none",
                EMAIL_FROM="bench@example.com",
                EMAIL_TO="reader@example.com",
                EMAIL_ONLY_NEW="false",  # every run sends its email, the same work each time
            )
            import redis

            redis.Redis.from_url(REDIS_URL).flushdb()
            resources = resources_from_env(os.environ)
            # Disjoint sets of windows, so that every run of every kind sends its email.
            keys = agent_job.partitions_def.get_partition_keys()
            warmup = 2
            per_kind = args.runs + warmup
            windows = [keys[-(n + 1) * per_kind:len(keys) - n * per_kind] for n in range(5)]

            # The script reads its URLs itself; Dagster resolves the EnvVars in `resources`.
            plain_resources = {
                **resources,
                "agent_runs": AgentRunsStore(database_url=os.environ["DATABASE_URL"]),
                "redis": RedisStore(url=REDIS_URL),
            }
            runs: Runs = {"plain script": (windows[0], lambda w: plain_run(w, plain_resources))}
            instances = {
                "agent_job, in-memory instance": lambda home: DagsterInstance.ephemeral(),
                "agent_job, SQLite instance (make dev)": lambda home: instance_in(home, "sqlite"),
                "agent_job, Postgres, all Dagster's own": lambda home: instance_in(
                    home, "dagster", os.environ["DATABASE_URL"]
                ),
                "agent_job, Postgres instance (production)": lambda home: instance_in(
                    home, "production", os.environ["DATABASE_URL"]
                ),
            }
            with ExitStack() as stack:
                for n, (label, make_instance) in enumerate(instances.items(), start=1):
                    home = stack.enter_context(tempfile.TemporaryDirectory())
                    instance = stack.enter_context(make_instance(home))
                    runs[label] = (
                        windows[n], lambda w, i=instance: dagster_run(w, resources, i)
                    )
                timings = timed_in_turn(runs)
            assert len(handler.received) == 5 * per_kind, len(handler.received)
        finally:
            smtp_server.stop()

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}")
    print(f"runs of each kind: {args.runs} (after {warmup} warm-up runs, not counted)")
    plain_median = statistics.median(timings["plain script"][warmup:])
    for label, durations in timings.items():
        median = statistics.median(durations[warmup:])
        print(f"{label:44} median {median * 1000:7.1f} ms  {median / plain_median:5.1f}x")
    print("goal: agent_job at most 3x the plain script")


if __name__ == "__main__":
    main()
