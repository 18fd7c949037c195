from __future__ import annotations

import logging
import time

from dagster import (
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    build_sensor_context,
)
from dagster._core.events import JobFailureData, RunFailureReason
from dagster._core.events.log import EventLogEntry

from agent_pipeline.resources import AgentResource, DigestSettings, Smtp
from agent_pipeline.sensors import agent_runs_on_run_failure, agent_runs_sweeper
from agent_pipeline_tests.helpers import evaluate_failure_sensor

WINDOW = "2026-11-26-09:30"


def add_run(instance: DagsterInstance, status: DagsterRunStatus) -> DagsterRun:
    run = DagsterRun(job_name="agent_job", status=status, tags={"dagster/partition": WINDOW})
    return instance.add_run(run)


def test_the_sweeper_fails_rows_whose_run_ended_or_is_unknown(pg_store):
    with DagsterInstance.ephemeral() as instance:
        failed = add_run(instance, DagsterRunStatus.FAILURE)
        started = add_run(instance, DagsterRunStatus.STARTED)
        canceled = add_run(instance, DagsterRunStatus.CANCELED)
        for run in (failed, started, canceled):
            pg_store.get_or_create_row(run.run_id, WINDOW, "keywords")
        stopped = add_run(instance, DagsterRunStatus.STARTED)
        pg_store.get_or_create_row(stopped.run_id, WINDOW, "keywords")
        instance.report_run_canceling(stopped)  # Terminate in the UI, with Dagster's words
        instance.report_run_canceled(stopped)
        pg_store.get_or_create_row("run-dagster-never-had", WINDOW, "keywords")
        done = pg_store.get_or_create_row(failed.run_id + "-done", WINDOW, "keywords")
        pg_store.complete_run(done, {"top_five": []})

        resources = {
            "agent_runs": pg_store,
            "agent": AgentResource(),
            "smtp": Smtp(),
            "digest": DigestSettings(email_from="a@example.com", email_to="b@example.com"),
        }
        with build_sensor_context(instance=instance, resources=resources) as context:
            skip = agent_runs_sweeper(context)
        assert skip.skip_message.startswith("marked 4 lost row(s) failed")

    def row(run_id):
        return pg_store.get_row_of_run(run_id)

    assert row(started.run_id)["status"] == "running"
    assert row(failed.run_id)["error_message"] == "run killed or lost: the run ended FAILURE"
    assert row(canceled.run_id)["error_message"] == "run killed or lost: the run ended CANCELED"
    assert row(stopped.run_id)["error_message"] == (
        "run terminated: Sending run termination request."
    )
    assert row("run-dagster-never-had")["error_message"] == (
        "run killed or lost: Dagster has no run run-dagster-never-had"
    )
    assert pg_store.get_row(done)["status"] == "succeeded"


def test_the_failure_sensor_fails_a_running_row_and_inserts_a_missing_one(pg_store):
    with DagsterInstance.ephemeral() as instance:
        killed = add_run(instance, DagsterRunStatus.FAILURE)
        never_started = add_run(instance, DagsterRunStatus.FAILURE)
        pg_store.get_or_create_row(killed.run_id, WINDOW, "keywords")
        instance.report_engine_event(
            f"Run execution process for {killed.run_id} was terminated by signal 9 (SIGKILL).",
            killed,
        )
        resources = {"agent_runs": pg_store, "agent": AgentResource()}
        for run in (killed, never_started):
            event = instance.report_run_failed(run)
            evaluate_failure_sensor(agent_runs_on_run_failure, instance, run, event, resources)

    killed_row = pg_store.get_row_of_run(killed.run_id)
    assert killed_row["status"] == "failed"
    assert killed_row["error_message"] == (
        f"run killed or lost: Run execution process for {killed.run_id} was terminated by "
        "signal 9 (SIGKILL). This run has been marked as failed from outside the execution "
        "context."
    )
    inserted = pg_store.get_row_of_run(never_started.run_id)
    assert inserted["status"] == "failed" and inserted["partition_key"] == WINDOW
    assert inserted["error_message"].startswith("run failed: ")


def test_a_lost_run_is_told_by_dagsters_data_never_by_its_wording(pg_store):
    """What makes a run lost is the shape of its events (failed from outside, with neither an
    error nor a reason, after an engine event) or the reason in its failure data; the words
    are only passed on, so a rewording upstream changes nothing."""
    with DagsterInstance.ephemeral() as instance:
        crashed, timed_out = add_run(instance, DagsterRunStatus.FAILURE), add_run(
            instance, DagsterRunStatus.FAILURE
        )
        instance.report_engine_event("Der Prozess ist weg.", crashed)
        events = {
            crashed.run_id: instance.report_run_failed(crashed),
            timed_out.run_id: instance.report_run_failed(
                timed_out, "Zu spät gestartet.",
                JobFailureData(error=None, failure_reason=RunFailureReason.START_TIMEOUT),
            ),
        }
        for run in (crashed, timed_out):
            pg_store.get_or_create_row(run.run_id, WINDOW, "keywords")
            evaluate_failure_sensor(
                agent_runs_on_run_failure, instance, run, events[run.run_id],
                {"agent_runs": pg_store, "agent": AgentResource()},
            )
    assert pg_store.get_row_of_run(crashed.run_id)["error_message"] == (
        "run killed or lost: Der Prozess ist weg. "
        "This run has been marked as failed from outside the execution context."
    )
    assert pg_store.get_row_of_run(timed_out.run_id)["error_message"] == (
        "run killed or lost: Zu spät gestartet."
    )


