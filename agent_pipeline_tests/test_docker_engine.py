"""The production stack on a real Docker engine: docker-compose.yml and the Dockerfile as they
are, `up -d --build` under a project name, ports, network and volume of the test's own (nothing
of a user's stack is touched), on the official images or, where no registry answers, stand-ins
built from Debian packages (engine.py). Skipped, with the reason, only where no engine answers
and none can be started (not root)."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from agent_pipeline_tests.engine import (
    USER_CODE_IMAGE,
    EngineUnavailable,
    Stack,
    code_location_loaded,
    compose_stack,
    docker,
    wait_until,
)
from agent_pipeline_tests.helpers import window_keys
from agent_pipeline_tests.topology import graphql, launch_window, run_status

pytestmark = [pytest.mark.slow, pytest.mark.docker]

PROJECT = "agent_pipeline_engine_test"
ENDED = ("SUCCESS", "FAILURE", "CANCELED")
DAEMON_HEALTH_QUERY = """
{ instance { daemonHealth { allDaemonStatuses { daemonType healthy } } } }
"""
SCHEDULE_QUERY = """
{ schedulesOrError(repositorySelector: {repositoryLocationName: "agent_pipeline",
                                        repositoryName: "__repository__"}) {
    ... on Schedules { results { name scheduleState { status } } } } }
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Stack]:
    try:
        with compose_stack(tmp_path_factory.mktemp("engine"), PROJECT) as running:
            yield running
    except EngineUnavailable as exc:
        pytest.skip(str(exc))


def _container_starts() -> subprocess.Popen:
    """The engine's container start events from now on, a JSON object a line."""
    return subprocess.Popen(
        ["docker", "events", "--filter", "type=container", "--filter", "event=start",
         "--format", "{{json .}}"],
        stdout=subprocess.PIPE, text=True,
    )


def _ended(events: subprocess.Popen) -> list[dict]:
    """The events still unread, once the watch is stopped."""
    events.terminate()
    return [json.loads(line) for line in events.communicate(timeout=10)[0].splitlines()]


def _delivered(stack: Stack) -> str:
    """Every message the mail catcher has taken, one after another."""
    return docker("exec", stack.container("mailpit"), "sh", "-c",
                  "cat /var/mail/catcher/new/*").stdout


def _daemons_healthy(port: int) -> set[str]:
    statuses = graphql(port, DAEMON_HEALTH_QUERY)["instance"]["daemonHealth"]["allDaemonStatuses"]
    return {status["daemonType"] for status in statuses if status["healthy"]}


def _wait_for_run(port: int, run_id: str, timeout: float = 240) -> str:
    return wait_until(lambda: (status := run_status(port, run_id)) in ENDED and status,
                      f"run {run_id} to end", timeout)


def test_every_service_is_healthy_and_the_code_location_loads(stack):
    for service in ("postgres", "redis", "user_code"):
        container = stack.container(service)
        wait_until(lambda c=container: docker("inspect", "-f", "{{.State.Health.Status}}", c)
                   .stdout.strip() == "healthy", f"{service} healthy", 120)
    for service in ("mailpit", "webserver", "daemon"):
        state = docker("inspect", "-f", "{{.State.Status}}", stack.container(service))
        assert state.stdout.strip() == "running", service
    assert code_location_loaded(stack.web_port)
    # The code server and the run containers run as the image's own user, not root.
    user = docker("exec", stack.container("user_code"), "id", "-un").stdout.strip()
    assert user == "dagster"


def test_a_launch_runs_in_a_container_of_its_own_and_emails_once(stack):
    window = window_keys(3)[0]
    events = _container_starts()
    try:
        run_id = launch_window(stack.web_port, window)  # as the Launchpad does
        assert _wait_for_run(stack.web_port, run_id) == "SUCCESS"
    finally:
        started = _ended(events)
    (run_container,) = [e["Actor"]["Attributes"] for e in started
                        if e["Actor"]["Attributes"].get("dagster/run_id") == run_id]
    assert run_container["image"] == USER_CODE_IMAGE
    row = next(r for r in stack.rows() if r["dagster_run_id"] == run_id)
    assert (row["partition_key"], row["status"], row["email_status"]) == (
        window, "succeeded", "sent")
    assert _delivered(stack).count(f"X-Agent-Pipeline-Window: {window}") == 1
    # auto_remove: the run's container is gone once it ended.
    wait_until(lambda: docker("ps", "-aq", "--filter", f"label=dagster/run_id={run_id}")
               .stdout.strip() == "", "the run container to be removed", 60)


