"""Dialect-specific INSERTs, for `ON CONFLICT` upserts on PostgreSQL and SQLite alike.

A read-then-insert ("no row yet, so insert") fails with a unique violation when two transactions
run it at once; an `INSERT … ON CONFLICT DO UPDATE / DO NOTHING` does not.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def insert(session: AsyncSession, table: Table) -> Any:
    """An INSERT into `table` supporting `on_conflict_do_update` / `on_conflict_do_nothing` on the
    session's dialect (PostgreSQL or SQLite)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
