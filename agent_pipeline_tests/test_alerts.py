"""Failure alerts: one email per window that fails for good, through the sensors, against
the loopback SMTP server. Dagster decides whether a failed run is retried (the will_retry
tag it sets as the failure is stored); these tests let it decide."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime, timedelta

import pytest
from dagster import (
    DagsterEvent,
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    DagsterRunStatus,
    build_run_status_sensor_context,
    build_sensor_context,
    instance_for_test,
)

from agent_pipeline.alerts import (
    ERROR_CHARS_IN_SUMMARY,
    ERRORS_PER_SUMMARY,
    queue_alert,
    queue_unknown_email_alert,
    resolve_recovery,
    send_pending_alerts,
)
from agent_pipeline.jobs import agent_job
from agent_pipeline.resources import AgentResource, DigestSettings, Smtp
from agent_pipeline.sensors import (
    RETRY_DECISION_GRACE_SECONDS,
    RETRY_LAUNCH_GRACE_MINUTES,
    agent_job_failure_alert,
    agent_job_recovery_alert,
    agent_runs_sweeper,
    queue_missed_alerts,
)
from agent_pipeline.settings import resources_from_env
from agent_pipeline_tests.helpers import evaluate_failure_sensor, window_keys

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


def test_a_run_without_window_alerts_for_itself(resources, smtp_server, pg_store):
    with instance_for_test() as instance:
        for _ in range(2):
            run, event = fail(instance, window=None)
            evaluate_alert(instance, run, event, resources)
    (mail,) = smtp_server.received  # the second failure waits for the streak's summary
    assert "(no window)" in mail.message["Subject"]
    (waiting,) = pg_store.pending_alerts(10)
    assert waiting["alert_key"] == f"run:{run.run_id}"


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
        # A window of the last hour: a fixed date would leave the history in a few days.
        result = agent_job.execute_in_process(
            partition_key=window_keys(6)[0], resources=resources, instance=instance,
            raise_on_error=False,
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


# -- failure streaks: grouped alerts and the recovered email --------------------------------

START = datetime(2026, 11, 26, 9, 0, tzinfo=UTC)
EXPIRED_KEY = "op run_agent failed: RuntimeError: LLM API: 401 the API key has expired"


def window(n: int) -> str:
    """The nth window from START."""
    return (START + timedelta(minutes=10 * n)).strftime("%Y-%m-%d-%H:%M")


def deliver(resources, now: datetime) -> list[str]:
    return send_pending_alerts(
        resources["agent_runs"], resources["smtp"], resources["digest"], LOG, now=now
    )


def run_of_window(store, n: int, succeeded: bool, error: str = EXPIRED_KEY) -> str:
    """A finished agent_runs row of window n, as a run of it leaves one; its run id."""
    run_id = f"run-{n}-{'ok' if succeeded else 'failed'}"
    row = store.get_or_create_row(run_id, window(n), "broken")
    if succeeded:
        store.succeed_run(row)
    else:
        store.fail_run(run_id, error)
    return run_id


def fail_window(store, n: int, now: datetime, error: str = EXPIRED_KEY) -> None:
    """Window n fails for good at `now` and its alert is queued, as the sensor does."""
    run_id = run_of_window(store, n, succeeded=False, error=error)
    assert queue_alert(store, window(n), run_id, error, 1, now=now)


def kinds(smtp_server) -> list[str]:
    """The alert emails received, by kind: first (a window's own), summary, recovered."""
    def kind(subject: str) -> str:
        if "recovered" in subject:
            return "recovered"
        return "summary" if "still failing" in subject else "first"
    return [kind(mail.message["Subject"]) for mail in smtp_server.received]


def test_a_broken_agent_alerts_once_then_at_most_one_summary_a_period(
    resources, smtp_server, pg_store
):
    """13 windows in a row fail (two hours and ten minutes, ALERT_REPEAT_MINUTES=60): one
    alert at the first, then one summary per hour, not 13 emails."""
    sent_at = []
    for n in range(13):
        now = START + timedelta(minutes=10 * n + 1)
        fail_window(pg_store, n, now)
        for tick in range(2):  # the sensor's own delivery, then the sweeper's
            if deliver(resources, now + timedelta(minutes=5 * tick)):
                sent_at.append(n)
    assert kinds(smtp_server) == ["first", "summary", "summary"]
    # The first at once; each summary once the hour since the last email had passed.
    assert sent_at == [0, 6, 12]
    first, hour_one, hour_two = (mail.message for mail in smtp_server.received)
    assert first["Subject"] == (
        "agent_pipeline: window 2026-11-26 09:00–09:10 UTC failed after 1 attempt"
    )
    assert "at most one email every 60 minutes" in first.get_content()
    # Each summary covers the windows since the last email: 1 to 6, then 7 to 12.
    assert hour_one["Subject"] == "agent_pipeline: agent_job still failing, 6 more windows failed"
    body = hour_one.get_content()
    assert "6 windows failed for good since the last alert." in body
    assert "First window: 2026-11-26 09:10–09:20 UTC" in body
    assert "Last window:  2026-11-26 10:00–10:10 UTC" in body
    assert f"6 × {EXPIRED_KEY}" in body
    assert "Failing since window 2026-11-26 09:00–09:10 UTC: 7 windows in all." in body
    assert f"{WEBSERVER}/runs/run-6-failed" in body
    body = hour_two.get_content()
    assert "First window: 2026-11-26 10:10–10:20 UTC" in body
    assert "13 windows in all." in body
    assert pg_store.pending_alerts(100) == []


def test_a_summary_counts_the_windows_and_lists_their_distinct_errors_bounded(
    resources, smtp_server, pg_store
):
    fail_window(pg_store, 0, START)
    deliver(resources, START)
    # Since that alert: 9 windows with 7 distinct errors, one long, multi-line and hostile,
    # and a run launched without a window.
    hostile = "Subject: x\r\nBcc: victim@example.com\n" + "y" * 10_000
    errors = [EXPIRED_KEY] * 3 + [f"error {n}" for n in range(5)] + [hostile]
    for n, error in enumerate(errors, start=1):
        fail_window(pg_store, n, START + timedelta(minutes=10 * n), error=error)
    queue_alert(pg_store, None, "run-without-window", EXPIRED_KEY, 1, now=START)
    deliver(resources, START + timedelta(minutes=60))

    first, summary = (mail.message for mail in smtp_server.received)
    assert summary["Subject"] == "agent_pipeline: agent_job still failing, 10 more windows failed"
    assert summary["Bcc"] is None and "X-Agent-Pipeline-Window" not in summary
    body = summary.get_content()
    assert "10 windows failed for good since the last alert." in body
    assert "First window: 2026-11-26 09:10–09:20 UTC" in body
    assert "Last window:  2026-11-26 10:30–10:40 UTC" in body
    assert "Runs without a window: 1" in body
    # Seven distinct errors: the most frequent first, five of them listed, each one line.
    assert "Errors (7 distinct, the most frequent first):" in body
    listed = [line for line in body.splitlines() if " × " in line]
    assert len(listed) == ERRORS_PER_SUMMARY
    assert listed[0] == f"  4 × {EXPIRED_KEY}"
    assert "  and 2 other errors" in body
    assert "victim" not in body  # the hostile error is not among the five most frequent
    assert "Failing since window 2026-11-26 09:00–09:10 UTC: 11 windows in all." in body
    assert len(body) < 3_000


def test_a_long_error_is_cut_to_one_bounded_line(resources, smtp_server, pg_store):
    fail_window(pg_store, 0, START)
    deliver(resources, START)
    hostile = "Subject: x\r\nBcc: victim@example.com\n" + "y" * 10_000
    fail_window(pg_store, 1, START, error=hostile)
    deliver(resources, START + timedelta(minutes=60))
    summary = smtp_server.received[-1].message
    assert summary["Bcc"] is None and "victim" not in summary["Subject"]
    (line,) = [line for line in summary.get_content().splitlines() if " × " in line]
    assert line.startswith("  1 × Subject: x Bcc: victim@example.com yyy")
    assert line.endswith("…") and len(line) == len("  1 × ") + ERROR_CHARS_IN_SUMMARY


def test_a_success_sends_one_recovered_email_and_nothing_after_it(
    resources, smtp_server, pg_store
):
    for n in range(3):
        fail_window(pg_store, n, START + timedelta(minutes=10 * n))
        deliver(resources, START + timedelta(minutes=10 * n))
    assert kinds(smtp_server) == ["first"]  # windows 1 and 2 wait for the summary
    assert resolve_recovery(pg_store) is None  # nothing has succeeded since
    run_of_window(pg_store, 3, succeeded=True)
    later = START + timedelta(minutes=35)
    for tick in range(3):  # the success sensor, the sweeper, and the sweeper again
        resolve_recovery(pg_store)
        deliver(resources, later + timedelta(minutes=5 * tick))
    assert kinds(smtp_server) == ["first", "recovered"]
    recovered = smtp_server.received[-1].message
    assert recovered["Subject"] == (
        "agent_pipeline: agent_job recovered, window 2026-11-26 09:30–09:40 UTC succeeded"
    )
    body = recovered.get_content()
    assert "It had been failing since window 2026-11-26 09:00–09:10 UTC: 3 windows failed " \
        "for good, the last 2026-11-26 09:20–09:30 UTC." in " ".join(body.split("\n"))
    # The two windows no summary had told of yet are in it, and no summary comes later.
    assert "2 of them were in no earlier alert." in body
    assert "dagster job backfill -j agent_job --from 2026-11-26-09:00 --to 2026-11-26-09:20" in body
    assert f"{WEBSERVER}/runs/run-3-ok" in body
    for hours in (1, 2, 25):
        resolve_recovery(pg_store)
        deliver(resources, START + timedelta(hours=hours))
    assert kinds(smtp_server) == ["first", "recovered"]
    assert pg_store.pending_alerts(100) == []


def test_after_recovery_a_new_failure_alerts_at_once(resources, smtp_server, pg_store):
    fail_window(pg_store, 0, START)
    deliver(resources, START)
    run_of_window(pg_store, 1, succeeded=True)
    resolve_recovery(pg_store)
    deliver(resources, START + timedelta(minutes=11))
    # Ten minutes after the last failure alert, well within its hour: a new streak.
    fail_window(pg_store, 2, START + timedelta(minutes=21))
    deliver(resources, START + timedelta(minutes=21))
    assert kinds(smtp_server) == ["first", "recovered", "first"]
    assert "09:20–09:30 UTC failed" in smtp_server.received[-1].message["Subject"]


def test_a_success_before_the_last_failure_does_not_end_the_streak(
    resources, smtp_server, pg_store
):
    run_of_window(pg_store, 0, succeeded=True)
    fail_window(pg_store, 1, START)
    deliver(resources, START)
    assert resolve_recovery(pg_store) is None
    deliver(resources, START + timedelta(hours=2))
    assert kinds(smtp_server) == ["first"]


def test_the_sweeper_finds_the_success_and_sends_the_recovered_email(
    resources, smtp_server, pg_store
):
    """Recovery is read from agent_runs: a success the success sensor never saw (the daemon
    was down) ends the streak at the sweeper's next tick."""
    fail_window(pg_store, 0, START)
    deliver(resources, START)
    run_of_window(pg_store, 1, succeeded=True)
    with instance_for_test() as instance:
        with build_sensor_context(instance=instance, resources=resources) as context:
            agent_runs_sweeper(context)
    assert kinds(smtp_server) == ["first", "recovered"]


def test_the_success_sensor_sends_the_recovered_email(resources, smtp_server, pg_store):
    fail_window(pg_store, 0, START)
    deliver(resources, START)
    run_id = run_of_window(pg_store, 1, succeeded=True)
    with instance_for_test() as instance:
        run = instance.add_run(DagsterRun(job_name="agent_job", run_id=run_id,
                                          status=DagsterRunStatus.SUCCESS))
        for _ in range(2):
            with build_run_status_sensor_context(
                sensor_name=agent_job_recovery_alert.name, dagster_instance=instance,
                dagster_run=run, resources=resources,
                dagster_event=DagsterEvent(DagsterEventType.RUN_SUCCESS.value, "agent_job"),
            ) as context:
                agent_job_recovery_alert(context)
    assert kinds(smtp_server) == ["first", "recovered"]


def test_an_email_that_may_not_have_gone_out_is_alerted_on_its_own(
    resources, smtp_server, pg_store
):
    fail_window(pg_store, 0, START)
    deliver(resources, START)
    # Within the failure streak's hour: not a failure, so not held for its summary.
    queue_unknown_email_alert(pg_store, window(1), "run-1", "the attempt died while sending")
    deliver(resources, START + timedelta(minutes=10))
    assert len(smtp_server.received) == 2
    assert "may not have gone out" in smtp_server.received[-1].message["Subject"]


def test_two_deliveries_at_once_send_a_streak_email_once(resources, smtp_server, pg_store):
    fail_window(pg_store, 0, START)
    now = START.replace(tzinfo=None)
    (streak,) = pg_store.streaks_to_deliver()
    # Another sensor evaluation holds the streak's email: this one sends nothing.
    assert pg_store.claim_streak_notice(streak["id"], timedelta(hours=1), now)
    assert deliver(resources, START) == []
    assert smtp_server.received == []


def test_a_summary_the_server_cannot_take_waits_and_a_rejected_one_is_not_retried(
    resources, smtp_server, pg_store
):
    fail_window(pg_store, 0, START)
    smtp_server.fail_with = lambda: "421 4.3.0 down for maintenance"
    deliver(resources, START)
    assert smtp_server.received == []
    smtp_server.fail_with = None
    deliver(resources, START + timedelta(minutes=5))  # the next tick: it goes out then
    assert kinds(smtp_server) == ["first"]

    fail_window(pg_store, 1, START + timedelta(minutes=10))
    smtp_server.fail_with = lambda: "554 5.7.1 rejected"
    attempts = smtp_server.attempts
    for minutes in (65, 70, 75):
        deliver(resources, START + timedelta(minutes=minutes))
    assert smtp_server.attempts == attempts + 1  # tried once, then given up
    assert kinds(smtp_server) == ["first"] and pg_store.pending_alerts(10) == []

    # The recovered email: the server down, then back.
    run_of_window(pg_store, 2, succeeded=True)
    resolve_recovery(pg_store)
    smtp_server.fail_with = lambda: "421 4.3.0 down for maintenance"
    deliver(resources, START + timedelta(minutes=80))
    smtp_server.fail_with = None
    deliver(resources, START + timedelta(minutes=85))
    deliver(resources, START + timedelta(minutes=90))
    assert kinds(smtp_server) == ["first", "recovered"]
