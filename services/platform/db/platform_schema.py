"""Alembic operations for the platform tables (`services.platform.db.tables`), shared by every
service's first revision so the four histories do not each carry a copy.

A later change to the platform tables adds a new pair of functions here and a revision that calls it
in every service's history (each service migrates its own schema).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op


def upgrade_platform_tables() -> None:
    """Create the outbox, inbox and watch tables (platform schema version 1)."""
    op.create_table(
        "inbox",
        sa.Column("consumer", sa.String(length=200), nullable=False),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("consumer", "message_id", name=op.f("pk_inbox")),
    )
    op.create_table(
        "outbox",
        sa.Column(
            "id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False
        ),
        sa.Column("message_id", sa.String(length=64), nullable=False),
        sa.Column("exchange", sa.String(length=200), nullable=False),
        sa.Column("routing_key", sa.String(length=200), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("published_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_outbox")),
        sa.UniqueConstraint("message_id", name=op.f("uq_outbox_message_id")),
    )
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.create_index("ix_outbox_pending", ["published_at", "id"], unique=False)

    op.create_table(
        "watch_changes",
        sa.Column("scope", sa.String(length=300), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=500), nullable=False),
        sa.Column("type_url", sa.String(length=300), nullable=False),
        sa.Column("payload", sa.LargeBinary(), nullable=True),
        sa.Column("committed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("scope", "version", name=op.f("pk_watch_changes")),
    )
    with op.batch_alter_table("watch_changes", schema=None) as batch_op:
        batch_op.create_index("ix_watch_changes_committed_at", ["committed_at"], unique=False)

    op.create_table(
        "watch_scopes",
        sa.Column("scope", sa.String(length=300), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("compacted_through", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("scope", name=op.f("pk_watch_scopes")),
    )


def downgrade_platform_tables() -> None:
    """Drop what `upgrade_platform_tables` created."""
    op.drop_table("watch_scopes")
    with op.batch_alter_table("watch_changes", schema=None) as batch_op:
        batch_op.drop_index("ix_watch_changes_committed_at")

    op.drop_table("watch_changes")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_outbox_pending")

    op.drop_table("outbox")
    op.drop_table("inbox")
