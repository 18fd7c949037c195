"""Helpers the test modules share: servers, contexts, runs and queries. Test modules import
from here, never from each other."""

from __future__ import annotations

import functools
import logging
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from typing import Any

from dagster import (
    DagsterInstance,
    DagsterRunStatus,
    Definitions,
    build_run_status_sensor_context,
)
from sqlalchemy import create_engine, select

from agent_pipeline.agents import AgentCache, AgentContext, AgentSettings
from agent_pipeline.agents.llm import LlmSettings, Prices
from agent_pipeline.jobs import agent_job
from agent_pipeline.resources import AgentRunsStore
from agent_pipeline.schema import agent_runs
from agent_pipeline.settings import ENVIRONMENT_VARIABLES, resources_from_env
from agent_pipeline_tests.llm_server import LoopbackLlm
from agent_pipeline_tests.topology import graphql, wait_for

# How long a test waits for one run of the local stack, and the statuses a run ends in, as
# the webserver's GraphQL names them.
RUN_SECONDS = 120
RUN_ENDED = ("SUCCESS", "FAILURE", "CANCELED")

# The interests of the pipeline tests: three of the sample feed's topics.
INTERESTS = "dagster, postgres, redis"


@dataclass
class SmtpCatcher:
    """Keeps what it receives. fail_with, when set, is asked before each message: a reply
    such as "451 4.3.0 try later" refuses that message, None accepts it."""

    host: str
    port: int
    received: list[ReceivedMail] = field(default_factory=list)
    attempts: int = 0
    fail_with: Callable[[], str | None] | None = None

    async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd's name)
        self.attempts += 1
        refusal = self.fail_with() if self.fail_with else None
        if refusal:
            return refusal
        self.received.append(
            ReceivedMail(
                envelope.mail_from,
                list(envelope.rcpt_tos),
                message_from_bytes(envelope.original_content, policy=policy.default),
            )
        )
        return "250 Message accepted for delivery"


@dataclass
class ReceivedMail:
    mail_from: str
    rcpt_tos: list[str]
    message: EmailMessage


# Each test starts from none of the project's variables set, and none of the LLM's.
CONFIG_VARIABLES = (*ENVIRONMENT_VARIABLES, "LLM_BASE_URL", "LLM_API_KEY", "LLM_MODEL")


def evaluate_failure_sensor(sensor, instance, run, event, resources) -> None:
    """One evaluation of a run-failure sensor for one failed run, as the daemon makes it."""
    with build_run_status_sensor_context(
        sensor_name=sensor.name,
        dagster_instance=instance,
        dagster_run=run,
        dagster_event=event,
        resources=resources,
    ).for_run_failure() as context:
        sensor(context)


EVERY_RECIPIENT_REFUSED = {
    "a@example.com": "550 5.1.1 no such user",
    "b@example.com": "553 5.1.3 bad address",
}


