"""sync job rerun: a sync asked for while one runs follows it

Revision ID: 5b7e2c9d4f13
Revises: 9c41d7e2b5a8
Create Date: 2026-12-07 04:45:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b7e2c9d4f13"
down_revision: str | None = "9c41d7e2b5a8"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sync_status", schema=None) as batch_op:
        batch_op.add_column(sa.Column("job_rerun", sa.Text(), nullable=False, server_default=""))


def downgrade() -> None:
    with op.batch_alter_table("sync_status", schema=None) as batch_op:
        batch_op.drop_column("job_rerun")
