"""The mesh's one clock: timezone-aware UTC datetimes, and the fix-up for naive ones read from SQLite.

Pure: standard library only (the domain layer uses it).
"""

from __future__ import annotations

import datetime as dt
from typing import overload

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)


def now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def now_us() -> int:
    """The current time in whole microseconds since the epoch (for tables that store integers)."""
    return to_us(now())


def to_us(value: dt.datetime) -> int:
    """An aware (or naive UTC) datetime → whole microseconds since the epoch, exactly."""
    return (utc(value) - _EPOCH) // _MICROSECOND


@overload
def utc(value: dt.datetime) -> dt.datetime: ...
@overload
def utc(value: None) -> None: ...
def utc(value: dt.datetime | None) -> dt.datetime | None:
    """`value` as an aware UTC datetime: a naive one (SQLite returns those; everything we store is UTC)
    gets UTC attached, an aware one is converted to UTC; None stays None."""
    if value is None:
        return None
    return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
