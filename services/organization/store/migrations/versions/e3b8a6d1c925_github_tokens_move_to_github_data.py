"""github_tokens move to the github_data service

GitHub has one owner: users' OAuth tokens and the discovery of their GitHub accounts now live in the
github_data service (its migration `9c41d7e2b5a8` creates `user_tokens`). This service learns what a
discovery found from github_data's `github_data.user_accounts.changed` events and keeps only its own
projection (`github_discoveries`, `github_installations`). Tokens cannot be copied across the two
services' databases (separate schemas in the production shape, neither service reads the other's),
so the stored tokens are dropped here: every GitHub user signs in again once, which hands their token
to github_data. The downgrade recreates the table empty.

Revision ID: e3b8a6d1c925
Revises: 5e8d2b7c4a90
Create Date: 2026-12-06 07:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "e3b8a6d1c925"
down_revision: str | None = "5e8d2b7c4a90"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.drop_table("github_tokens")


def downgrade() -> None:
    op.create_table(
        "github_tokens",
        sa.Column("user_id", sa.String(length=64), nullable=False),
        sa.Column("access_token", sa.Text(), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("expire_us", sa.BigInteger(), nullable=True),
        sa.Column("update_us", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("user_id", name=op.f("pk_github_tokens")),
    )
