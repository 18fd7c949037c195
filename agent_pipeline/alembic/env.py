"""Alembic environment: always run on a connection handed over by AgentRunsStore."""

from __future__ import annotations

from alembic import context

from agent_pipeline.schema import metadata

connection = context.config.attributes["connection"]
context.configure(
    connection=connection,
    target_metadata=metadata,
    # Dagster's own storage keeps an `alembic_version` table in the same database in
    # production; ours must not collide with it.
    version_table="agent_runs_alembic_version",
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
