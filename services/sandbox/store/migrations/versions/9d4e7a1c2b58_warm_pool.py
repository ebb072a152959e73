"""warm pool: sandboxes.pool and egress_policy, warm_pools

Revision ID: 9d4e7a1c2b58
Revises: 3f6a1d2b7c40
Create Date: 2026-12-06 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = "9d4e7a1c2b58"
down_revision: str | None = "3f6a1d2b7c40"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.add_column(sa.Column("pool", sa.String(length=16), nullable=False, server_default=""))
        batch_op.add_column(
            sa.Column("egress_policy", sa.String(length=16), nullable=False, server_default="")
        )
        batch_op.create_index("ix_sandboxes_pool", ["pool"], unique=False)
    op.create_table(
        "warm_pools",
        sa.Column("organization", sa.String(length=128), nullable=False),
        sa.Column("repository", sa.String(length=512), nullable=False),
        sa.Column("replica", sa.String(length=256), nullable=False, server_default=""),
        sa.Column("clone_url", sa.Text(), nullable=False),
        sa.Column("base_branch", sa.String(length=256), nullable=False),
        sa.Column("egress_policy", sa.String(length=16), nullable=False, server_default=""),
        sa.Column("agent", sa.String(length=128), nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("organization", "repository", "replica", name=op.f("pk_warm_pools")),
    )


def downgrade() -> None:
    op.drop_table("warm_pools")
    with op.batch_alter_table("sandboxes", schema=None) as batch_op:
        batch_op.drop_index("ix_sandboxes_pool")
        batch_op.drop_column("egress_policy")
        batch_op.drop_column("pool")
