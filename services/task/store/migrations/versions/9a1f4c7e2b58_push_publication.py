"""push publication: PushTask runs as a push-only publication

Revision ID: 9a1f4c7e2b58
Revises: 7d3a9c1e5f20
Create Date: 2026-12-05 18:40:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9a1f4c7e2b58"
down_revision: str | None = "7d3a9c1e5f20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "tasks", sa.Column("publish_push_only", sa.Boolean(), nullable=False, server_default=sa.false())
    )


def downgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.drop_column("publish_push_only")