def test_a_cli_backfill_from_inside_the_stack(stack):
    first, _, last = window_keys(8)[:3]
    stack.compose("exec", "-T", "webserver", "dagster", "job", "backfill", "-w",
                  "workspace.yaml", "-j", "agent_job", "--from", first, "--to", last,
                  "--noprompt")
    windows = set(window_keys(8)[:3])

    def backfilled() -> list[dict] | None:
        found = [r for r in stack.rows() if r["partition_key"] in windows]
        return found if len(found) == 3 and all(r["status"] != "running" for r in found) else None

    rows = wait_until(backfilled, "the three backfilled windows", 300)
    assert [r["status"] for r in rows] == ["succeeded"] * 3
    assert {r["email_status"] for r in rows} == {"skipped"}  # BACKFILL_EMAIL=none


def test_a_killed_run_container_fails_its_row_and_the_retry_emails_once(stack):
    window = window_keys(5)[0]
    events = _container_starts()
    try:
        run_id = launch_window(stack.web_port, window)
        for line in events.stdout:  # the run's container, as soon as it starts
            event = json.loads(line)
            if event["Actor"]["Attributes"].get("dagster/run_id") == run_id:
                killed = event["id"]
                break
        deadline = time.monotonic() + 120
        while run_status(stack.web_port, run_id) not in ("STARTED", *ENDED):
            assert time.monotonic() < deadline, "the run never started"
            time.sleep(0.05)  # the ops take a second or two: kill while they run
        docker("kill", killed)
        assert _wait_for_run(stack.web_port, run_id) == "FAILURE"

        def retried() -> dict | None:
            rows = [r for r in stack.rows() if r["partition_key"] == window]
            done = [r for r in rows if r["dagster_run_id"] != run_id and r["status"] != "running"]
            return done[0] if done else None

        retry = wait_until(retried, "Dagster's retry of the window", 300)
    finally:
        later = _ended(events)
    # The failure sensor writes the row of a run killed before its first op could.
    failed = wait_until(lambda: next((r for r in stack.rows() if r["dagster_run_id"] == run_id
                                      and r["status"] == "failed"), None),
                        "the killed run's row to be failed", 120)
    # Run monitoring's own account names the cause: the run's container is gone (killed, then
    # removed by auto_remove), not the launcher's last engine event.
    assert failed["error_message"].startswith("run killed or lost: "), failed["error_message"]
    assert "container" in failed["error_message"], failed["error_message"]
    assert (retry["status"], retry["email_status"]) == ("succeeded", "sent")
    # The retry ran in a container of its own.
    assert any(e["Actor"]["Attributes"].get("dagster/run_id") == retry["dagster_run_id"]
               and e["id"] != killed for e in later)
    assert _delivered(stack).count(f"X-Agent-Pipeline-Window: {window}") == 1


def test_restarting_the_daemon_and_the_code_server_leaves_no_row_running(stack):
    stack.compose("restart", "daemon", "user_code")
    container = stack.container("user_code")
    wait_until(lambda: docker("inspect", "-f", "{{.State.Health.Status}}", container)
               .stdout.strip() == "healthy", "the code server healthy again", 120)
    window = window_keys(6)[0]
    # The webserver finds the code server again on its next look; until then a launch fails.
    run_id = wait_until(lambda: launch_window(stack.web_port, window), "a launch to be taken", 120)
    assert _wait_for_run(stack.web_port, run_id) == "SUCCESS"
    schedules = graphql(stack.web_port, SCHEDULE_QUERY)["schedulesOrError"]["results"]
    assert {s["name"]: s["scheduleState"]["status"] for s in schedules}["agent_job_schedule"] == (
        "RUNNING")
    # The restarted daemon's scheduler and sensors beat again: the schedule goes on.
    wait_until(lambda: _daemons_healthy(stack.web_port) >= {"SCHEDULER", "SENSOR"},
               "the restarted daemon's scheduler and sensors", 120)
    assert [r for r in stack.rows() if r["status"] == "running"] == []


def test_down_and_up_keeps_runs_rows_and_settings(stack):
    rows_before = stack.rows()
    run_ids = [r["dagster_run_id"] for r in rows_before if r["dagster_run_id"]]
    stack.compose("down")  # volumes kept
    stack.compose("up", "-d")
    wait_until(lambda: code_location_loaded(stack.web_port), "the code location after up")
    assert stack.rows() == rows_before
    for run_id in run_ids:
        assert run_status(stack.web_port, run_id) in ENDED
    schedules = graphql(stack.web_port, SCHEDULE_QUERY)["schedulesOrError"]["results"]
    assert {s["name"]: s["scheduleState"]["status"] for s in schedules}["agent_job_schedule"] == (
        "RUNNING")


def test_the_webserver_and_daemon_logs_hold_no_traceback_or_deprecation(stack):
    for service in ("webserver", "daemon", "user_code"):
        logs = stack.compose("logs", "--no-color", service).stdout
        assert "Traceback" not in logs, f"{service}: {logs[-3000:]}"
        assert "Deprecat" not in logs, f"{service}: {logs[-3000:]}"
