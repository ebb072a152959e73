"""Database plumbing: engine and transactions, platform tables, Alembic glue."""

from services.platform.db.engine import Database, after_commit
from services.platform.db.tables import (
    inbox,
    new_metadata,
    outbox,
    platform_metadata,
    watch_changes,
    watch_scopes,
)
from services.platform.db.types import UtcDateTime

__all__ = [
    "Database",
    "UtcDateTime",
    "after_commit",
    "inbox",
    "new_metadata",
    "outbox",
    "platform_metadata",
    "watch_changes",
    "watch_scopes",
]
