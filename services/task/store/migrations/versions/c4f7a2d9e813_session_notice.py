"""session notice: what happened to a session's last turn when it did not end on its own

Revision ID: c4f7a2d9e813
Revises: b3e8d5a1c947
Create Date: 2026-12-06 00:10:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "c4f7a2d9e813"
down_revision: str | None = "b3e8d5a1c947"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # A server default fills existing rows (SQLite cannot add a NOT NULL column without one).
    op.add_column("sessions", sa.Column("notice", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("notice")
