"""Sensors that keep agent_runs true to Dagster: every launched run's row ends succeeded or
failed, even when the run's worker is killed and the op hooks never run."""

from __future__ import annotations

from dagster import (
    DagsterEventType,
    DagsterInstance,
    DefaultSensorStatus,
    RunFailureSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from agent_pipeline.jobs import agent_job
from agent_pipeline.resources import AgentResource, AgentRunsStore

PARTITION_TAG = "dagster/partition"
# What Dagster writes when a run's process dies (the code server) or its worker is found dead
# or timed out (run monitoring); more telling than the generic run failure message.
_LOSS_MARKERS = ("terminated by signal", "unexpectedly exited", "run worker", "timed out")


def loss_explanation(instance: DagsterInstance, run_id: str, fallback: str) -> str:
    """The engine's own words for why a run ended without its ops finishing."""
    for entry in reversed(instance.all_logs(run_id, of_type=DagsterEventType.ENGINE_EVENT)):
        message = entry.message or ""
        if any(marker in message for marker in _LOSS_MARKERS):
            return message
    return fallback


@run_failure_sensor(
    name="agent_runs_on_run_failure",
    monitored_jobs=[agent_job],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=10,
    description=(
        "Marks a failed run's agent_runs row failed when its ops could not: the worker was "
        "killed, the run timed out, or it failed before its first op."
    ),
)
def agent_runs_on_run_failure(
    context: RunFailureSensorContext, agent_runs: AgentRunsStore, agent: AgentResource
) -> None:
    run = context.dagster_run
    lost = loss_explanation(context.instance, run.run_id, "")
    if lost:
        message = f"run killed or lost: {lost}"
    else:
        # Failed before or outside its ops (a resource that would not open): the run's own
        # error, first line, as the UI shows it.
        error = getattr(context.failure_event.event_specific_data, "error", None)
        while error is not None and error.cause is not None:  # past Dagster's wrappers
            error = error.cause
        detail = error.message.strip().splitlines()[0] if error and error.message else ""
        message = f"run failed: {detail or context.failure_event.message or 'no reason given'}"
    changed = agent_runs.fail_unfinished_run(
        run.run_id, run.tags.get(PARTITION_TAG), agent.agent, message
    )
    if changed:
        context.log.info(f"agent_runs row of run {run.run_id} marked failed: {message}")


@sensor(
    name="agent_runs_sweeper",
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Every 5 minutes, fails agent_runs rows still running whose Dagster run has ended or "
        "is unknown: what the failure sensor missed while the daemon was down."
    ),
)
def agent_runs_sweeper(
    context: SensorEvaluationContext, agent_runs: AgentRunsStore, agent: AgentResource
) -> SkipReason:
    healed = []
    for row in agent_runs.unfinished_runs():
        run = context.instance.get_run_by_id(row["dagster_run_id"] or "")
        if run is not None and not run.is_finished:
            continue
        reason = (
            f"Dagster has no run {row['dagster_run_id']}"
            if run is None
            else loss_explanation(context.instance, run.run_id, f"the run ended {run.status.value}")
        )
        message = f"run killed or lost: {reason}"
        if agent_runs.fail_unfinished_run(
            row["dagster_run_id"], row["partition_key"], agent.agent, message
        ):
            healed.append(row["id"])
    return SkipReason(
        f"marked {len(healed)} lost row(s) failed: {healed}" if healed else "no lost rows"
    )
