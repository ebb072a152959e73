"""organizations' model API keys (encrypted)

Revision ID: 5e8d2b7c4a90
Revises: 7a2c4e9f1b63
Create Date: 2026-12-06 04:10:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5e8d2b7c4a90"
down_revision: str | None = "7a2c4e9f1b63"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "model_credentials",
        sa.Column("organization_id", sa.String(length=64), nullable=False),
        sa.Column("variable", sa.String(length=200), nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column("update_user", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("update_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("organization_id", "variable"),
    )


def downgrade() -> None:
    op.drop_table("model_credentials")
