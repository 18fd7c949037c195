"""The email state `unknown` holds its window's claim too: an attempt that died while sending
may have delivered, so no later run of the window sends again.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

INDEX = "agent_runs_one_email_per_window"
# Written out here, not imported: a migration keeps the schema of its own time.
CLAIMS_EMAIL = "email_status IN ('sending', 'sent', 'unknown')"
CLAIMED_BEFORE = "email_status IN ('sending', 'sent')"


def _index(where: str) -> None:
    op.drop_index(INDEX, "agent_runs")
    op.create_index(
        INDEX, "agent_runs", ["partition_key"], unique=True,
        postgresql_where=sa.text(where), sqlite_where=sa.text(where),
    )


def upgrade() -> None:
    _index(CLAIMS_EMAIL)


def downgrade() -> None:
    _index(CLAIMED_BEFORE)
