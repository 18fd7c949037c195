"""The production topology of docker-compose.yml as local processes, for the tests and the
benchmarks: a gRPC code server, the webserver and the daemon, on deploy/dagster.yaml with
Postgres storage and only the run launcher swapped for the local instance's (runs as local
processes instead of containers; no Docker engine here). With `pytest --engine-parts=stock`,
both the local and the production instance run on Dagster's stock parts instead of ours
(deploy/stock-parts.yaml)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from agent_pipeline.settings import ENVIRONMENT_VARIABLES
from agent_pipeline_tests.services import free_port

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


class Processes:
    """Started processes, each in a session of its own, all stopped by their own ids."""

    def __init__(self, cwd: Path, env: Mapping[str, str]):
        self.cwd, self.env = cwd, dict(env)
        self.started: list[tuple[str, subprocess.Popen]] = []

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


STORAGES = ("run_storage", "event_log_storage", "schedule_storage")
# Which parts the instances the tests start use: "ours" (the instance files as they are) or
# "stock" (deploy/stock-parts.yaml over them). `pytest --engine-parts=stock` sets it.
ENGINE_PARTS_VARIABLE = "AGENT_PIPELINE_TEST_ENGINE_PARTS"


def engine_parts() -> str:
    """The test run's engine parts: "ours" unless `pytest --engine-parts=stock` said so."""
    return os.environ.get(ENGINE_PARTS_VARIABLE, "ours")


def with_engine_parts(instance_config: Mapping[str, Any], parts: str | None = None) -> dict:
    """instance_config as it is ("ours"), or with each of our parts replaced by Dagster's
    stock one as deploy/stock-parts.yaml says ("stock"); parts defaults to the test run's."""
    parts = parts or engine_parts()
    config = dict(instance_config)
    if parts == "ours":
        return config
    if parts != "stock":
        raise ValueError(f"engine parts are 'ours' or 'stock', not {parts!r}")
    stock = yaml.safe_load((REPO / "deploy" / "stock-parts.yaml").read_text())
    for section, replacement in stock.items():
        if not str(config.get(section, {}).get("module", "")).startswith("agent_pipeline."):
            continue
        if replacement is None:
            del config[section]
        else:
            config[section] = {**config[section], **replacement}
    return config


def instance_from_config(home: Path | str, config: Mapping[str, Any]) -> Any:
    """A DagsterInstance in home, from config (a dagster.yaml's sections), telemetry off."""
    from dagster import DagsterInstance

    config = {**config, "telemetry": {"enabled": False}}
    Path(home, "dagster.yaml").write_text(yaml.safe_dump(config))
    return DagsterInstance.from_config(str(home))


def production_storage(postgres_url: str) -> dict[str, Any]:
    """The storage sections of deploy/dagster.yaml, on the database at postgres_url."""
    production = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    return {name: {**production[name], "config": {"postgres_url": postgres_url}}
            for name in STORAGES}


def wait_until(check: Callable[[], Any], what: str, timeout: float) -> Any:
    """check()'s first truthy value; TimeoutError naming `what` after timeout seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = check()
        except Exception:  # still starting
            value = None
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{what} within {timeout:.0f}s")


def wait_for(check: Callable[[], Any], what: str, timeout: float, processes: Processes) -> Any:
    """wait_until in a test: a timeout fails the test with the processes' logs."""
    try:
        return wait_until(check, what, timeout)
    except TimeoutError as exc:
        pytest.fail(f"{exc}\n{processes.logs()}")



def wait_for_webserver(port: int) -> None:
    wait_until(
        lambda: urllib.request.urlopen(f"http://127.0.0.1:{port}/server_info", timeout=5),
        "the webserver did not answer", 120,
    )


def process_env(settings: Mapping[str, str], dagster_home: Path) -> dict[str, str]:
    """This process's environment without the project's variables, plus settings; the tests'
    agents importable as a user's own agent package would be."""
    env = {k: v for k, v in os.environ.items() if k not in ENVIRONMENT_VARIABLES}
    env.update({**settings, "DAGSTER_HOME": str(dagster_home)})
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


@dataclass
class Topology:
    processes: Processes
    home: Path
    web_port: int
    env: dict[str, str]


