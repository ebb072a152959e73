"""session commands: the durable state of StopSession, CloseSession and ChangeModel

Revision ID: 7d3a9c1e5f20
Revises: 5b2f0c9e7a41
Create Date: 2026-12-05 18:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "7d3a9c1e5f20"
down_revision: str | None = "5b2f0c9e7a41"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _columns() -> list[sa.Column[object]]:
    """Server defaults fill existing rows (SQLite cannot add a NOT NULL column without one)."""
    return [
        sa.Column("agent_model", sa.String(length=100), nullable=False, server_default=""),
        sa.Column("agent_closed", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("stop_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("command_at", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    for column in _columns():
        op.add_column("sessions", column)
    # Before this revision the RPCs changed the agent session inline: what is recorded was applied.
    op.execute("UPDATE sessions SET agent_model = model WHERE sandbox_session <> ''")
    op.execute("UPDATE sessions SET agent_closed = true WHERE closed_at IS NOT NULL")


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        for column in reversed(_columns()):
            batch.drop_column(column.name)
