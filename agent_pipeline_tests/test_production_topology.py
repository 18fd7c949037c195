"""The production topology of docker-compose.yml, as processes on this machine (see
topology.py): launches through the GraphQL client, a CLI backfill, and the queue."""

from __future__ import annotations

import subprocess

import pytest
from dagster import DagsterInstance, DagsterRunStatus, RunsFilter
from dagster_graphql import DagsterGraphQLClient
from sqlalchemy import create_engine, select
from sqlalchemy.engine import make_url

from agent_pipeline.alerts import window_text
from agent_pipeline.jobs import agent_job
from agent_pipeline.schema import agent_alerts
from agent_pipeline_tests.helpers import (
    export_storage_env,
    pipeline_settings,
    rows,
    stop_the_schedule,
    wait_for_runs,
)
from agent_pipeline_tests.services import TcpProxy, free_port
from agent_pipeline_tests.topology import BIN, production_topology, wait_for

pytestmark = pytest.mark.slow


def test_the_production_topology_runs_launches_and_backfills_one_at_a_time(
    stack, postgres_url, smtp_server
):
    client, instance = stack["client"], stack["instance"]
    # Windows a day back, so that no schedule tick during the test touches them.
    keys = agent_job.partitions_def.get_partition_keys()[-160:-154]

    # 1. A launch through dagster-graphql's client, as the UI's Launchpad does.
    first = client.submit_job_execution(
        "agent_job", repository_location_name="agent_pipeline",
        tags={"dagster/partition": keys[0]},
    )
    (record,) = wait_for_runs(stack, [first])
    assert record.dagster_run.status == DagsterRunStatus.SUCCESS, stack["processes"].logs()

    # 2. A three-window backfill through the CLI.
    backfill = subprocess.run(
        [str(BIN / "dagster"), "job", "backfill", "-j", "agent_job", "-w", "workspace.yaml",
         "--from", keys[1], "--to", keys[3], "--noprompt"],
        cwd=stack["cwd"], env=stack["env"], capture_output=True, text=True, timeout=120,
    )
    assert backfill.returncode == 0, backfill.stderr
    backfilled = [
        r.dagster_run.run_id for r in instance.get_run_records()
        if r.dagster_run.tags.get("dagster/partition") in keys[1:4]
    ]
    assert len(backfilled) == 3

    # 3. Two launches at once: the second waits in the queue for the first.
    both = [
        client.submit_job_execution(
            "agent_job", repository_location_name="agent_pipeline",
            tags={"dagster/partition": key},
        )
        for key in keys[4:6]
    ]
    records = wait_for_runs(stack, [first, *backfilled, *both], timeout=240)
    assert {r.dagster_run.status for r in records} == {DagsterRunStatus.SUCCESS}

    # Never two at once: each run started after the one before it ended.
    spans = sorted((r.start_time, r.end_time, r.dagster_run.tags["dagster/partition"])
                   for r in records)
    for (_, previous_end, _), (start, _, _) in zip(spans, spans[1:], strict=False):
        assert start >= previous_end
    # Queued runs start oldest first: the backfill in window order, then the two launches.
    assert [window for _, _, window in spans] == keys

    # The schedule is on here too; a tick during the test adds a run of the latest window,
    # so only the test's windows are counted.
    found = [r for r in rows(postgres_url) if r["partition_key"] in keys]
    assert sorted(r["partition_key"] for r in found) == keys
    assert all(r["status"] == "succeeded" and r["email_status"] == "sent" for r in found)
    windows = [m.message["X-Agent-Pipeline-Window"] for m in smtp_server.received]
    assert sorted(w for w in windows if w in keys) == keys
    logs = stack["processes"].logs()
    assert "DeprecationWarning" not in logs


