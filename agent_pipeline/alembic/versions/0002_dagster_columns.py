"""Tie rows to Dagster runs and windows, and record email delivery.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

CLAIMS_EMAIL = sa.text("email_status IN ('sending', 'sent')")


def upgrade() -> None:
    with op.batch_alter_table("agent_runs") as batch:
        batch.add_column(sa.Column("dagster_run_id", sa.String(64)))
        batch.add_column(sa.Column("partition_key", sa.String(32)))
        batch.add_column(sa.Column("agent", sa.String(200)))
        batch.add_column(sa.Column("email_status", sa.String(20)))
        batch.add_column(sa.Column("email_sent_at", sa.DateTime))
        batch.add_column(sa.Column("email_error", sa.Text))
    op.create_index("agent_runs_dagster_run_id", "agent_runs", ["dagster_run_id"], unique=True)
    op.create_index("agent_runs_partition_key", "agent_runs", ["partition_key"])
    op.create_index(
        "agent_runs_one_email_per_window",
        "agent_runs",
        ["partition_key"],
        unique=True,
        postgresql_where=CLAIMS_EMAIL,
        sqlite_where=CLAIMS_EMAIL,
    )


def downgrade() -> None:
    op.drop_index("agent_runs_one_email_per_window", "agent_runs")
    op.drop_index("agent_runs_partition_key", "agent_runs")
    op.drop_index("agent_runs_dagster_run_id", "agent_runs")
    with op.batch_alter_table("agent_runs") as batch:
        for name in (
            "email_error",
            "email_sent_at",
            "email_status",
            "agent",
            "partition_key",
            "dagster_run_id",
        ):
            batch.drop_column(name)
