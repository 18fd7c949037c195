"""The local deployment as a user runs it: `make dev` (code server, webserver, daemon) with the
repo's dagster.yaml and workspace.yaml, a backfill through the `dagster` CLI, a launch through
the webserver's GraphQL API, and a run worker killed half way."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from email import message_from_bytes, policy

import pytest

from agent_pipeline.jobs import agent_job
from agent_pipeline_tests.helpers import (
    RUN_ENDED,
    RUN_SECONDS,
    agent_rows,
    hanging_window,
    outbox_windows,
    rerun_succeeds_after,
    run_worker_pid,
)
from agent_pipeline_tests.topology import (
    BIN,
    graphql,
    launch_window,
    local_dev,
    run_status,
    wait_for,
)

pytestmark = pytest.mark.slow

RUN_PAGE_QUERY = """
query RunPage($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection {
      events {
        ... on ExecutionStepOutputEvent {
          stepKey
          metadataEntries { label ... on TableMetadataEntry { table { records } } }
        }
      }
    }
  }
}
"""

SCHEDULE_QUERY = """
query {
  scheduleOrError(scheduleSelector: {
    repositoryLocationName: "agent_pipeline", repositoryName: "__repository__",
    scheduleName: "agent_job_schedule"
  }) {
    ... on Schedule { cronSchedule executionTimezone scheduleState { status } }
  }
}
"""


def test_backfill_from_the_cli_and_launch_from_the_ui(tmp_path):
    # make dev reads .env from its working directory, as the README tells users.
    (tmp_path / ".env").write_text("AGENT_INTERESTS=gardening, soups\nEMAIL_ONLY_NEW=false\n")
    with local_dev(tmp_path, {"AGENT_PIPELINE_HOME": str(tmp_path / "agent")}) as dev:
        port = dev.web_port
        schedule = graphql(port, SCHEDULE_QUERY)["scheduleOrError"]
        assert schedule == {
            "cronSchedule": "*/10 * * * *",
            "executionTimezone": "UTC",
            "scheduleState": {"status": "RUNNING"},
        }

        # Windows a day back, so that no schedule tick during the test touches them.
        keys = agent_job.partitions_def.get_partition_keys()[-150:-146]
        backfilled, launched = keys[:3], keys[3]
        backfill = subprocess.run(
            [str(BIN / "dagster"), "job", "backfill", "-j", "agent_job",
             "--from", backfilled[0], "--to", backfilled[-1], "--noprompt"],
            cwd=tmp_path, env=dev.env, capture_output=True, text=True, timeout=120,
        )
        assert backfill.returncode == 0, backfill.stderr
        assert "Launched backfill job" in backfill.stdout

        def three_succeeded():
            rows = [r for r in agent_rows(tmp_path) if r["partition_key"] in backfilled]
            # A row ends once send_email has settled its email: wait for both.
            done = all(
                r["status"] != "running" and r["email_status"] not in ("not_sent", "sending")
                for r in rows
            )
            return len(rows) == 3 and done and rows

        rows = wait_for(
            three_succeeded, "the backfill did not finish", RUN_SECONDS * 3, dev.processes
        )
        # Rows in insertion order: the queue ran the backfill's windows oldest first.
        assert [r["partition_key"] for r in rows] == backfilled
        assert all(r["status"] == "succeeded" for r in rows)
        # A backfill sends no email by default (BACKFILL_EMAIL=none), and its rows say so.
        assert {(r["email_status"], r["email_error"]) for r in rows} == {("skipped", "backfill")}
        # The interests from .env reached the agent: the two items of the feed's last hour
        # that mention them (each replay has an id of its own: gr-1.<n>), and none of the 22
        # that mention neither.
        for row in rows:
            assert {o["id"].split(".")[0] for o in row["result"]["top_five"]} == {"gr-1", "ck-1"}

        run_id = launch_window(port, launched)
        status = wait_for(lambda: run_status(port, run_id) in RUN_ENDED and
                          run_status(port, run_id), "the launched run did not finish",
                          RUN_SECONDS, dev.processes)
        assert status == "SUCCESS"
        events = graphql(port, RUN_PAGE_QUERY, {"runId": run_id})["logsForRun"]["events"]
        (top_five,) = [
            [json.loads(record) for record in entry["table"]["records"]]
            for event in events if event.get("stepKey") == "rank_top_five"
            for entry in event["metadataEntries"] if entry["label"] == "top_five"
        ]
        (row,) = [r for r in agent_rows(tmp_path) if r["partition_key"] == launched]
        assert row["dagster_run_id"] == run_id and row["status"] == "succeeded"
        # The run page's table is the row's top five.
        assert [(t["rank"], t["title"]) for t in top_five] == [
            (rank, outcome["title"]) for rank, outcome in enumerate(row["result"]["top_five"], 1)
        ]
        assert len(top_five) == 2
        # The schedule is on in this instance too: count only the emails of the test's windows.
        # The launched window's is the one: the backfilled windows sent none.
        assert [w for w in outbox_windows(tmp_path) if w in keys] == [launched]
        # Its link to the run is on the port this stack serves, not the default 3000.
        (email,) = [
            mail for path in (tmp_path / "agent" / "outbox").glob("*.eml")
            if (mail := message_from_bytes(path.read_bytes(), policy=policy.default))[
                "X-Agent-Pipeline-Window"] == launched
        ]
        text = email.get_body(("plain",)).get_content()
        assert f"http://127.0.0.1:{port}/runs/{run_id}" in text
        log = dev.processes.logs()
    assert "DeprecationWarning" not in log
    assert "supersed" not in log.lower()


def test_a_killed_worker_leaves_a_failed_row_and_the_window_can_run_again(tmp_path):
    flag, window, settings = hanging_window(tmp_path)
    with local_dev(tmp_path, settings) as dev:
        port = dev.web_port
        run_id = launch_window(port, window)
        # The row is written and the agent hangs: the worker is half way.
        def hanging_in_the_agent():
            rows = [r for r in agent_rows(tmp_path) if r["dagster_run_id"] == run_id]
            return rows and rows[0]["status"] == "running" and run_worker_pid(port, run_id)

        pid = wait_for(hanging_in_the_agent, "the run did not start", RUN_SECONDS, dev.processes)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()

        def row_failed():
            (row,) = [r for r in agent_rows(tmp_path) if r["dagster_run_id"] == run_id]
            return row["status"] == "failed" and row

        row = wait_for(row_failed, "the killed run's row was not marked failed", 120, dev.processes)
        seconds = time.monotonic() - killed_at
        assert row["error_message"].startswith("run killed or lost: ")
        assert "signal 9" in row["error_message"] and row["completed_at"] is not None
        assert run_status(port, run_id) == "FAILURE"
        print(f"row failed {seconds:.1f} s after kill -9")

        # Re-run the window: it succeeds and emails once.
        rerun_succeeds_after(dev, flag, window, run_id)
    assert outbox_windows(tmp_path).count(window) == 1


def test_ctrl_c_stops_the_code_server_the_webserver_and_the_daemon(tmp_path):
    with local_dev(tmp_path, {"AGENT_PIPELINE_HOME": str(tmp_path / "agent")}) as dev:
        (_, supervisor), = dev.processes.started
        children = subprocess.run(
            ["pgrep", "-P", str(supervisor.pid)], capture_output=True, text=True,
        ).stdout.split()
        assert len(children) == 3  # code server, webserver, daemon
        os.kill(supervisor.pid, signal.SIGINT)  # only the supervisor: it stops the rest
        assert supervisor.wait(timeout=60) == 0

        def gone(pid: str) -> bool:
            return not os.path.exists(f"/proc/{pid}") or (
                open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] == "Z"
            )

        assert all(gone(pid) for pid in children)


def test_make_dev_outside_its_folder_says_where_to_run_it(tmp_path):
    from agent_pipeline_tests.topology import REPO

    outcome = subprocess.run(
        [str(BIN / "python"), str(REPO / "deploy" / "dev.py")], cwd=tmp_path,
        capture_output=True, text=True, timeout=60,
    )
    assert outcome.returncode == 2
    assert "run it from the folder holding dagster.yaml" in outcome.stderr


def test_make_dev_with_a_bad_variable_names_it_first_and_starts_nothing(tmp_path):
    from agent_pipeline_tests.topology import REPO, copy_local_instance, process_env

    copy_local_instance(tmp_path)
    (tmp_path / ".env").write_text("SMTP_HOST=mail.example.com\nSMTP_PORT=99999\n")
    outcome = subprocess.run(
        [str(BIN / "python"), str(REPO / "deploy" / "dev.py")], cwd=tmp_path,
        env=process_env({}, tmp_path), capture_output=True, text=True, timeout=60,
    )
    assert outcome.returncode == 2
    assert outcome.stderr.splitlines()[0] == (
        "deploy/dev.py: SMTP_PORT: must be at most 65535, got 99999 "
        "(set in .env or the environment)"
    )
    assert not (tmp_path / ".dagster_home").exists()  # no code server was started