def test_postgres_down_at_the_start_then_run_retries_pick_the_window_up(
    tmp_path, clean_env, postgres_url, redis_url, smtp_server
):
    """agent_runs' database is unreachable when the run starts: the run fails fast naming it;
    once the database answers again, Dagster's run retry (deploy/dagster.yaml) succeeds."""
    database = make_url(postgres_url)
    proxy_port = free_port()
    proxied_url = database.set(port=proxy_port).render_as_string(hide_password=False)
    settings = pipeline_settings(tmp_path, proxied_url, redis_url, smtp_server)
    window = agent_job.partitions_def.get_partition_keys()[-170]
    # Dagster's own storage stays on the real port; only agent_runs goes through the proxy.
    with production_topology(tmp_path, postgres_url, settings) as topology:
        export_storage_env(clean_env, topology)
        client = DagsterGraphQLClient("127.0.0.1", port_number=topology.web_port)
        # A run-status sensor's first tick starts from "now"; it needs its database for that.
        # So the database is up until the failure sensor has ticked once, then goes away.
        proxy = TcpProxy(proxy_port, database.port or 5432)
        daemon_log = tmp_path / "daemon.log"
        # Any completed tick ("skipped": nothing to do, or its cursor just set) will do.
        wait_for(lambda: "Sensor agent_runs_on_run_failure skipped" in daemon_log.read_text(),
                 "the failure sensor did not tick", 120, topology.processes)
        proxy.close()
        with DagsterInstance.from_config(str(topology.home)) as instance:
            first = client.submit_job_execution(
                "agent_job", repository_location_name="agent_pipeline",
                tags={"dagster/partition": window},
            )
            (record,) = wait_for_runs({"instance": instance, "processes": topology.processes},
                                      [first])
            assert record.dagster_run.status == DagsterRunStatus.FAILURE
            proxy = TcpProxy(proxy_port, database.port or 5432)  # the database is back
            try:
                def window_succeeded_and_every_run_has_its_row():
                    runs = instance.get_runs(
                        filters=RunsFilter(tags={"dagster/partition": window})
                    )
                    found = [r for r in rows(postgres_url) if r["partition_key"] == window]
                    done = any(run.status == DagsterRunStatus.SUCCESS for run in runs)
                    # The failure sensor writes the row of a run that failed before its ops.
                    return done and len(found) == len(runs) and (runs, found)

                runs, rows_of_window = wait_for(
                    window_succeeded_and_every_run_has_its_row,
                    "no retry succeeded, or a run has no row", 180, topology.processes,
                )
                # The error's text is in the failure events' data, as the UI shows it.
                failure_logs = " ".join(entry.to_json() for entry in instance.all_logs(first))
            finally:
                proxy.close()
    assert "cannot reach the agent_runs database" in failure_logs
    assert "(DATABASE_URL)" in failure_logs
    retry = next(run for run in runs if run.status == DagsterRunStatus.SUCCESS)
    assert retry.tags.get("dagster/retry_number") in ("1", "2")
    by_run = {r["dagster_run_id"]: r for r in rows_of_window}
    assert by_run[retry.run_id]["status"] == "succeeded"
    assert by_run[first]["status"] == "failed"
    assert by_run[first]["error_message"].startswith(
        "run failed: agent_pipeline.errors.DatabaseUnavailableError: cannot reach the "
        "agent_runs database"
    )
    # A schedule tick during the test may email its own window: count this window's only.
    windows = [m.message["X-Agent-Pipeline-Window"] for m in smtp_server.received]
    assert windows.count(window) == 1


