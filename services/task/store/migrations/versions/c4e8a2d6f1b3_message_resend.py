"""message resend: the turn sweep's `messages.resent_at` and its index on open messages

Revision ID: c4e8a2d6f1b3
Revises: c4f7a2d9e813
Create Date: 2026-12-06 21:50:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4e8a2d6f1b3"
down_revision: str | None = "c4f7a2d9e813"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("messages", sa.Column("resent_at", sa.DateTime(timezone=True), nullable=True))
    op.create_index("ix_messages_state", "messages", ["state", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_messages_state", table_name="messages")
    with op.batch_alter_table("messages") as batch:
        batch.drop_column("resent_at")
