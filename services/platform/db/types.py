"""The mesh's one timestamp column type.

`UtcDateTime` is `DateTime(timezone=True)` that always hands back aware UTC datetimes: PostgreSQL's
`timestamptz` already does, SQLite stores text without an offset and returns naive values, which
it tags as UTC here. Values are converted to UTC before they are stored, so SQLite's text sorts and
compares as time does (same format, same offset), and no store or converter needs a UTC fix-up.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

from services.platform.clock import utc


class UtcDateTime(TypeDecorator[dt.datetime]):
    """An instant: stored as `timestamptz` (PostgreSQL) or ISO text (SQLite), read as aware UTC.

    A naive datetime given to it is taken as UTC (the mesh's clock never makes one)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        return utc(value)

    def process_result_value(self, value: Any | None, dialect: Dialect) -> dt.datetime | None:
        return utc(value)

    @property
    def python_type(self) -> type[dt.datetime]:
        return dt.datetime
