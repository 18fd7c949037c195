"""Failure alerts, one per window.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "agent_alerts",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("alert_key", sa.String(100), nullable=False),
        sa.Column("partition_key", sa.String(32)),
        sa.Column("dagster_run_id", sa.String(64), nullable=False),
        sa.Column("error_message", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("claimed_at", sa.DateTime),
        sa.Column("sent_at", sa.DateTime),
        sa.Column("delivery_error", sa.Text),
    )
    op.create_index("agent_alerts_one_per_key", "agent_alerts", ["alert_key"], unique=True)
    op.create_index("agent_alerts_status", "agent_alerts", ["status"])


def downgrade() -> None:
    op.drop_table("agent_alerts")
