"""The local deployment as a user runs it: `dg dev` (webserver, daemon, code server) with the
repo's dagster.yaml and workspace.yaml, a backfill through the `dagster` CLI, and a launch
through the webserver's GraphQL API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from email import message_from_bytes, policy
from pathlib import Path

import pytest
from sqlalchemy import create_engine, select

from agent_pipeline.jobs import agent_job
from agent_pipeline.schema import agent_runs
from agent_pipeline_tests.conftest import CONFIG_VARIABLES
from agent_pipeline_tests.services import free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
STARTUP_SECONDS = 120
RUN_SECONDS = 120

pytestmark = pytest.mark.slow

RUN_PAGE_QUERY = """
query RunPage($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection {
      events {
        ... on ExecutionStepOutputEvent {
          stepKey
          metadataEntries { label ... on MarkdownMetadataEntry { mdStr } }
        }
      }
    }
  }
}
"""

LAUNCH_MUTATION = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""

RUN_STATUS_QUERY = """
query Status($runId: ID!) { runOrError(runId: $runId) { ... on Run { status } } }
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


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    assert "errors" not in answer, answer
    return answer["data"]


def wait_for(check, what: str, timeout: float, log: Path):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # not up yet
            value = None
        if value:
            return value
        time.sleep(1)
    pytest.fail(f"{what} within {timeout:.0f}s; dg dev log:\n{log.read_text()[-4000:]}")


@pytest.fixture
def local_dagster(tmp_path):
    """`dg dev` from a folder holding the repo's dagster.yaml and workspace.yaml."""
    for name in ("dagster.yaml", "workspace.yaml"):
        shutil.copy(REPO / name, tmp_path / name)
    # dg dev reads .env from its working directory, as the README tells users.
    (tmp_path / ".env").write_text("AGENT_INTERESTS=gardening, soups\n")
    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    env.update(DAGSTER_HOME=str(tmp_path), AGENT_PIPELINE_HOME=str(tmp_path / "agent"))
    port = free_port()
    log = tmp_path / "dg-dev.log"
    process = subprocess.Popen(
        [str(BIN / "dg"), "dev", "-w", "workspace.yaml", "--port", str(port)],
        cwd=tmp_path, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for(
            lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5),
            "the webserver did not answer", STARTUP_SECONDS, log,
        )
        yield {"port": port, "cwd": tmp_path, "env": env, "log": log}
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        # Run workers started by the daemon share the session; none may outlive the test.
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def agent_rows(home: Path) -> list[dict]:
    engine = create_engine(f"sqlite:///{home / 'agent' / 'agent_runs.sqlite3'}")
    try:
        with engine.connect() as connection:
            query = select(agent_runs).order_by(agent_runs.c.id)
            return [dict(row) for row in connection.execute(query).mappings()]
    finally:
        engine.dispose()


def test_backfill_from_the_cli_and_launch_from_the_ui(local_dagster):
    port, cwd, log = local_dagster["port"], local_dagster["cwd"], local_dagster["log"]
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
        cwd=cwd, env=local_dagster["env"], capture_output=True, text=True, timeout=120,
    )
    assert backfill.returncode == 0, backfill.stderr
    assert "Launched backfill job" in backfill.stdout

    def three_succeeded():
        rows = [r for r in agent_rows(cwd) if r["partition_key"] in backfilled]
        return len(rows) == 3 and all(r["email_status"] == "sent" for r in rows) and rows

    rows = wait_for(three_succeeded, "the backfill did not finish", RUN_SECONDS * 3, log)
    # Rows in insertion order: the queue ran the backfill's windows oldest first.
    assert [r["partition_key"] for r in rows] == backfilled
    assert all(r["status"] == "succeeded" and len(r["result"]["top_five"]) == 5 for r in rows)
    # The interests from .env reached the agent.
    for row in rows:
        assert {o["id"] for o in row["result"]["top_five"][:2]} == {"gr-1", "ck-1"}

    # What the Launchpad sends when a user picks a window and clicks Launch.
    launch = graphql(port, LAUNCH_MUTATION, {
        "params": {
            "selector": {
                "repositoryLocationName": "agent_pipeline",
                "repositoryName": "__repository__",
                "jobName": "agent_job",
            },
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": launched}]},
        }
    })["launchRun"]
    assert launch["__typename"] == "LaunchRunSuccess", launch
    run_id = launch["run"]["runId"]

    def finished():
        status = graphql(port, RUN_STATUS_QUERY, {"runId": run_id})["runOrError"]["status"]
        return status if status in ("SUCCESS", "FAILURE", "CANCELED") else None

    assert wait_for(finished, "the launched run did not finish", RUN_SECONDS, log) == "SUCCESS"
    events = graphql(port, RUN_PAGE_QUERY, {"runId": run_id})["logsForRun"]["events"]
    (top_five,) = [
        entry["mdStr"]
        for event in events if event.get("stepKey") == "rank_top_five"
        for entry in event["metadataEntries"] if entry["label"] == "top_five"
    ]
    assert top_five.startswith("| # | score | title | url |") and top_five.count("\n") == 6
    (row,) = [r for r in agent_rows(cwd) if r["partition_key"] == launched]
    assert row["dagster_run_id"] == run_id and row["status"] == "succeeded"
    # The schedule is on in this instance too: count only the emails of the test's windows.
    windows = [
        message_from_bytes(path.read_bytes(), policy=policy.default)["X-Agent-Pipeline-Window"]
        for path in (cwd / "agent" / "outbox").glob("*.eml")
    ]
    assert sorted(w for w in windows if w in keys) == keys
    assert "DeprecationWarning" not in log.read_text()
    assert "supersed" not in log.read_text().lower()