def test_a_window_that_fails_for_good_alerts_once_after_its_retries(
    tmp_path, clean_env, postgres_url, redis_url, smtp_server
):
    """The agent fails on every attempt: Dagster retries the run twice (deploy/dagster.yaml),
    and only the last failure sends the alert."""
    settings = pipeline_settings(
        tmp_path, postgres_url, redis_url, smtp_server,
        AGENT="agent_pipeline_tests.sample_agents:broken",
        ALERT_EMAIL_TO="oncall@example.com",
        DAGSTER_WEBSERVER_URL="https://dagster.example.com",
    )
    window = agent_job.partitions_def.get_partition_keys()[-180]
    with production_topology(tmp_path, postgres_url, settings) as topology:
        export_storage_env(clean_env, topology)
        # A tick's failing run that failed for good first would take the failure streak's
        # first alert, and this window's would wait for the hour's summary.
        stop_the_schedule(topology.web_port)
        daemon_log = tmp_path / "daemon.log"
        # A run-status sensor only sees failures after its first tick.
        wait_for(lambda: "Sensor agent_job_failure_alert skipped" in daemon_log.read_text(),
                 "the alert sensor did not tick", 120, topology.processes)
        client = DagsterGraphQLClient("127.0.0.1", port_number=topology.web_port)
        client.submit_job_execution(
            "agent_job", repository_location_name="agent_pipeline",
            tags={"dagster/partition": window},
        )

        def alerts_of_window():
            return [m for m in smtp_server.received
                    if m.message["X-Agent-Pipeline-Window"] == window]

        wait_for(alerts_of_window, "no alert arrived", 240, topology.processes)
        with DagsterInstance.from_config(str(topology.home)) as instance:
            runs = instance.get_runs(filters=RunsFilter(tags={"dagster/partition": window}))
    # The sensor reads failures in order: by the time the last one's alert is out, the
    # earlier attempts have been seen, and sent nothing.
    assert [run.status for run in runs] == [DagsterRunStatus.FAILURE] * 3
    (alert,) = alerts_of_window()
    last = next(run for run in runs if run.tags.get("dagster/retry_number") == "2")
    assert alert.rcpt_tos == ["oncall@example.com"]
    body = alert.message.get_content()
    assert "after 3 attempts" in body
    assert "op run_agent failed: RuntimeError: the agent fell over" in body
    assert f"https://dagster.example.com/runs/{last.run_id}" in body


def test_a_broken_agent_alerts_once_then_says_when_it_recovers(
    tmp_path, clean_env, postgres_url, redis_url, smtp_server
):
    """An agent with an expired key fails three windows in a row, then is fixed: one alert
    at the first failure, no summary within the hour (ALERT_REPEAT_MINUTES=60), and one
    recovered email once a window succeeds, as the SMTP server receives them."""
    flag = tmp_path / "key-expired"
    flag.touch()
    settings = pipeline_settings(
        tmp_path, postgres_url, redis_url, smtp_server,
        AGENT="agent_pipeline_tests.sample_agents:broken_while_flagged",
        BROKEN_FLAG=str(flag),
        ALERT_EMAIL_TO="oncall@example.com",
        CATCH_UP_HOURS="0",
    )
    # Retries off: each failure is final at once (the retries' own path is tested above).
    no_retries = {"run_retries": {"enabled": False}}
    failing = agent_job.partitions_def.get_partition_keys()[-200:-197]
    fixed = agent_job.partitions_def.get_partition_keys()[-197]
    with production_topology(
        tmp_path, postgres_url, settings, instance_changes=no_retries
    ) as topology:
        export_storage_env(clean_env, topology)
        stop_the_schedule(topology.web_port)
        daemon_log = tmp_path / "daemon.log"
        # Run-status sensors only see runs that end after their first tick.
        for sensor in ("agent_job_failure_alert", "agent_job_recovery_alert"):
            wait_for(lambda s=sensor: f"Sensor {s} skipped" in daemon_log.read_text(),
                     f"{sensor} did not tick", 120, topology.processes)
        client = DagsterGraphQLClient("127.0.0.1", port_number=topology.web_port)

        def alerts():  # the fixed window's digest goes to EMAIL_TO, through the same server
            return [m.message for m in smtp_server.received
                    if m.rcpt_tos == ["oncall@example.com"]]

        def launch(window):
            return client.submit_job_execution(
                "agent_job", repository_location_name="agent_pipeline",
                tags={"dagster/partition": window},
            )

        with DagsterInstance.from_config(str(topology.home)) as instance:
            stack = {"instance": instance, "processes": topology.processes}
            records = wait_for_runs(stack, [launch(window) for window in failing])
            assert {r.dagster_run.status for r in records} == {DagsterRunStatus.FAILURE}
            # Every failure seen by the alert sensor, the first alert out.
            wait_for(lambda: len(alert_rows(postgres_url)) == 3 and alerts(),
                     "the failures were not alerted", 120, topology.processes)
            flag.unlink()  # the key renewed
            (record,) = wait_for_runs(stack, [launch(fixed)])
            assert record.dagster_run.status == DagsterRunStatus.SUCCESS
            wait_for(lambda: len(alerts()) >= 2, "no recovered email", 120,
                     topology.processes)
            # One more pass of the alert sensors: nothing more goes out.
            ticks = daemon_log.read_text().count("agent_job_recovery_alert")
            wait_for(lambda: daemon_log.read_text().count("agent_job_recovery_alert") > ticks,
                     "the recovery sensor did not tick again", 120, topology.processes)
        first, recovered = alerts()
    assert first["Subject"] == (
        f"agent_pipeline: window {window_text(failing[0])} failed after 1 attempt"
    )
    assert "LLM API: 401 the API key has expired" in first.get_content()
    assert recovered["Subject"] == (
        f"agent_pipeline: agent_job recovered, window {window_text(fixed)} succeeded"
    )
    body = " ".join(recovered.get_content().split())
    assert f"failing since window {window_text(failing[0])}: 3 windows failed for good" in body
    assert "2 of them were in no earlier alert." in body


