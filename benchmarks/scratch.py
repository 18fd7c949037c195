"""What the benchmarks share: the Postgres server to make a scratch database on and the Redis
database they may flush, from BENCH_POSTGRES_URL (a maintenance database; default
postgresql://postgres@127.0.0.1:5432/postgres) and BENCH_REDIS_URL (default
redis://127.0.0.1:6379/14); an SMTP server on loopback, and the pipeline's settings for all
three."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import psycopg2
from sqlalchemy.engine import make_url

if TYPE_CHECKING:
    from agent_pipeline_tests.helpers import SmtpCatcher

ADMIN_URL = os.environ.get("BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


@contextmanager
def scratch_database() -> Iterator[str]:
    """A database of the benchmark's own, dropped at the end; yields its URL."""
    database = f"agent_pipeline_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg2.connect(ADMIN_URL)
    admin.autocommit = True
    admin.cursor().execute(f'CREATE DATABASE "{database}"')
    try:
        yield make_url(ADMIN_URL).set(database=database).render_as_string(False)
    finally:
        admin.cursor().execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()


@contextmanager
def smtp_catcher() -> Iterator[SmtpCatcher]:
    """An aiosmtpd server on loopback that keeps every email (its .port, its .received). The
    catcher lives with the tests: the caller has put the repository on sys.path."""
    from aiosmtpd.controller import Controller

    from agent_pipeline_tests.helpers import SmtpCatcher
    from agent_pipeline_tests.services import free_port

    catcher = SmtpCatcher("127.0.0.1", free_port())
    controller = Controller(catcher, hostname="127.0.0.1", port=catcher.port)
    controller.start()
    try:
        yield catcher
    finally:
        controller.stop()


def pipeline_settings(database_url: str, smtp_port: int) -> dict[str, str]:
    """The pipeline's variables for a run against the scratch database, REDIS_URL and an
    smtp_catcher; every run sends its email (EMAIL_ONLY_NEW off), the same work each time."""
    return {
        "DATABASE_URL": database_url, "REDIS_URL": REDIS_URL, "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(smtp_port), "SMTP_SECURITY": "none", "EMAIL_ONLY_NEW": "false",
        "EMAIL_FROM": "bench@example.com", "EMAIL_TO": "reader@example.com",
    }
