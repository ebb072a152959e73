"""Small helpers shared by the query modules: dialect-specific upserts (the clock: platform.clock)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def insert(session: AsyncSession, table: Table) -> Any:
    """An INSERT supporting `on_conflict_do_*` on the session's dialect (PostgreSQL or SQLite)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
