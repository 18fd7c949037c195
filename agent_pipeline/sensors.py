"""Sensors that keep agent_runs true to Dagster (every launched run's row ends succeeded or
failed, even when the run's worker is killed before an op can mark its row), that alert
someone when windows fail for good, and that say so when a run succeeds again."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunsFilter,
    RunStatusSensorContext,
    SensorEvaluationContext,
    SkipReason,
    run_failure_sensor,
    run_status_sensor,
    sensor,
)

from agent_pipeline.alerts import (
    queue_alert,
    queue_unknown_email_alert,
    resolve_recovery,
    send_pending_alerts,
)
from agent_pipeline.jobs import agent_job
from agent_pipeline.ops import PARENT_RUN_TAG
from agent_pipeline.resources import AgentResource, AgentRunsStore, DigestSettings, Smtp
from agent_pipeline.resources.agent_runs import DIED_WHILE_SENDING
from agent_pipeline.run_failures import describe_loss, describe_run_failure

PARTITION_TAG = "dagster/partition"


# Every 30 s: a failing op marks its row failed at once; this sensor only catches runs whose
# ops could not (a killed worker, a timeout, a failure outside an op's body), where half a
# minute is soon enough. Each
# evaluation is a line in the daemon's log: 10 s made it a third of make dev's terminal.
@run_failure_sensor(
    name="agent_runs_on_run_failure",
    monitored_jobs=[agent_job],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description=(
        "Marks a failed run's agent_runs row failed when its ops could not: the worker was "
        "killed, the run timed out, or it failed before its first op."
    ),
)
def agent_runs_on_run_failure(
    context: RunFailureSensorContext, agent_runs: AgentRunsStore, agent: AgentResource
) -> None:
    run = context.dagster_run
    message = describe_run_failure(context.instance, run.run_id, context.failure_event)
    changed = agent_runs.fail_unfinished_run(
        run.run_id, run.tags.get(PARTITION_TAG), agent.agent, message
    )
    if changed:
        context.log.info(f"agent_runs row of run {run.run_id} marked failed: {message}")


# Dagster tags a failed run with this when run retries are on: "true" if the daemon will
# launch a retry of it. Absent (retries off) or "false": this was the window's last attempt.
WILL_RETRY_TAG = "dagster/will_retry"
RETRY_NUMBER_TAG = "dagster/retry_number"
# The sweeper's safety net for alerts: how far back it looks, how many runs, and how long it
# leaves a fresh failure to the sensor.
MISSED_ALERT_LOOKBACK_HOURS = 24
MISSED_ALERTS_PER_SWEEP = 100
RETRY_DECISION_GRACE_SECONDS = 60
# A retry Dagster promised but has not launched in this long is taken as not coming.
RETRY_LAUNCH_GRACE_MINUTES = 15


@run_failure_sensor(
    name="agent_job_failure_alert",
    monitored_jobs=[agent_job],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description=(
        "Emails ALERT_EMAIL_TO (else EMAIL_TO) when a window of agent_job fails for good "
        "(after Dagster's run retries), with the error and a link to the run; while windows "
        "go on failing, at most one summary per ALERT_REPEAT_MINUTES. Off when neither "
        "variable is set."
    ),
)
def agent_job_failure_alert(
    context: RunFailureSensorContext,
    agent_runs: AgentRunsStore,
    smtp: Smtp,
    digest: DigestSettings,
) -> None:
    if not digest.alert_recipients():
        return
    # The run as stored now: Dagster adds its retry decision just after the failure.
    run = context.instance.get_run_by_id(context.dagster_run.run_id) or context.dagster_run
    decision = run.tags.get(WILL_RETRY_TAG)
    if decision == "true":
        context.log.info(f"Run {run.run_id} failed; Dagster retries it, so no alert yet.")
    elif decision is None and context.instance.run_retries_enabled:
        # Undecided yet: alerting now could spend the window's one alert on an attempt that
        # is retried. The sweeper alerts once the decision is in.
        context.log.info(f"Run {run.run_id} failed; retry undecided, left to the sweeper.")
    elif queue_final_failure_alert(context.instance, run, agent_runs, context.failure_event):
        context.log.info(f"Alert queued for {run.tags.get(PARTITION_TAG) or run.run_id}.")
    send_pending_alerts(agent_runs, smtp, digest, context.log)


@run_status_sensor(
    name="agent_job_recovery_alert",
    run_status=DagsterRunStatus.SUCCESS,
    monitored_jobs=[agent_job],
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=30,
    description=(
        "Emails ALERT_EMAIL_TO (else EMAIL_TO) once when a run of agent_job succeeds after "
        "windows failed for good: since when, and how many. Off when neither is set."
    ),
)
def agent_job_recovery_alert(
    context: RunStatusSensorContext,
    agent_runs: AgentRunsStore,
    smtp: Smtp,
    digest: DigestSettings,
) -> None:
    if not digest.alert_recipients():
        return
    # The success is read from agent_runs, not from this event: the sweeper finds the same
    # success if this sensor never sees it.
    if resolve_recovery(agent_runs):
        context.log.info(f"Failures ended by run {context.dagster_run.run_id}.")
    send_pending_alerts(agent_runs, smtp, digest, context.log)


def queue_final_failure_alert(
    instance: DagsterInstance, run: DagsterRun, store: AgentRunsStore, failure_event=None
) -> bool:
    """Queue the alert of a failed run; False when its window has an alert already."""
    message = describe_run_failure(instance, run.run_id, failure_event)
    attempts = int(run.tags.get(RETRY_NUMBER_TAG, "0")) + 1
    return queue_alert(store, run.tags.get(PARTITION_TAG), run.run_id, message, attempts)


def queue_missed_alerts(
    instance: DagsterInstance, store: AgentRunsStore, now: datetime
) -> int:
    """Alerts for the runs of the last day that failed for good without one: failures the
    alert sensor never saw (the daemon was down, the sensor had not ticked yet, or the
    database was down when it looked), or saw before Dagster had decided on a retry, and
    promised retries that never came. Runs that failed in the last minute are left to the
    sensor.

    A canceled run counts when Dagster saw it fail first (it carries the retry decision): a
    run ended by run monitoring's time limit is failed, and ends canceled when its worker's
    own cancel event lands after that; Dagster may then not retry it. A run stopped from the
    UI has no retry decision, and no alert."""
    records = instance.get_run_records(
        filters=RunsFilter(
            job_name=agent_job.name,
            statuses=[DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED],
            updated_after=now - timedelta(hours=MISSED_ALERT_LOOKBACK_HOURS),
            updated_before=now - timedelta(seconds=RETRY_DECISION_GRACE_SECONDS),
        ),
        limit=MISSED_ALERTS_PER_SWEEP,
    )
    queued = 0
    for record in records:
        run = record.dagster_run
        if run.status == DagsterRunStatus.CANCELED and WILL_RETRY_TAG not in run.tags:
            continue
        if run.tags.get(WILL_RETRY_TAG) == "true" and (
            record.update_timestamp > now - timedelta(minutes=RETRY_LAUNCH_GRACE_MINUTES)
            or _has_retry(instance, run.run_id)
        ):
            continue
        queued += queue_final_failure_alert(instance, run, store)
    return queued


def _has_retry(instance: DagsterInstance, run_id: str) -> bool:
    """Whether a run was re-executed: Dagster declines a promised retry when its backfill
    has ended, and then the failure was final after all."""
    return bool(instance.get_runs(filters=RunsFilter(tags={PARENT_RUN_TAG: run_id}), limit=1))


@sensor(
    name="agent_runs_sweeper",
    minimum_interval_seconds=300,
    default_status=DefaultSensorStatus.RUNNING,
    description=(
        "Every 5 minutes, fails agent_runs rows still running whose Dagster run has ended or "
        "is unknown, marks an email such a run left sending unknown (and alerts), and "
        "alerts on windows of the last day that failed for good without an "
        "alert: what the failure sensors missed while the daemon or a database was down. "
        "Also ends a failure streak a run has succeeded since, and sends the alerts whose "
        "delivery failed, the summaries due and the recovered emails."
    ),
)
def agent_runs_sweeper(
    context: SensorEvaluationContext,
    agent_runs: AgentRunsStore,
    agent: AgentResource,
    smtp: Smtp,
    digest: DigestSettings,
) -> SkipReason:
    healed = []
    for row in agent_runs.unfinished_runs():
        run = context.instance.get_run_by_id(row["dagster_run_id"] or "")
        if run is not None and not run.is_finished:
            continue
        if run is None:
            message = f"run killed or lost: Dagster has no run {row['dagster_run_id']}"
        else:
            message = describe_loss(context.instance, run.run_id) or (
                f"run killed or lost: the run ended {run.status.value}"
            )
        if agent_runs.fail_unfinished_run(
            row["dagster_run_id"], row["partition_key"], agent.agent, message
        ):
            healed.append(row["id"])
    # After the rows above are failed: an email still sending on a failed row is one whose
    # attempt died mid-delivery.
    unknown = agent_runs.settle_dead_sending()
    if digest.alert_recipients():
        for row in unknown:
            queue_unknown_email_alert(
                agent_runs, row["partition_key"], row["dagster_run_id"] or "", DIED_WHILE_SENDING
            )
        queue_missed_alerts(context.instance, agent_runs, datetime.now(UTC))
        # After the missed failures: a success since the last of them ends the streak.
        resolve_recovery(agent_runs)
    # Alerts whose delivery failed (the SMTP server was down) go out from here too, and a
    # streak's summary once its period has passed.
    alerted = send_pending_alerts(agent_runs, smtp, digest, context.log)
    return SkipReason(
        (f"marked {len(healed)} lost row(s) failed: {healed}" if healed else "no lost rows")
        + (f"; {len(unknown)} email(s) left sending now unknown" if unknown else "")
        + (f"; delivered {len(alerted)} alert(s)" if alerted else "")
    )
