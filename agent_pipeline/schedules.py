"""How windows get runs. The schedule requests each window as it closes; the catch-up sensor
launches the recent windows that still have no run (the daemon was down across their ticks,
or a tick skipped under OVERLAP_POLICY=skip). Together: every closed window of the last
CATCH_UP_HOURS since the schedule first ran gets a run.

One run at a time (the instance's run queue), and Dagster's queue takes higher priorities
first: a scheduled run goes ahead of catch-up runs, and both ahead of backfills and launches
from the UI (priority 0), so a day's backfill does not delay the live window."""

from __future__ import annotations

from datetime import datetime, timedelta

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    DefaultScheduleStatus,
    DefaultSensorStatus,
    RunRequest,
    RunsFilter,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    schedule,
    sensor,
)
from dagster._core.scheduler.instigation import InstigatorType
from dagster._time import get_current_datetime

from agent_pipeline.jobs import agent_job, retention_job
from agent_pipeline.partitions import (
    WINDOW_CRON,
    WINDOW_LENGTH,
    closed_windows,
    last_closed_window,
    window_bounds,
)
from agent_pipeline.resources import AgentResource, AgentRunsStore

SCHEDULE_NAME = "agent_job_schedule"
PARTITION_TAG = "dagster/partition"
SCHEDULE_NAME_TAG = "dagster/schedule_name"
# Dagster's run queue dequeues higher priorities first, oldest first within one.
PRIORITY_TAG = "dagster/priority"
SCHEDULED_PRIORITY = 2
CATCH_UP_PRIORITY = 1
# Marks the runs the catch-up sensor launched, for the UI's run filters.
CATCH_UP_TAG = "agent_pipeline/catch_up"
# A window is left to its own tick for this long after it closes: the scheduler launches the
# latest missed tick itself when the daemon comes back.
CATCH_UP_GRACE = WINDOW_LENGTH

IN_PROGRESS = [
    DagsterRunStatus.QUEUED,
    DagsterRunStatus.NOT_STARTED,
    DagsterRunStatus.STARTING,
    DagsterRunStatus.STARTED,
    DagsterRunStatus.CANCELING,
]

_SCHEDULE_ARGS = dict(
    name=SCHEDULE_NAME,
    job=agent_job,
    cron_schedule=WINDOW_CRON,
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
)


def _closed_window(context: ScheduleEvaluationContext) -> str | None:
    """The window this tick runs: the 10:40 tick runs 10:30-10:40. None before the first."""
    window, window_start = last_closed_window(context.scheduled_execution_time)
    return None if window_start < agent_job.partitions_def.start else window


def _request(window: str) -> RunRequest:
    # The run key makes a repeated tick for the same window a no-op.
    return RunRequest(
        run_key=window, partition_key=window, tags={PRIORITY_TAG: str(SCHEDULED_PRIORITY)}
    )


# Written out rather than built with build_schedule_from_partitioned_job, which goes through
# a deprecated Dagster call on every tick.
def build_agent_job_schedule(overlap_policy: str) -> ScheduleDefinition:
    """The schedule for OVERLAP_POLICY: buffer requests every window at its tick, skip records
    a window whose tick finds a run in progress as skipped, for the catch-up sensor."""
    if overlap_policy == "buffer":

        @schedule(
            **_SCHEDULE_ARGS,
            description=(
                "Runs agent_job every 10 minutes (UTC) for the window that just closed, "
                "whatever is running (OVERLAP_POLICY=buffer): the run waits in the queue, "
                "ahead of backfill runs."
            ),
        )
        def agent_job_schedule(context: ScheduleEvaluationContext) -> RunRequest | SkipReason:
            window = _closed_window(context)
            return _request(window) if window else SkipReason("no window has closed yet")

        return agent_job_schedule

    @schedule(
        **_SCHEDULE_ARGS,
        description=(
            "Runs agent_job every 10 minutes (UTC) for the window that just closed; while a run "
            "is in progress the tick skips (OVERLAP_POLICY=skip), records the window as skipped "
            "in agent_runs, and the catch-up sensor runs it later."
        ),
    )
    def agent_job_schedule_skipping(
        context: ScheduleEvaluationContext, agent_runs: AgentRunsStore, agent: AgentResource
    ) -> RunRequest | SkipReason:
        window = _closed_window(context)
        if not window:
            return SkipReason("no window has closed yet")
        busy = context.instance.get_runs(
            filters=RunsFilter(job_name=agent_job.name, statuses=IN_PROGRESS), limit=1
        )
        if not busy:
            return _request(window)
        reason = (
            f"run {busy[0].run_id} of agent_job was still {busy[0].status.value.lower()} at "
            "the tick (OVERLAP_POLICY=skip); the catch-up sensor runs this window later"
        )
        agent_runs.record_skipped_window(window, agent.agent, reason)
        return SkipReason(f"window {window} skipped: {reason}")

    return agent_job_schedule_skipping


