from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import psycopg2
import pytest
import redis
from aiosmtpd.controller import Controller
from sqlalchemy.engine import make_url

from agent_pipeline_tests.services import (
    ServiceMissing,
    free_port,
    postgres_answers,
    redis_answers,
    throwaway_postgres,
    throwaway_redis,
)

if TYPE_CHECKING:
    from agent_pipeline.resources.agent_runs import AgentRunsStore
    from agent_pipeline_tests.helpers import SmtpCatcher

# Dagster and the project are imported inside the fixtures that use them, not here: pytest-xdist's
# controller process loads this file too, runs no test, and would spend 2.4 s importing them.

DEFAULT_POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
# Each pytest-xdist worker (gw0, gw1, ...) empties a Redis database of its own: 15, 13, 11, ...
# (14 is the benchmarks'). Without xdist the one database is 15.
TEST_REDIS_DB = 15 - 2 * int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
if TEST_REDIS_DB < 0:
    raise RuntimeError("at most 8 pytest-xdist workers: each needs a Redis database of its own")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--engine-parts", choices=("ours", "stock"), default="ours",
        help="the Dagster instance parts the local and production topologies run on: ours "
        "(the instance files as they are) or Dagster's stock ones (deploy/stock-parts.yaml)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # An environment variable, so that the processes and pytest-xdist workers see it too
    # (agent_pipeline_tests/topology.py reads it).
    os.environ["AGENT_PIPELINE_TEST_ENGINE_PARTS"] = config.getoption("--engine-parts")


def pytest_report_header(config: pytest.Config) -> str:
    return f"engine parts: {config.getoption('--engine-parts')}"


@pytest.fixture(scope="session")
def services() -> Iterator[ExitStack]:
    with ExitStack() as stack:
        yield stack


def running_or_throwaway(services: ExitStack, name: str, url: str, answers, throwaway) -> str:
    """url if the service answers there, else a throwaway one, else stop the whole run."""
    if answers(url):
        return url
    try:
        return services.enter_context(throwaway())
    except (ServiceMissing, OSError, subprocess.CalledProcessError) as exc:
        pytest.exit(f"{name} is needed for the tests: {exc}", returncode=3)


@pytest.fixture(scope="session")
def postgres_admin_dsn(services: ExitStack) -> str:
    """A Postgres maintenance database to create the tests' own database from."""
    url = os.environ.get("TEST_POSTGRES_URL", DEFAULT_POSTGRES)
    return running_or_throwaway(services, "PostgreSQL", url, postgres_answers, throwaway_postgres)


@pytest.fixture(scope="session")
def postgres_database(postgres_admin_dsn: str) -> Iterator[str]:
    """A database of this test session's own, dropped at the end."""
    name = f"agent_pipeline_test_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(postgres_admin_dsn)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    url = make_url(postgres_admin_dsn).set(database=name).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        with admin.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def postgres_url(postgres_database: str) -> Iterator[str]:
    """The session database, emptied after each test: the project's tables and Dagster's
    own (runs a test's daemon left queued or started would otherwise be picked up, retried
    and alerted on by the next test's daemon)."""
    yield postgres_database
    with psycopg2.connect(postgres_database) as connection, connection.cursor() as cursor:
        cursor.execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
    connection.close()


@pytest.fixture
def pg_store(postgres_url: str) -> Iterator[AgentRunsStore]:
    from agent_pipeline_tests.helpers import opened_store

    with opened_store(postgres_url) as store:
        yield store


@pytest.fixture
def sqlite_url(tmp_path) -> Iterator[str]:
    yield f"sqlite:///{tmp_path / 'agent_runs.sqlite3'}"


@pytest.fixture(scope="session")
def redis_server(services: ExitStack) -> str:
    url = os.environ.get("TEST_REDIS_URL", DEFAULT_REDIS)
    return running_or_throwaway(services, "Redis", url, redis_answers, throwaway_redis)


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A dedicated Redis database, empty before and after each test."""
    url = urlsplit(redis_server)._replace(path=f"/{TEST_REDIS_DB}").geturl()
    client = redis.Redis.from_url(url)
    client.flushdb()
    yield url
    client.flushdb()
    client.close()


@pytest.fixture
def smtp_server() -> Iterator[SmtpCatcher]:
    """A real SMTP server (aiosmtpd) on a free loopback port, keeping what it receives."""
    from agent_pipeline_tests.helpers import SmtpCatcher

    catcher = SmtpCatcher("127.0.0.1", free_port())
    controller = Controller(catcher, hostname=catcher.host, port=catcher.port)
    controller.start()
    yield catcher
    controller.stop()


@pytest.fixture
def clean_env(monkeypatch, tmp_path) -> pytest.MonkeyPatch:
    """No configuration from the outside world; local files under tmp_path."""
    from agent_pipeline_tests.helpers import CONFIG_VARIABLES

    for name in CONFIG_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AGENT_PIPELINE_HOME", str(tmp_path / "home"))
    return monkeypatch


@pytest.fixture
def production_env(clean_env, postgres_url, redis_url, smtp_server):
    """The pipeline configured as in production: Postgres, Redis and SMTP, all real."""
    from agent_pipeline_tests.helpers import INTERESTS

    clean_env.setenv("DATABASE_URL", postgres_url)
    clean_env.setenv("REDIS_URL", redis_url)
    clean_env.setenv("SMTP_HOST", smtp_server.host)
    clean_env.setenv("SMTP_PORT", str(smtp_server.port))
    clean_env.setenv("SMTP_SECURITY", "none")
    clean_env.setenv("SMTP_RETRY_BACKOFF", "0.01")  # retries, but quick ones
    clean_env.setenv("EMAIL_FROM", "Agent <agent@example.com>")
    clean_env.setenv("EMAIL_TO", "ann@example.com, bob@example.com")
    clean_env.setenv("AGENT_INTERESTS", INTERESTS)
    return clean_env


@pytest.fixture
def stack(tmp_path, clean_env, postgres_url, redis_url, smtp_server):
    from dagster import DagsterInstance
    from dagster_graphql import DagsterGraphQLClient

    from agent_pipeline_tests.helpers import export_storage_env, pipeline_settings
    from agent_pipeline_tests.topology import production_topology

    settings = pipeline_settings(
        tmp_path, postgres_url, redis_url, smtp_server,
        AGENT="agent_pipeline_tests.sample_agents:slow_keywords",
        SLOW_AGENT_SECONDS="1.5",
        EMAIL_ONLY_NEW="false",  # every window has its five to send
        BACKFILL_EMAIL="each",  # and the backfilled ones too
    )
    with production_topology(tmp_path, postgres_url, settings) as topology:
        export_storage_env(clean_env, topology)
        client = DagsterGraphQLClient("127.0.0.1", port_number=topology.web_port)
        with DagsterInstance.from_config(str(topology.home)) as instance:
            yield {"client": client, "instance": instance, "processes": topology.processes,
                   "cwd": tmp_path, "env": topology.env}
