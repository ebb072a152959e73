"""permission requests asked of the user

Revision ID: 3f6a1d2b7c40
Revises: 5b7e2c9d0a31
Create Date: 2026-12-06 03:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "3f6a1d2b7c40"
down_revision: str | None = "5b7e2c9d0a31"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "permission_requests",
        sa.Column("organization", sa.String(length=128), nullable=False),
        sa.Column("sandbox_id", sa.String(length=128), nullable=False),
        sa.Column("session_id", sa.String(length=128), nullable=False),
        sa.Column("request_id", sa.String(length=128), nullable=False),
        sa.Column("turn_id", sa.String(length=128), server_default="", nullable=False),
        sa.Column("title", sa.Text(), server_default="", nullable=False),
        sa.Column("tool_call", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("outcome", sa.String(length=16), server_default="", nullable=False),
        sa.Column("option_id", sa.String(length=256), server_default="", nullable=False),
        sa.Column("answered_by", sa.String(length=256), server_default="", nullable=False),
        sa.Column("delivered", sa.Boolean(), server_default="0", nullable=False),
        sa.Column("create_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answer_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint(
            "organization",
            "sandbox_id",
            "session_id",
            "request_id",
            name=op.f("pk_permission_requests"),
        ),
    )
    op.create_index("ix_permission_requests_state", "permission_requests", ["state"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_permission_requests_state", table_name="permission_requests")
    op.drop_table("permission_requests")
