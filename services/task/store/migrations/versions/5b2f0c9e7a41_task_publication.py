"""task publication: the state of a task's latest PublishPullRequest

Revision ID: 5b2f0c9e7a41
Revises: 1e38931a0791
Create Date: 2026-11-23 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "5b2f0c9e7a41"
down_revision: str | None = "1e38931a0791"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _columns() -> list[sa.Column[object]]:
    """Server defaults fill existing rows (SQLite cannot add a NOT NULL column without one)."""
    return [
        sa.Column("publish_state", sa.String(length=20), nullable=False, server_default=""),
        sa.Column("publish_request_id", sa.String(length=100), nullable=True),
        sa.Column("publish_title", sa.Text(), nullable=False, server_default=""),
        sa.Column("publish_body", sa.Text(), nullable=False, server_default=""),
        sa.Column("publish_draft", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("publish_error", sa.Text(), nullable=False, server_default=""),
        sa.Column("publish_head_commit", sa.String(length=64), nullable=False, server_default=""),
        sa.Column("publish_requested_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("publish_updated_at", sa.DateTime(timezone=True), nullable=True),
    ]


def upgrade() -> None:
    for column in _columns():
        op.add_column("tasks", column)
    op.create_index("ix_tasks_publish_state", "tasks", ["publish_state"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_tasks_publish_state", table_name="tasks")
    with op.batch_alter_table("tasks") as batch:
        for column in reversed(_columns()):
            batch.drop_column(column.name)