def schedule_is_stopped(instance: DagsterInstance) -> bool:
    """Whether someone turned the schedule off in the UI: then no window is caught up."""
    states = [
        state
        for state in instance.all_instigator_state(instigator_type=InstigatorType.SCHEDULE)
        if state.name == SCHEDULE_NAME
    ]
    return bool(states) and not any(state.is_running for state in states)


def first_scheduled_window(instance: DagsterInstance) -> datetime | None:
    """The start of the oldest window the schedule launched a run for, or None."""
    records = instance.get_run_records(
        filters=RunsFilter(job_name=agent_job.name, tags={SCHEDULE_NAME_TAG: SCHEDULE_NAME}),
        limit=1,
        ascending=True,
    )
    window = records[0].dagster_run.tags.get(PARTITION_TAG) if records else None
    return window_bounds(window)[0] if window else None


def windows_without_runs(
    instance: DagsterInstance, now: datetime, hours: int
) -> list[str]:
    """The closed windows of the last `hours`, since the schedule first ran and up to the
    grace before now, that have no run of agent_job at all (queued, running or ended),
    oldest first."""
    first = first_scheduled_window(instance)
    if first is None:
        return []
    since = max(now - timedelta(hours=hours), first, agent_job.partitions_def.start)
    candidates = closed_windows(since, now - CATCH_UP_GRACE)
    if not candidates:
        return []
    with_runs = {
        data.partition
        for data in instance.get_run_partition_data(
            RunsFilter(job_name=agent_job.name, tags={PARTITION_TAG: candidates})
        )
    }
    return [window for window in candidates if window not in with_runs]


def build_catch_up_sensor(catch_up_hours: int) -> SensorDefinition:
    @sensor(
        name="agent_job_catch_up",
        job=agent_job,
        minimum_interval_seconds=120,
        default_status=DefaultSensorStatus.RUNNING,
        description=(
            f"Every 2 minutes, launches each closed window of the last {catch_up_hours} hours "
            "(CATCH_UP_HOURS) that has no run at all, oldest first and behind the scheduled "
            "runs: windows missed while the daemon was down or skipped by OVERLAP_POLICY=skip. "
            "Never before the schedule's first run, and not while the schedule is stopped."
        ),
    )
    def agent_job_catch_up(context: SensorEvaluationContext) -> SensorResult | SkipReason:
        if not catch_up_hours:
            return SkipReason("catch-up is off (CATCH_UP_HOURS=0)")
        if schedule_is_stopped(context.instance):
            return SkipReason(f"{SCHEDULE_NAME} is stopped: no window is caught up")
        # The daemon's clock, which its schedule ticks come from (and which tests can shift).
        missing = windows_without_runs(context.instance, get_current_datetime(), catch_up_hours)
        if not missing:
            return SkipReason(
                f"every closed window of the last {catch_up_hours} h since the schedule "
                "first ran has a run"
            )
        context.log.info(f"Catching up {len(missing)} window(s): {missing[0]} to {missing[-1]}")
        tags = {PRIORITY_TAG: str(CATCH_UP_PRIORITY), CATCH_UP_TAG: "true"}
        return SensorResult(
            run_requests=[
                RunRequest(run_key=window, partition_key=window, tags=tags)
                for window in missing
            ]
        )

    return agent_job_catch_up


# Once a day, at a quiet minute between two windows' runs.
retention_job_schedule = ScheduleDefinition(
    name="retention_job_schedule",
    job=retention_job,
    cron_schedule="17 3 * * *",
    execution_timezone="UTC",
    default_status=DefaultScheduleStatus.RUNNING,
    description="Runs retention_job daily at 03:17 UTC: old runs, rows and results go.",
)
