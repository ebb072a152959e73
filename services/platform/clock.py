"""The mesh's one clock: timezone-aware UTC datetimes.

Every service takes the time from `now()`; stored times come back aware UTC through the one column
type (`services.platform.db.UtcDateTime`, which uses `utc`). Pure: standard library only (the domain
layer uses it).
"""

from __future__ import annotations

import datetime as dt
from typing import overload

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
"""1970-01-01T00:00:00Z, which also stands for "no time" where a column may not be NULL."""
_MICROSECOND = dt.timedelta(microseconds=1)


def now() -> dt.datetime:
    """The current time, timezone-aware UTC."""
    return dt.datetime.now(dt.UTC)


def to_us(value: dt.datetime) -> int:
    """An aware (or naive UTC) datetime → whole microseconds since the epoch, exactly (for numbers
    derived from an instant, such as versions and page tokens)."""
    return (utc(value) - EPOCH) // _MICROSECOND


def from_us(us: int) -> dt.datetime:
    """Whole microseconds since the epoch → the aware UTC datetime, exactly (inverse of `to_us`)."""
    return EPOCH + us * _MICROSECOND


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