@contextmanager
def production_topology(
    workdir: Path,
    postgres_url: str,
    settings: Mapping[str, str],
    code: tuple[str, ...] = (),
    instance_changes: Mapping[str, Mapping[str, Any]] | None = None,
) -> Iterator[Topology]:
    """Start code server, webserver and daemon in workdir; settings are the pipeline's
    variables (DATABASE_URL, SMTP_HOST, ...); code selects the code server's target
    (default: -m agent_pipeline.definitions); instance_changes updates sections of
    deploy/dagster.yaml (e.g. {"run_monitoring": {"max_runtime_seconds": 10}})."""
    database = make_url(postgres_url)
    storage = {
        "DAGSTER_POSTGRES_HOST": database.host or "127.0.0.1",
        "DAGSTER_POSTGRES_PORT": str(database.port or 5432),
        "DAGSTER_POSTGRES_USER": database.username or "postgres",
        "DAGSTER_POSTGRES_PASSWORD": database.password or "unused-with-trust-auth",
        "DAGSTER_POSTGRES_DB": database.database,
        "DAGSTER_STORAGE_DIR": str(workdir / "storage"),
    }
    home = workdir / "dagster_home"
    home.mkdir(parents=True, exist_ok=True)
    instance_config = yaml.safe_load((REPO / "deploy" / "dagster.yaml").read_text())
    # The one change: no Docker engine here, so runs are local processes, started as the
    # local instance starts them instead of in containers.
    local_instance = yaml.safe_load((REPO / "dagster.yaml").read_text())
    instance_config.pop("run_launcher")
    if "run_launcher" in local_instance:
        instance_config["run_launcher"] = local_instance["run_launcher"]
    instance_config = with_engine_parts(instance_config)
    for section, values in (instance_changes or {}).items():
        instance_config[section].update(values)
    (home / "dagster.yaml").write_text(yaml.safe_dump(instance_config))

    code_port, web_port = free_port(), free_port()
    workspace = yaml.safe_load((REPO / "deploy" / "workspace.yaml").read_text())
    server = workspace["load_from"][0]["grpc_server"]
    server.update(host="127.0.0.1", port=code_port)
    (workdir / "workspace.yaml").write_text(yaml.safe_dump(workspace))

    env = process_env({**storage, **settings}, home)

    processes = Processes(workdir, env)
    try:
        processes.start(
            "code-server", "dagster", "code-server", "start", "-h", "127.0.0.1",
            "-p", str(code_port), *(code or ("-m", "agent_pipeline.definitions")),
            "--location-name", server["location_name"],
        )
        health = [str(BIN / "dagster"), "api", "grpc-health-check", "-p", str(code_port)]
        wait_until(
            lambda: subprocess.run(health, env=env, capture_output=True).returncode == 0,
            "the code server was not serving", 120,
        )
        processes.start(
            "webserver", "dagster-webserver", "-h", "127.0.0.1", "-p", str(web_port),
            "-w", "workspace.yaml",
        )
        processes.start("daemon", "dagster-daemon", "run", "-w", "workspace.yaml")
        wait_for_webserver(web_port)
        yield Topology(processes, home, web_port, env)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{processes.logs()}") from None
    finally:
        processes.stop_all()


def copy_local_instance(workdir: Path) -> None:
    """The repo's dagster.yaml and workspace.yaml in workdir, as `make dev` finds them (the
    instance with the test run's engine parts)."""
    (workdir / "workspace.yaml").write_text((REPO / "workspace.yaml").read_text())
    instance = (REPO / "dagster.yaml").read_text()
    if engine_parts() != "ours":  # else the file as it is, its comments kept
        instance = yaml.safe_dump(with_engine_parts(yaml.safe_load(instance)))
    (workdir / "dagster.yaml").write_text(instance)


@contextmanager
def local_dev(workdir: Path, settings: Mapping[str, str]) -> Iterator[Topology]:
    """`make dev`'s command (deploy/dev.py: code server, webserver, daemon) from workdir,
    holding copies of the repo's dagster.yaml and workspace.yaml, as `make dev` runs it from
    the repo."""
    copy_local_instance(workdir)
    env = process_env(settings, workdir)
    web_port = free_port()
    processes = Processes(workdir, env)
    try:
        processes.start("dev", "python", str(REPO / "deploy" / "dev.py"), "--port", str(web_port))
        wait_for_webserver(web_port)
        yield Topology(processes, workdir, web_port, env)
    except TimeoutError as exc:
        raise TimeoutError(f"{exc}\n{processes.logs()}") from None
    finally:
        processes.stop_all()


def graphql(port: int, query: str, variables: Mapping[str, Any] | None = None) -> dict:
    """One request to the webserver's GraphQL API, as the UI makes them."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": dict(variables or {})}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.load(response)
    if "errors" in answer:
        raise RuntimeError(f"GraphQL errors: {answer['errors']}")
    return answer["data"]


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


def launch_window(port: int, window: str) -> str:
    """Launch agent_job for a window as the Launchpad does; returns the run id."""
    launch = graphql(port, LAUNCH_MUTATION, {
        "params": {
            "selector": {
                "repositoryLocationName": "agent_pipeline",
                "repositoryName": "__repository__",
                "jobName": "agent_job",
            },
            "executionMetadata": {"tags": [{"key": "dagster/partition", "value": window}]},
        }
    })["launchRun"]
    if launch["__typename"] != "LaunchRunSuccess":
        raise RuntimeError(f"launch failed: {launch}")
    return launch["run"]["runId"]


def run_status(port: int, run_id: str) -> str:
    return graphql(port, RUN_STATUS_QUERY, {"runId": run_id})["runOrError"]["status"]
