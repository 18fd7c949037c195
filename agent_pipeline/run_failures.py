"""Why a run of agent_job failed, in one line for its agent_runs row and its alert: the
reason it was terminated, the engine's words when its worker was lost, else the error of the
op that failed, else the run's own error."""

from __future__ import annotations

from dagster import DagsterEventType, DagsterInstance
from dagster._core.events import RunFailureReason

# What Dagster's structured failure data says when a run's worker never started, died or was
# restarted (run monitoring); the failure event's message then says how.
_LOST_REASONS = {
    RunFailureReason.UNEXPECTED_TERMINATION,
    RunFailureReason.START_TIMEOUT,
    RunFailureReason.RUN_WORKER_RESTART,
}


def termination_reason(instance: DagsterInstance, run_id: str) -> str | None:
    """Why the run was terminated, in the words of its first cancel event (run monitoring's
    time limit, or a stop from the UI, the API or the CLI); None when it was not. A stop sends
    a second cancel event of the launcher's own after the first."""
    cancels = instance.all_logs(run_id, of_type=DagsterEventType.RUN_CANCELING)
    return (cancels[0].message or None) if cancels else None


def describe_loss(instance: DagsterInstance, run_id: str) -> str | None:
    """Why a run ended without its ops finishing: it was terminated, or its worker was lost.
    None when its events show neither. Read from the events' types and Dagster's failure data,
    never from their wording, which is only passed on."""
    terminated = termination_reason(instance, run_id)
    if terminated:
        return f"run terminated: {terminated}"
    entries = instance.all_logs(
        run_id, of_type={DagsterEventType.RUN_FAILURE, DagsterEventType.ENGINE_EVENT}
    )
    failures = [i for i, e in enumerate(entries)
                if e.dagster_event_type == DagsterEventType.RUN_FAILURE]
    if not failures:
        return None
    failure = entries[failures[-1]]
    data = failure.dagster_event.event_specific_data
    reason = getattr(data, "failure_reason", None)
    if reason in _LOST_REASONS:
        return f"run killed or lost: {failure.message}"
    engine = [e for e in entries[: failures[-1]]
              if e.dagster_event_type == DagsterEventType.ENGINE_EVENT]
    if engine and getattr(data, "error", None) is None and reason in (
        None, RunFailureReason.UNKNOWN,
    ):
        # Failed from outside, with neither an error nor a reason: the run's last engine event
        # and the failure's own words, together. When the code server found the run's process
        # dead, the engine event says how (Dagster 1.13's _check_for_orphaned_runs); when run
        # monitoring found its container gone, the failure does. Which one spoke is not in the
        # data, so neither is dropped.
        return f"run killed or lost: {engine[-1].message} {failure.message}"
    return None


def describe_run_failure(instance: DagsterInstance, run_id: str, failure_event=None) -> str:
    """One line on why a run failed: how it was terminated or lost, else the error of the op
    that failed, else the run's own error (it failed before its ops). The failure event is
    looked up when not given."""
    lost = describe_loss(instance, run_id)
    if lost:
        return lost
    for entry in instance.all_logs(run_id, of_type=DagsterEventType.STEP_FAILURE):
        error = _innermost(getattr(entry.dagster_event.event_specific_data, "error", None))
        if error is not None:
            return f"op {entry.step_key} failed: {_first_line(error)}"
    if failure_event is None:
        failures = instance.all_logs(run_id, of_type=DagsterEventType.RUN_FAILURE)
        failure_event = failures[-1].dagster_event if failures else None
    if failure_event is None:
        return "run failed: no reason given"
    error = _innermost(getattr(failure_event.event_specific_data, "error", None))
    detail = _first_line(error) if error is not None else ""
    return f"run failed: {detail or failure_event.message or 'no reason given'}"


def _innermost(error):
    """The original error under Dagster's wrappers (user code error, resource init error)."""
    while error is not None and error.cause is not None:
        error = error.cause
    return error


def _first_line(error) -> str:
    lines = (error.message or "").strip().splitlines()
    return lines[0] if lines else ""
