"""sync job lease

Revision ID: 3e8d1f5a7c20
Revises: 72762db8e498
Create Date: 2026-12-06 03:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3e8d1f5a7c20"
down_revision: str | None = "72762db8e498"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sync_status", schema=None) as batch_op:
        batch_op.add_column(sa.Column("job_lease_until", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sync_status", schema=None) as batch_op:
        batch_op.drop_column("job_lease_until")