def alert_rows(database_url: str) -> list[dict]:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            return [dict(r) for r in connection.execute(select(agent_alerts)).mappings()]
    finally:
        engine.dispose()


def test_a_run_that_hangs_is_ended_by_run_monitoring_and_the_queue_moves_on(
    tmp_path, clean_env, postgres_url, redis_url, smtp_server
):
    """deploy/dagster.yaml ends any run after 20 minutes (run monitoring's
    max_runtime_seconds); 10 seconds here, so that the path takes a minute, not twenty. The
    limit is the instance's, not a run tag's, so that a schedule tick's run of the same hanging
    agent cannot hold the queue for 20 minutes either."""
    settings = pipeline_settings(
        tmp_path, postgres_url, redis_url, smtp_server,
        AGENT="agent_pipeline_tests.sample_agents:hangs",
    )
    hung_window, next_window = agent_job.partitions_def.get_partition_keys()[-191:-189]
    ten_seconds = {"run_monitoring": {"max_runtime_seconds": 10}}
    with production_topology(
        tmp_path, postgres_url, settings, instance_changes=ten_seconds
    ) as topology:
        export_storage_env(clean_env, topology)
        client = DagsterGraphQLClient("127.0.0.1", port_number=topology.web_port)
        hung, queued = (
            client.submit_job_execution(
                "agent_job", repository_location_name="agent_pipeline",
                tags={"dagster/partition": window},
            )
            for window in (hung_window, next_window)
        )
        with DagsterInstance.from_config(str(topology.home)) as instance:
            (record,) = wait_for_runs(
                {"instance": instance, "processes": topology.processes}, [hung]
            )
            messages = [entry.message for entry in instance.all_logs(hung)]

            # One run at a time: the run queued behind the hung one starts once it has ended.
            def queued_run_left_the_queue():
                run = instance.get_run_by_id(queued)
                return run.status != DagsterRunStatus.QUEUED

            wait_for(queued_run_left_the_queue, "the queue did not move on", 120,
                     topology.processes)

        def row_failed():
            found = [r for r in rows(postgres_url) if r["dagster_run_id"] == hung]
            return found and found[0]["status"] == "failed" and found[0]

        row = wait_for(row_failed, "the hung run's row was not failed", 60, topology.processes)
    # Dagster fails the run; when the worker's own cancel event lands after that failure, the
    # run ends canceled instead (a race inside Dagster; the sweeper's alert covers it).
    assert record.dagster_run.status in (DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED)
    assert "Exceeded maximum runtime of 10 seconds." in messages
    assert row["partition_key"] == hung_window
    assert row["completed_at"] is not None
    # The run's own reason, not the op's interruption.
    assert row["error_message"] == (
        "run terminated: Canceling due to exceeding maximum runtime of 10 seconds."
    )
