"""Failure alerts: one email per window that fails for good, through the sensors, against
the loopback SMTP server. Dagster decides whether a failed run is retried (the will_retry
tag it sets as the failure is stored); these tests let it decide."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    build_sensor_context,
    instance_for_test,
)

from agent_pipeline.alerts import send_pending_alerts
from agent_pipeline.jobs import agent_job
from agent_pipeline.resources import AgentResource, DigestSettings, Smtp
from agent_pipeline.sensors import (
    RETRY_DECISION_GRACE_SECONDS,
    RETRY_LAUNCH_GRACE_MINUTES,
    agent_job_failure_alert,
    agent_runs_sweeper,
    queue_missed_alerts,
)
from agent_pipeline.settings import resources_from_env
from agent_pipeline_tests.test_sensors import evaluate_failure_sensor

WINDOW = "2026-11-26-09:30"
WEBSERVER = "https://dagster.example.com"
LOG = logging.getLogger("test")
RUN_RETRIES = {"run_retries": {"enabled": True, "max_retries": 2}}


@pytest.fixture
def resources(pg_store, smtp_server):
    return {
        "agent_runs": pg_store,
        "agent": AgentResource(),
        "smtp": Smtp(host=smtp_server.host, port=smtp_server.port, security="none", retries=0),
        "digest": DigestSettings(
            email_from="agent@example.com",
            email_to="team@example.com",
            alert_email_to="oncall@example.com",
            webserver_url=WEBSERVER,
        ),
    }


def fail(
    instance: DagsterInstance,
    window: str | None = WINDOW,
    retry_of: DagsterRun | None = None,
    message: str | None = None,
):
    """A failed run of agent_job, stored as Dagster stores one; a retry when retry_of is
    given (same run group, next retry number)."""
    tags = {"dagster/partition": window} if window else {}
    if retry_of is not None:
        root = retry_of.root_run_id or retry_of.run_id
        # The tags and ids Dagster's own re-execution gives a retry.
        tags.update({
            "dagster/retry_number": str(int(retry_of.tags.get("dagster/retry_number", 0)) + 1),
            "dagster/root_run_id": root,
            "dagster/parent_run_id": retry_of.run_id,
        })
    run = instance.add_run(
        DagsterRun(
            job_name="agent_job",
            status=DagsterRunStatus.FAILURE,
            tags=tags,
            root_run_id=retry_of and (retry_of.root_run_id or retry_of.run_id),
            parent_run_id=retry_of and retry_of.run_id,
        )
    )
    event = instance.report_run_failed(run, message)
    return instance.get_run_by_id(run.run_id), event


def evaluate_alert(instance, run, event, resources) -> None:
    evaluate_failure_sensor(agent_job_failure_alert, instance, run, event, resources)


def test_one_alert_per_window_after_the_last_retry(resources, smtp_server):
    with instance_for_test(overrides=RUN_RETRIES) as instance:
        first, event = fail(instance)
        assert first.tags["dagster/will_retry"] == "true"
        evaluate_alert(instance, first, event, resources)
        second, event = fail(instance, retry_of=first)
        evaluate_alert(instance, second, event, resources)
        assert smtp_server.received == []  # Dagster retries these: no alert yet

        last, event = fail(instance, retry_of=second, message="the database went away")
        assert last.tags["dagster/will_retry"] == "false"
        evaluate_alert(instance, last, event, resources)
        evaluate_alert(instance, last, event, resources)  # the same event seen twice
        # A later re-execution of the window that fails for good too: still the one alert.
        again, event = fail(instance)
        instance.add_run_tags(again.run_id, {"dagster/will_retry": "false"})
        evaluate_alert(instance, instance.get_run_by_id(again.run_id), event, resources)

    (mail,) = smtp_server.received
    assert mail.rcpt_tos == ["oncall@example.com"]
    message = mail.message
    # The error, often the agent's words, stays out of the headers.
    assert message["Subject"] == (
        "agent_pipeline: window 2026-11-26 09:30–09:40 UTC failed after 3 attempts"
    )
    assert message["X-Agent-Pipeline-Window"] == WINDOW
    body = message.get_content()
    assert "after 3 attempts" in body
    assert "run failed: the database went away" in body
    assert f"Open it in Dagster: {WEBSERVER}/runs/{last.run_id}" in body


def test_without_run_retries_the_first_failure_alerts(resources, smtp_server):
    with instance_for_test() as instance:
        run, event = fail(instance, message="bad\r\nBcc: victim@example.com")
        assert "dagster/will_retry" not in run.tags
        evaluate_alert(instance, run, event, resources)
    (mail,) = smtp_server.received
    assert mail.message["Bcc"] is None and "bad" not in mail.message["Subject"]
    assert "after 1 attempt." in mail.message.get_content()
    assert "bad Bcc: victim@example.com" in " ".join(mail.message.get_content().split())


def test_a_run_without_window_alerts_for_itself(resources, smtp_server):
    with instance_for_test() as instance:
        for _ in range(2):
            run, event = fail(instance, window=None)
            evaluate_alert(instance, run, event, resources)
    assert len(smtp_server.received) == 2
    assert "(no window)" in smtp_server.received[0].message["Subject"]


def test_alerts_are_off_without_recipients(resources, smtp_server, pg_store):
    resources["digest"] = DigestSettings(email_from="agent@example.com", email_to="t@example.com")
    with instance_for_test() as instance:
        run, event = fail(instance)
        evaluate_alert(instance, run, event, resources)
    assert smtp_server.received == []
    assert pg_store.pending_alerts(10) == []


def test_an_alert_the_server_refused_goes_out_from_the_sweeper(resources, smtp_server, pg_store):
    smtp_server.fail_with = lambda: "421 4.3.0 down for maintenance"
    with instance_for_test() as instance:
        run, event = fail(instance)
        evaluate_alert(instance, run, event, resources)  # does not raise: the alert waits
        (pending,) = pg_store.pending_alerts(10)
        assert "421" in pending["delivery_error"]

        smtp_server.fail_with = None
        for _ in range(2):
            with build_sensor_context(instance=instance, resources=resources) as context:
                agent_runs_sweeper(context)
    assert len(smtp_server.received) == 1
    assert pg_store.pending_alerts(10) == []


def test_the_alert_names_the_op_that_failed_and_its_error(
    clean_env, postgres_url, smtp_server, pg_store
):
    clean_env.setenv("DATABASE_URL", postgres_url)
    clean_env.setenv("AGENT", "agent_pipeline_tests.sample_agents:broken")
    clean_env.setenv("SMTP_HOST", smtp_server.host)
    clean_env.setenv("SMTP_PORT", str(smtp_server.port))
    clean_env.setenv("SMTP_SECURITY", "none")
    clean_env.setenv("EMAIL_FROM", "agent@example.com")
    clean_env.setenv("EMAIL_TO", "team@example.com")
    resources = resources_from_env(os.environ)
    with instance_for_test() as instance:
        result = agent_job.execute_in_process(
            partition_key=WINDOW, resources=resources, instance=instance, raise_on_error=False
        )
        assert not result.success
        run = instance.get_run_by_id(result.run_id)
        (failure,) = instance.all_logs(run.run_id, of_type=DagsterEventType.RUN_FAILURE)
        evaluate_alert(instance, run, failure.dagster_event, resources)
    (mail,) = smtp_server.received
    assert mail.rcpt_tos == ["team@example.com"]  # EMAIL_TO, as ALERT_EMAIL_TO is unset
    assert "op run_agent failed: RuntimeError: the agent fell over" in mail.message.get_content()
    assert f"http://localhost:3000/runs/{run.run_id}" in mail.message.get_content()


def test_the_sweeper_alerts_on_final_failures_the_sensor_never_saw(resources, pg_store):
    with instance_for_test(overrides=RUN_RETRIES) as instance:
        retried, _ = fail(instance, window="2026-11-26-09:00")
        final, _ = fail(instance, window="2026-11-26-09:10", message="the disk is full")
        final = instance.add_run_tags(final.run_id, {"dagster/will_retry": "false"}) or final
        fail(instance, window="2026-11-26-09:20")
        now = datetime.now(UTC)
        # A failure of the last minute is the sensor's: its retry decision may still come.
        assert queue_missed_alerts(instance, pg_store, now) == 0
        later = now + timedelta(seconds=RETRY_DECISION_GRACE_SECONDS + 1)
        assert queue_missed_alerts(instance, pg_store, later) == 1
        assert queue_missed_alerts(instance, pg_store, later) == 0  # once
    (alert,) = pg_store.pending_alerts(10)
    assert alert["partition_key"] == "2026-11-26-09:10"
    assert alert["error_message"] == "run failed: the disk is full"


def test_an_undecided_retry_is_left_to_the_sweeper(resources, smtp_server, pg_store):
    with instance_for_test(overrides=RUN_RETRIES) as instance:
        run, event = fail(instance)
        # As the sensor may find it: the failure stored, the retry decision not yet.
        stored = instance.get_run_by_id(run.run_id)
        undecided = stored.with_tags(
            {k: v for k, v in stored.tags.items() if k != "dagster/will_retry"}
        )
        evaluate_alert(instance, undecided, event, resources)
    assert smtp_server.received == [] and pg_store.pending_alerts(10) == []


def test_a_promised_retry_that_never_came_is_alerted(pg_store):
    with instance_for_test(overrides=RUN_RETRIES) as instance:
        promised, _ = fail(instance, window="2026-11-26-09:00")
        retried, _ = fail(instance, window="2026-11-26-09:10")
        instance.add_run(  # its retry, which succeeded
            DagsterRun(
                job_name="agent_job",
                status=DagsterRunStatus.SUCCESS,
                tags={"dagster/partition": "2026-11-26-09:10",
                      "dagster/parent_run_id": retried.run_id,
                      "dagster/root_run_id": retried.run_id},
            )
        )
        assert promised.tags["dagster/will_retry"] == "true"
        now = datetime.now(UTC)
        assert queue_missed_alerts(instance, pg_store, now + timedelta(minutes=2)) == 0
        later = now + timedelta(minutes=RETRY_LAUNCH_GRACE_MINUTES + 1)
        assert queue_missed_alerts(instance, pg_store, later) == 1
    # 09:00 never got the retry it was promised; 09:10 got its retry.
    assert [a["partition_key"] for a in pg_store.pending_alerts(10)] == ["2026-11-26-09:00"]


def test_two_deliveries_at_once_send_an_alert_once(resources, smtp_server, pg_store):
    pg_store.add_alert(WINDOW, WINDOW, "run-1", "run failed: x", 1)
    (alert,) = pg_store.pending_alerts(10)
    assert pg_store.claim_alert(alert["id"])  # another sensor evaluation is sending it
    assert send_pending_alerts(pg_store, resources["smtp"], resources["digest"], LOG) == []
    assert smtp_server.received == []


def test_a_rejected_alert_does_not_hold_up_the_others(resources, smtp_server, pg_store):
    for n in range(3):
        pg_store.add_alert(f"2026-11-26-09:{n}0", f"2026-11-26-09:{n}0", f"run-{n}", "x", 1)
    smtp_server.fail_with = lambda: "554 5.7.1 rejected" if smtp_server.attempts == 1 else None
    delivered = send_pending_alerts(pg_store, resources["smtp"], resources["digest"], LOG)
    assert delivered == ["2026-11-26-09:10", "2026-11-26-09:20"]
    assert pg_store.pending_alerts(10) == []  # the rejected one is not tried again


def test_a_rejected_alert_is_tried_once(resources, smtp_server, pg_store):
    pg_store.add_alert(WINDOW, WINDOW, "run-1", "x", 1)
    smtp_server.fail_with = lambda: "550 5.7.1 no"
    for _ in range(2):
        assert send_pending_alerts(pg_store, resources["smtp"], resources["digest"], LOG) == []
    assert smtp_server.attempts == 1 and pg_store.pending_alerts(10) == []


def test_an_alert_waits_while_the_smtp_settings_refuse_a_plain_login(resources, pg_store):
    pg_store.add_alert(WINDOW, WINDOW, "run-1", "x", 1)
    # mail.invalid resolves nowhere: nothing leaves the machine whatever the check does.
    smtp = Smtp(host="mail.invalid", security="none", username="agent", password="p")
    assert send_pending_alerts(pg_store, smtp, resources["digest"], LOG) == []
    (pending,) = pg_store.pending_alerts(10)
    assert pending["delivery_error"].startswith("ConfigurationError: SMTP_SECURITY: none")


def test_a_timed_out_run_that_ended_canceled_is_alerted_but_a_stopped_one_is_not(pg_store):
    """Run monitoring fails a run over its time limit; the worker's cancel event can land
    after that failure and end the run canceled, and Dagster then may not retry it."""
    with instance_for_test(overrides=RUN_RETRIES) as instance:
        timed_out, _ = fail(instance, window="2026-11-26-09:00")
        instance.report_run_canceled(timed_out)
        stopped = instance.add_run(
            DagsterRun(job_name="agent_job", status=DagsterRunStatus.STARTED,
                       tags={"dagster/partition": "2026-11-26-09:10"})
        )
        instance.report_run_canceling(stopped)  # Terminate in the UI
        instance.report_run_canceled(stopped)
        assert {instance.get_run_by_id(r.run_id).status for r in (timed_out, stopped)} == {
            DagsterRunStatus.CANCELED
        }
        now = datetime.now(UTC)
        # A retry was promised: the sweeper waits for it first.
        assert queue_missed_alerts(instance, pg_store, now + timedelta(minutes=2)) == 0
        later = now + timedelta(minutes=RETRY_LAUNCH_GRACE_MINUTES + 1)
        assert queue_missed_alerts(instance, pg_store, later) == 1
    (alert,) = pg_store.pending_alerts(10)
    assert alert["partition_key"] == "2026-11-26-09:00"
