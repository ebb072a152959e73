"""organization times become timestamps

The organization tables stored times as integer microseconds since the epoch (`*_us`); they now use
the platform's one timestamp type (`UtcDateTime`: `timestamptz` on PostgreSQL, ISO text on SQLite),
named `*_time` like the github_data and sandbox tables. Every value is converted exactly (whole
microseconds both ways), in SQL on each database; the indexes on converted columns are rebuilt on the
new columns. The downgrade converts back.

Revision ID: ef5bc7ed1614
Revises: e3b8a6d1c925
Create Date: 2026-12-06 07:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "ef5bc7ed1614"
down_revision: str | None = "e3b8a6d1c925"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table → [(integer column, timestamp column, nullable)]
COLUMNS: dict[str, list[tuple[str, str, bool]]] = {
    "organizations": [("create_us", "create_time", False), ("update_us", "update_time", False)],
    "users": [
        ("create_us", "create_time", False),
        ("update_us", "update_time", False),
        ("last_sign_in_us", "last_sign_in_time", False),
    ],
    "model_credentials": [("update_us", "update_time", False)],
    "auth_sessions": [
        ("create_us", "create_time", False),
        ("expire_us", "expire_time", False),
        ("revoke_us", "revoke_time", True),
    ],
    "members": [("create_us", "create_time", False), ("update_us", "update_time", False)],
    "task_index": [("create_us", "create_time", False), ("update_us", "update_time", False)],
    "task_summaries": [("update_us", "update_time", False)],
    "repositories": [
        ("own_update_us", "own_update_time", False),
        ("latest_activity_us", "latest_activity_time", False),
    ],
    "open_pull_requests": [("update_us", "update_time", False)],
    "audit_events": [("create_us", "create_time", False)],
    "github_discoveries": [("update_us", "update_time", False), ("synced_us", "synced_time", True)],
    "github_installations": [("update_us", "update_time", False)],
}

# index → (table, columns before, columns after)
INDEXES: dict[str, tuple[str, list[str], list[str]]] = {
    "ix_task_summaries_recent": (
        "task_summaries",
        ["organization_id", "update_us"],
        ["organization_id", "update_time"],
    ),
    "ix_open_pull_requests_recent": (
        "open_pull_requests",
        ["organization_id", "update_us"],
        ["organization_id", "update_time"],
    ),
    "ix_audit_events_recent": (
        "audit_events",
        ["organization_id", "create_us", "id"],
        ["organization_id", "create_time", "id"],
    ),
}


def _to_timestamp(column: str) -> str:
    """SQL for the instant of integer microseconds `column`, as the column type stores it."""
    if op.get_bind().dialect.name == "sqlite":  # SQLAlchemy's text form: 'YYYY-MM-DD HH:MM:SS.ffffff'
        return (
            f"strftime('%Y-%m-%d %H:%M:%S', {column} / 1000000, 'unixepoch')"
            f" || '.' || printf('%06d', {column} % 1000000)"
        )
    return f"TIMESTAMPTZ 'epoch' + {column} * INTERVAL '1 microsecond'"


def _to_microseconds(column: str) -> str:
    """SQL for the integer microseconds since the epoch of timestamp `column`."""
    if op.get_bind().dialect.name == "sqlite":
        return (
            f"CAST(strftime('%s', {column}) AS INTEGER) * 1000000 + CAST(substr({column}, 21, 6) AS INTEGER)"
        )
    return f"CAST(EXTRACT(EPOCH FROM {column}) * 1000000 AS BIGINT)"


def _convert(*, forward: bool) -> None:
    """Replace each column by its counterpart (integer → timestamp when `forward`, else back): add
    it nullable, fill it from the old one in one UPDATE per table, drop the old one, then make the
    new one NOT NULL where the old one was (SQLite: the batch copies the table)."""
    kind = sa.DateTime(timezone=True) if forward else sa.BigInteger()
    convert = _to_timestamp if forward else _to_microseconds
    for name, (table, _, _) in INDEXES.items():
        op.drop_index(name, table_name=table)
    for table, columns in COLUMNS.items():
        pairs = [((old, new) if forward else (new, old), nullable) for old, new, nullable in columns]
        with op.batch_alter_table(table, schema=None) as batch_op:
            for (_, target), _ in pairs:
                batch_op.add_column(sa.Column(target, kind, nullable=True))
        assignments = ", ".join(f"{target} = {convert(source)}" for (source, target), _ in pairs)
        op.execute(f"UPDATE {table} SET {assignments}")
        with op.batch_alter_table(table, schema=None) as batch_op:
            for (source, target), nullable in pairs:
                batch_op.drop_column(source)
                if not nullable:
                    batch_op.alter_column(target, existing_type=kind, nullable=False)
    for name, (table, before, after) in INDEXES.items():
        op.create_index(name, table, after if forward else before, unique=False)


def upgrade() -> None:
    _convert(forward=True)


def downgrade() -> None:
    _convert(forward=False)
