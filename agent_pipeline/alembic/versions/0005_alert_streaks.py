"""Failure alerts grouped into streaks: one email at the first failure, then at most one
summary per period, and one when a run succeeds again.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Written out here, not imported: a migration keeps the schema of its own time.
OPEN_STREAK = "resolved_at IS NULL"


def upgrade() -> None:
    op.create_table(
        "alert_streaks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("job_name", sa.String(100), nullable=False),
        sa.Column("opened_at", sa.DateTime, nullable=False),
        sa.Column("last_failure_at", sa.DateTime, nullable=False),
        sa.Column("notice_claimed_at", sa.DateTime),
        sa.Column("notified_at", sa.DateTime),
        sa.Column("resolved_at", sa.DateTime),
        sa.Column("resolved_partition_key", sa.String(32)),
        sa.Column("resolved_run_id", sa.String(64)),
        sa.Column("resolved_run_at", sa.DateTime),
        sa.Column("recovered_status", sa.String(20)),
        sa.Column("recovered_claimed_at", sa.DateTime),
        sa.Column("recovered_error", sa.Text),
    )
    op.create_index(
        "alert_streaks_one_open_per_job", "alert_streaks", ["job_name"], unique=True,
        postgresql_where=sa.text(OPEN_STREAK), sqlite_where=sa.text(OPEN_STREAK),
    )
    op.create_index("alert_streaks_recovered_status", "alert_streaks", ["recovered_status"])
    # Alerts queued before this migration keep a NULL streak and go out one by one, as then.
    op.add_column("agent_alerts", sa.Column("streak_id", sa.Integer))
    op.create_index("agent_alerts_streak", "agent_alerts", ["streak_id", "status"])
    op.create_index("agent_runs_completed_at", "agent_runs", ["completed_at"])


def downgrade() -> None:
    op.drop_index("agent_runs_completed_at", "agent_runs")
    op.drop_index("agent_alerts_streak", "agent_alerts")
    op.drop_column("agent_alerts", "streak_id")
    op.drop_table("alert_streaks")
