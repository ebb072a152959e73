"""Tables every service has in its own schema: the outbox, the inbox, and the watch change log.

They live in one shared MetaData (`platform_metadata`); each service's Alembic environment migrates
them next to its own tables. Table names are unqualified: the service's search_path (PostgreSQL) or
database file (SQLite) decides whose they are.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
)

from services.platform.db.types import UtcDateTime

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def new_metadata() -> MetaData:
    """A MetaData with the mesh's constraint naming convention (stable Alembic diffs)."""
    return MetaData(naming_convention=NAMING_CONVENTION)


platform_metadata = new_metadata()

# Messages written in the same transaction as the change they announce; relayed after commit.
outbox = Table(
    "outbox",
    platform_metadata,
    Column("id", BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True),
    Column("message_id", String(64), nullable=False, unique=True),
    Column("exchange", String(200), nullable=False),  # "" = default exchange (work queue by name)
    Column("routing_key", String(200), nullable=False),
    Column("body", LargeBinary, nullable=False),
    Column("headers", JSON, nullable=False),
    Column("created_at", UtcDateTime(), nullable=False),
    Column("published_at", UtcDateTime(), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
    Column("last_error", Text, nullable=True),
)
Index("ix_outbox_pending", outbox.c.published_at, outbox.c.id)

# Ids of messages whose effect has committed, per consumer: a redelivery finds its row and does nothing.
inbox = Table(
    "inbox",
    platform_metadata,
    Column("consumer", String(200), primary_key=True),
    Column("message_id", String(64), primary_key=True),
    Column("processed_at", UtcDateTime(), nullable=False),
)

# One row per watch scope; `version` is bumped under the row lock in the writer's transaction, so
# versions of a scope commit in order and without gaps (no bigserial reader-skip problem).
watch_scopes = Table(
    "watch_scopes",
    platform_metadata,
    Column("scope", String(300), primary_key=True),
    Column("version", BigInteger, nullable=False),
    Column("compacted_through", BigInteger, nullable=False, default=0),
)

# Retained history of changes per scope, replayed on resume.
watch_changes = Table(
    "watch_changes",
    platform_metadata,
    Column("scope", String(300), primary_key=True),
    Column("version", BigInteger, primary_key=True),
    Column("kind", String(16), nullable=False),  # upsert | delete
    Column("name", String(500), nullable=False),
    Column("type_url", String(300), nullable=False),
    Column("payload", LargeBinary, nullable=True),
    Column("committed_at", UtcDateTime(), nullable=False),
)
Index("ix_watch_changes_committed_at", watch_changes.c.committed_at)
