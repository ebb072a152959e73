"""platform tables

Revision ID: b85746401814
Revises:
Create Date: 2026-11-21 08:23:22.358758
"""

from collections.abc import Sequence

from services.platform.db.platform_schema import downgrade_platform_tables, upgrade_platform_tables

revision: str = "b85746401814"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    upgrade_platform_tables()


def downgrade() -> None:
    downgrade_platform_tables()