def test_a_run_whose_container_died_is_told_by_run_monitorings_own_account(pg_store):
    """Run monitoring fails a run whose worker (a run container) is gone, in a failure event of
    its own words, after the launcher's engine events: those words, the cause, are kept."""
    with DagsterInstance.ephemeral() as instance:
        run = add_run(instance, DagsterRunStatus.FAILURE)
        instance.report_engine_event("Started process for run (pid: 1).", run)
        instance.handle_new_event(EventLogEntry(
            error_info=None, level=logging.INFO, user_message="an op's log line",
            run_id=run.run_id, timestamp=time.time(),
        ))
        event = instance.report_run_failed(run, "Container status is exited. ExitCode 137.")
        pg_store.get_or_create_row(run.run_id, WINDOW, "keywords")
        evaluate_failure_sensor(agent_runs_on_run_failure, instance, run, event,
                                {"agent_runs": pg_store, "agent": AgentResource()})
    assert pg_store.get_row_of_run(run.run_id)["error_message"] == (
        "run killed or lost: Started process for run (pid: 1). "
        "Container status is exited. ExitCode 137."
    )


def test_the_failure_sensor_keeps_the_hooks_message(pg_store):
    with DagsterInstance.ephemeral() as instance:
        run = add_run(instance, DagsterRunStatus.FAILURE)
        pg_store.get_or_create_row(run.run_id, WINDOW, "keywords")
        pg_store.fail_run(run.run_id, "RuntimeError: the agent fell over")
        evaluate_failure_sensor(
            agent_runs_on_run_failure, instance, run, instance.report_run_failed(run),
            {"agent_runs": pg_store, "agent": AgentResource()},
        )
    row = pg_store.get_row_of_run(run.run_id)
    assert row["error_message"] == "RuntimeError: the agent fell over"


def test_a_terminated_runs_row_gets_the_reason_it_was_terminated(pg_store):
    """Run monitoring's time limit cancels the run with its reason, then the launcher sends
    its own cancel event; the row names the reason."""
    with DagsterInstance.ephemeral() as instance:
        run = add_run(instance, DagsterRunStatus.FAILURE)
        pg_store.get_or_create_row(run.run_id, WINDOW, "keywords")
        instance.report_run_canceling(
            run, message="Canceling due to exceeding maximum runtime of 1200 seconds."
        )
        instance.report_run_canceling(run, message="Sending run termination request.")
        evaluate_failure_sensor(
            agent_runs_on_run_failure, instance, run,
            instance.report_run_failed(run, "Exceeded maximum runtime of 1200 seconds."),
            {"agent_runs": pg_store, "agent": AgentResource()},
        )
    assert pg_store.get_row_of_run(run.run_id)["error_message"] == (
        "run terminated: Canceling due to exceeding maximum runtime of 1200 seconds."
    )


def test_an_email_a_dead_run_left_sending_becomes_unknown_and_alerts(pg_store, smtp_server):
    """The worker was killed inside send_email: within one sweep its row is failed, its
    email `unknown` (still holding the window: it may have gone out), and one alert says so."""
    with DagsterInstance.ephemeral() as instance:
        killed = add_run(instance, DagsterRunStatus.FAILURE)
        row_id = pg_store.get_or_create_row(killed.run_id, WINDOW, "keywords")
        pg_store.store_result(row_id, {"top_five": [{"title": "t", "score": 1.0}]})
        assert pg_store.claim_email(row_id)  # and then kill -9
        resources = {
            "agent_runs": pg_store,
            "agent": AgentResource(),
            "smtp": Smtp(host=smtp_server.host, port=smtp_server.port, security="none"),
            "digest": DigestSettings(email_from="a@example.com", email_to="b@example.com",
                                     alert_email_to="ops@example.com"),
        }
        for _ in range(2):  # a second sweep finds nothing more to do
            with build_sensor_context(instance=instance, resources=resources) as context:
                skip = agent_runs_sweeper(context)
    row = pg_store.get_row(row_id)
    assert (row["status"], row["email_status"]) == ("failed", "unknown")
    assert row["email_error"].startswith("the attempt died while sending")
    (alert,) = smtp_server.received
    assert "may not have gone out" in alert.message["Subject"]
    assert "no lost rows" in skip.skip_message
    later = pg_store.get_or_create_row("later", WINDOW, "keywords")
    assert not pg_store.claim_email(later)  # unknown keeps the window's claim
