"""Indexes for the lookups every run and every sweep makes, so that their cost stays flat as
agent_runs holds a year of rows (benchmarks/bench_year.py): the only-new lookup's emails sent
in the last days, and the sweeper's unfinished rows and emails left sending.

Revision ID: 0007
Revises: 0006
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("agent_runs_email_sent", "agent_runs", ["email_status", "email_sent_at"])
    op.create_index("agent_runs_status", "agent_runs", ["status", "email_status"])


def downgrade() -> None:
    op.drop_index("agent_runs_status", "agent_runs")
    op.drop_index("agent_runs_email_sent", "agent_runs")