class RecipientRefuser(SmtpCatcher):
    """Answers RCPT TO with refusals[address], or accepts the address if it has none."""

    def __init__(self, host: str, port: int, refusals: dict[str, str]):
        super().__init__(host, port)
        self.refusals = refusals
        self.rcpt_attempts = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # noqa: N802
        self.rcpt_attempts += 1
        if address in self.refusals:
            return self.refusals[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"


def agent_context(cache: AgentCache, interests: str, **settings: Any) -> AgentContext:
    """The context of the window 2026-11-26 09:30-09:40, told interests and settings."""
    return AgentContext(
        partition_key="2026-11-26-09:30",
        window_start=datetime(2026, 11, 26, 9, 30, tzinfo=UTC),
        window_end=datetime(2026, 11, 26, 9, 40, tzinfo=UTC),
        cache=cache,
        log=logging.getLogger("test"),
        settings=AgentSettings(interests=interests, **settings),
    )


def llm_settings(llm: LoopbackLlm) -> dict[str, Any]:
    return {"scorer": "llm",
            "llm": LlmSettings(base_url=llm.base_url, api_key="sk-test", model="test-model",
                               concurrency=4, prices=Prices(1.0, 2.0))}


def context(cache: AgentCache, **settings) -> AgentContext:
    return agent_context(cache, "dagster, postgres, redis, llm agents", **settings)


def agent_job_from_env():
    """agent_job with its resources, rebuilt from the environment by Dagster on each run."""
    return Definitions(jobs=[agent_job], resources=resources_from_env(os.environ)).resolve_job_def(
        "agent_job"
    )


@contextmanager
def opened_store(database_url: str) -> Iterator[AgentRunsStore]:
    """An AgentRunsStore on database_url, opened (its tables migrated), closed at the end."""
    store = AgentRunsStore(database_url=database_url)
    store.open()
    try:
        yield store
    finally:
        store.close()


def rows(database_url: str) -> list[dict]:
    engine = create_engine(database_url)
    with engine.connect() as connection:
        query = select(agent_runs).order_by(agent_runs.c.id)
        found = [dict(row) for row in connection.execute(query).mappings()]
    engine.dispose()
    return found


@functools.cache
def in_memory_instance() -> DagsterInstance:
    """One in-memory Dagster instance per test process: building one costs 0.15 s (Dagster
    stamps its schema), paid by every run otherwise. Runs are told apart by run id."""
    return DagsterInstance.ephemeral()


def run_window(window: str, tags: dict[str, str] | None = None):
    """Run agent_job for window; the result gains `.logs`, the run's log messages."""
    instance = in_memory_instance()
    result = agent_job.execute_in_process(
        partition_key=window,
        resources=resources_from_env(os.environ),
        instance=instance,
        raise_on_error=False,
        tags=tags,
    )
    result.logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    return result


def window_keys(count: int) -> list[str]:
    return agent_job.partitions_def.get_partition_keys()[-count:]


def run_worker_pid(port: int, run_id: str) -> int | None:
    """The process executing the run's steps, as its engine event names it."""
    events = graphql(port, ENGINE_EVENTS_QUERY, {"runId": run_id})["logsForRun"]["events"]
    for event in events:
        found = re.search(r"Executing steps in process \(pid: (\d+)\)", event.get("message", ""))
        if found:
            return int(found.group(1))
    return None


ENGINE_EVENTS_QUERY = """
query Engine($runId: ID!) {
  logsForRun(runId: $runId) {
    ... on EventConnection { events { ... on EngineEvent { message } } }
  }
}
"""


def outbox_windows(home: Path) -> list[str]:
    return [
        message_from_bytes(path.read_bytes(), policy=policy.default)["X-Agent-Pipeline-Window"]
        for path in (home / "agent" / "outbox").glob("*.eml")
    ]


def agent_rows(home: Path) -> list[dict]:
    engine = create_engine(f"sqlite:///{home / 'agent' / 'agent_runs.sqlite3'}")
    try:
        with engine.connect() as connection:
            query = select(agent_runs).order_by(agent_runs.c.id)
            return [dict(row) for row in connection.execute(query).mappings()]
    finally:
        engine.dispose()


def hanging_window(home: Path) -> tuple[Path, str, dict[str, str]]:
    """A flag file, a window whose run hangs in its agent while the flag exists (a worker to
    kill half way), and `make dev`'s settings for it, its state under home."""
    flag = home / "hang"
    flag.touch()
    window = agent_job.partitions_def.get_partition_keys()[-150]
    return flag, window, {
        "AGENT_PIPELINE_HOME": str(home / "agent"),
        "AGENT": "agent_pipeline_tests.sample_agents:hang_while_flagged",
        "HANG_FLAG": str(flag),
        "HANG_WINDOW": window,
    }


def rerun_succeeds_after(dev, flag: Path, window: str, failed_run_id: str) -> None:
    """With the flag gone, the window launched again under `make dev` succeeds: its rows are
    the failed run's, then the re-run's (a schedule tick's run of another window aside)."""
    from agent_pipeline_tests.topology import launch_window, run_status

    flag.unlink()
    rerun = launch_window(dev.web_port, window)
    wait_for(lambda: run_status(dev.web_port, rerun) in RUN_ENDED, "the re-run did not end",
             RUN_SECONDS, dev.processes)
    assert run_status(dev.web_port, rerun) == "SUCCESS"
    rows = [r for r in agent_rows(dev.home) if r["partition_key"] == window]
    assert [(r["dagster_run_id"], r["status"]) for r in rows] == [
        (failed_run_id, "failed"), (rerun, "succeeded"),
    ]


def stop_the_schedule(port: int) -> None:
    """Schedule off, as from the UI: a tick's run of the broken agent would join the test's
    failures at a moment of its own."""
    schedule_id = graphql(port, SCHEDULE_ID_QUERY)["scheduleOrError"]["id"]
    stopped = graphql(port, STOP_SCHEDULE, {"id": schedule_id})["stopRunningSchedule"]
    assert stopped["__typename"] == "ScheduleStateResult", stopped


STOP_SCHEDULE = """
mutation Stop($id: String!) {
  stopRunningSchedule(id: $id) { __typename }
}
"""


SCHEDULE_ID_QUERY = """
query {
  scheduleOrError(scheduleSelector: {
    repositoryLocationName: "agent_pipeline", repositoryName: "__repository__",
    scheduleName: "agent_job_schedule"
  }) { ... on Schedule { id } }
}
"""


def wait_for_runs(stack, run_ids, timeout=180):
    instance = stack["instance"]

    def all_finished():
        records = [instance.get_run_record_by_id(run_id) for run_id in run_ids]
        return all(r and r.dagster_run.status in FINISHED for r in records) and records

    return wait_for(all_finished, f"runs {run_ids} did not finish", timeout, stack["processes"])


FINISHED = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def shifted_clock(start: datetime) -> dict[str, str]:
    """The settings that start the stack's clock at start."""
    path = os.pathsep.join([str(SHIFTED_CLOCK), os.environ.get("PYTHONPATH", "")])
    return {"SHIFTED_CLOCK_START": start.isoformat(), "PYTHONPATH": path.rstrip(os.pathsep)}


SHIFTED_CLOCK = Path(__file__).resolve().parent / "shifted_clock"


def pipeline_settings(tmp_path, database_url, redis_url, smtp_server, **extra) -> dict:
    """The run's variables: the test's Postgres, Redis and SMTP server, plus extra."""
    return {
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "SMTP_HOST": smtp_server.host,
        "SMTP_PORT": str(smtp_server.port),
        "SMTP_SECURITY": "none",
        "EMAIL_FROM": "agent@example.com",
        "EMAIL_TO": "ann@example.com",
        "AGENT_PIPELINE_HOME": str(tmp_path / "agent"),
        **extra,
    }


def export_storage_env(clean_env, topology) -> None:
    """The instance's storage variables, for DagsterInstance.from_config in this process."""
    for name, value in topology.env.items():
        if name.startswith("DAGSTER_POSTGRES_") or name == "DAGSTER_STORAGE_DIR":
            clean_env.setenv(name, value)
