from __future__ import annotations

from dagster import in_process_executor, job

from agent_pipeline.ops import (
    AGENT_TAG,
    MAX_TAG_CHARS,
    apply_retention_policy,
    rank_top_five,
    record_run,
    run_agent,
    send_email,
)
from agent_pipeline.partitions import window_partitions
from agent_pipeline.settings import configured_agent, window_history_days


@job(
    description=(
        "Runs the agent for one 10-minute window (a partition, in UTC), records the run in "
        "agent_runs, ranks what the agent found and emails the top five. Launch it for a "
        "partition from the Launchpad; each run's top five is in the top_five metadata of "
        "rank_top_five."
    ),
    partitions_def=window_partitions(window_history_days()),
    # Every run carries the configured agent from its start, without a tag write of its own;
    # record_run corrects it for a run whose agent resource was set otherwise.
    tags={AGENT_TAG: configured_agent()[:MAX_TAG_CHARS]},
    # The ops form a chain: separate processes would buy no parallelism and cost about
    # two seconds of interpreter start per op.
    executor_def=in_process_executor,
)
def agent_job() -> None:
    send_email(rank_top_five(run_agent(record_run())))


@job(
    description=(
        "Keeps growth bounded: deletes old Dagster runs (with their event logs, compute logs "
        "and op outputs) and old agent_runs and agent_alerts rows, and compacts old results. "
        "Runs daily on retention_job_schedule; what it removed is in its op's metadata."
    ),
    executor_def=in_process_executor,
)
def retention_job() -> None:
    apply_retention_policy()
