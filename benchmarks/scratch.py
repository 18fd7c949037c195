"""What the benchmarks share: the Postgres server to make a scratch database on and the Redis
database they may flush, from BENCH_POSTGRES_URL (a maintenance database; default
postgresql://postgres@127.0.0.1:5432/postgres) and BENCH_REDIS_URL (default
redis://127.0.0.1:6379/14)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2
from sqlalchemy.engine import make_url

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
