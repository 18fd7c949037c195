"""The seed agent_runs table, adopted as is where it already exists.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Databases that predate the project hold this table, created by hand from the seed
    # schema; keep it and its rows.
    if sa.inspect(op.get_bind()).has_table("agent_runs"):
        return
    op.create_table(
        "agent_runs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("started_at", sa.DateTime, nullable=False, server_default=sa.func.now()),
        sa.Column("completed_at", sa.DateTime),
        sa.Column("status", sa.String(20), nullable=False),
        sa.Column("result", sa.JSON().with_variant(JSONB(), "postgresql")),
        sa.Column("error_message", sa.Text),
    )


def downgrade() -> None:
    op.drop_table("agent_runs")
