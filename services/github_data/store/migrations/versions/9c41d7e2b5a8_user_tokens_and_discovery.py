"""user GitHub tokens and account discovery move here from the organization service

github_data now owns users' GitHub OAuth tokens (`user_tokens`, written by SetGithubToken) and the
discovery of the accounts each token sees (`user_discoveries`, `user_accounts`). The organization
service's `github_tokens` table is dropped by its own migration (`e3b8a6d1c925`). Tokens cannot be
copied across the two services' databases (in the production shape they are separate schemas that
neither service reads of the other), so these tables start empty: every GitHub user signs in again
once, which stores their token here and runs discovery. Until then, syncs of organizations without
an App installation report that no OAuth token is available.

Revision ID: 9c41d7e2b5a8
Revises: 3e8d1f5a7c20
Create Date: 2026-12-06 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "9c41d7e2b5a8"
down_revision: str | None = "3e8d1f5a7c20"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "user_tokens",
        sa.Column("user_id", sa.String(length=100), nullable=False),
        sa.Column("sealed_token", sa.LargeBinary(), nullable=False),  # SecretBox-sealed, bound to user_id
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("expire_time", sa.DateTime(timezone=True), nullable=True),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_tokens")),
    )
    op.create_table(
        "user_discoveries",
        sa.Column("user_id", sa.String(length=100), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error_message", sa.Text(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("update_time", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_success_time", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_user_discoveries")),
    )
    op.create_table(
        "user_accounts",
        sa.Column("user_id", sa.String(length=100), nullable=False),
        sa.Column("account_id", sa.BigInteger(), nullable=False),
        sa.Column("login", sa.String(length=200), nullable=False),
        sa.PrimaryKeyConstraint("user_id", "account_id", name=op.f("pk_user_accounts")),
    )
    op.create_index("ix_user_accounts_account", "user_accounts", ["account_id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_user_accounts_account", table_name="user_accounts")
    op.drop_table("user_accounts")
    op.drop_table("user_discoveries")
    op.drop_table("user_tokens")
