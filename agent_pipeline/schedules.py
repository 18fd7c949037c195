from __future__ import annotations

from dagster import (
    DagsterRunStatus,
    DefaultScheduleStatus,
    RunRequest,
    RunsFilter,
    ScheduleEvaluationContext,
    SkipReason,
    schedule,
)

from agent_pipeline.jobs import agent_job
from agent_pipeline.partitions import WINDOW_CRON, last_closed_window

IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]


# Written out rather than built with build_schedule_from_partitioned_job, which goes through
# a deprecated Dagster call on every tick; the behaviour is the same: each tick runs the
# job's last closed window.
@schedule(
    name="agent_job_schedule",
    job=agent_job,
    cron_schedule=WINDOW_CRON,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Runs agent_job every 10 minutes (UTC) for the window that just closed.",
)
def agent_job_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
    """The 10:40 tick runs the 10:30-10:40 window."""
    window, window_start = last_closed_window(context.scheduled_execution_time)
    if window_start < agent_job.partitions_def.start:
        return SkipReason("no window has closed yet")
    # The overlap policy: a tick that finds a run in progress (or waiting in the queue) skips
    # instead of piling up behind it; its window is left for a backfill.
    busy = context.instance.get_runs(
        filters=RunsFilter(job_name=agent_job.name, statuses=IN_PROGRESS), limit=1
    )
    if busy:
        return SkipReason(
            f"run {busy[0].run_id} of agent_job is still {busy[0].status.value.lower()}; "
            f"window {window} is left for a backfill"
        )
    # The run key makes a repeated tick for the same window a no-op.
    return RunRequest(run_key=window, partition_key=window)
