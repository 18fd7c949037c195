"""The production topology of docker-compose.yml, as processes on this machine (no Docker
engine here): a gRPC code server, the webserver and the daemon on deploy/workspace.yaml and
deploy/dagster.yaml, with Postgres storage, and only the run launcher swapped for Dagster's
default one (runs as subprocesses of the code server instead of containers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dagster import DagsterInstance, DagsterRunStatus
from dagster_graphql import DagsterGraphQLClient
from sqlalchemy.engine import make_url

from agent_pipeline.jobs import agent_job
from agent_pipeline_tests.conftest import CONFIG_VARIABLES
from agent_pipeline_tests.services import free_port
from agent_pipeline_tests.test_pipeline import rows

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}

pytestmark = pytest.mark.slow


class Processes:
    """Started processes, each in a session of its own, all stopped by their own ids."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.cwd, self.env, self.started = cwd, env, []

    def start(self, name: str, *command: str) -> subprocess.Popen:
        log = (self.cwd / f"{name}.log").open("w")
        process = subprocess.Popen(
            [str(BIN / command[0]), *command[1:]], cwd=self.cwd, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.started.append((name, process))
        return process

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n{(self.cwd / f'{name}.log').read_text()[-3000:]}"
            for name, _ in self.started
        )

    def stop_all(self) -> None:
        for _, process in reversed(self.started):
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for _, process in self.started:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            # Also whatever the process started (run workers of the code server).
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            process.wait()


def wait_for(check, what: str, timeout: float, processes: Processes):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # still starting
            value = None
        if value:
            return value
        time.sleep(0.5)
    pytest.fail(f"{what} within {timeout:.0f}s\n{processes.logs()}")


@pytest.fixture
def stack(tmp_path, clean_env, postgres_url, redis_url, smtp_server):
    database = make_url(postgres_url)
    storage = {
        "DAGSTER_POSTGRES_HOST": database.host,
        "DAGSTER_POSTGRES_PORT": str(database.port),
        "DAGSTER_POSTGRES_USER": database.username,
        "DAGSTER_POSTGRES_PASSWORD": database.password or "unused-with-trust-auth",
        "DAGSTER_POSTGRES_DB": database.database,
        "DAGSTER_STORAGE_DIR": str(tmp_path / "storage"),
    }
    home = tmp_path / "dagster_home"
    home.mkdir()
    instance_config = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    del instance_config["run_launcher"]  # the one change: no Docker engine here
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))

    code_port, web_port = free_port(), free_port()
    workspace = yaml.safe_load((REPO / "deploy" / "workspace.yaml").read_text())
    server = workspace["load_from"][0]["grpc_server"]
    server.update(host="127.0.0.1", port=code_port)
    (tmp_path / "workspace.yaml").write_text(yaml.safe_dump(workspace))

    env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    env.update(
        storage,
        DAGSTER_HOME=str(home),
        DATABASE_URL=postgres_url,
        REDIS_URL=redis_url,
        SMTP_HOST=smtp_server.host,
        SMTP_PORT=str(smtp_server.port),
        SMTP_SECURITY="none",
        EMAIL_FROM="agent@example.com",
        EMAIL_TO="ann@example.com",
        AGENT="agent_pipeline_tests.sample_agents:slow_keywords",
        PYTHONPATH=str(REPO),  # for the test agent, as a user's own agent package would be
        SLOW_AGENT_SECONDS="1.5",
        AGENT_PIPELINE_HOME=str(tmp_path / "agent"),
    )
    for name, value in storage.items():
        clean_env.setenv(name, value)  # for DagsterInstance.from_config in the test

    processes = Processes(tmp_path, env)
    try:
        processes.start(
            "code-server", "dagster", "code-server", "start", "-h", "127.0.0.1",
            "-p", str(code_port), "-m", "agent_pipeline.definitions",
            "--location-name", server["location_name"],
        )
        health = [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(code_port)]
        wait_for(
            lambda: subprocess.run(health, env=env, capture_output=True).returncode == 0,
            "the code server was not serving", 120, processes,
        )
        processes.start(
            "webserver", "dagster-webserver", "-h", "127.0.0.1", "-p", str(web_port),
            "-w", "workspace.yaml",
        )
        processes.start("daemon", "dagster-daemon", "run", "-w", "workspace.yaml")
        client = DagsterGraphQLClient("127.0.0.1", port_number=web_port)
        wait_for(lambda: client._execute("{ version }"), "the webserver did not answer", 120,
                 processes)
        with DagsterInstance.from_config(str(home)) as instance:
            yield {"client": client, "instance": instance, "processes": processes,
                   "cwd": tmp_path, "env": env}
    finally:
        processes.stop_all()


def wait_for_runs(stack, run_ids, timeout=180):
    instance = stack["instance"]

    def all_finished():
        records = [instance.get_run_record_by_id(run_id) for run_id in run_ids]
        return all(r and r.dagster_run.status in FINISHED for r in records) and records

    return wait_for(all_finished, f"runs {run_ids} did not finish", timeout, stack["processes"])


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
