"""Small helpers shared by the query modules: dialect-specific upserts and the clock."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import Table
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncSession


def now_us() -> int:
    """Current time in microseconds since the epoch."""
    return time.time_ns() // 1000


def insert(session: AsyncSession, table: Table) -> Any:
    """An INSERT supporting `on_conflict_do_*` on the session's dialect (PostgreSQL or SQLite)."""
    dialect = session.get_bind().dialect.name
    return (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
