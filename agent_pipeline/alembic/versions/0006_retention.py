"""Retention: when a row's result was compacted to its top five and counts, and indexes that
let the daily retention job find old rows without scanning the tables.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("agent_runs", sa.Column("result_compacted_at", sa.DateTime))
    op.create_index("agent_runs_started_at", "agent_runs", ["started_at"])
    op.create_index("agent_alerts_created_at", "agent_alerts", ["created_at"])


def downgrade() -> None:
    op.drop_index("agent_alerts_created_at", "agent_alerts")
    op.drop_index("agent_runs_started_at", "agent_runs")
    op.drop_column("agent_runs", "result_compacted_at")
