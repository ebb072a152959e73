"""`to_timestamp` gives what protobuf's own `Timestamp.FromDatetime` gives, for every kind of datetime."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from services.platform.timestamps import to_timestamp

CASES = [
    dt.datetime(2026, 12, 7, 1, 2, 3, 456789, tzinfo=dt.UTC),
    dt.datetime(2026, 12, 7, 1, 2, 3, 456789),  # naive: read as UTC
    dt.datetime(2026, 6, 1, 23, 59, 59, 1, tzinfo=dt.timezone(dt.timedelta(hours=-7, minutes=-30))),
    dt.datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC),  # before the epoch: negative seconds
    dt.datetime(1970, 1, 1, tzinfo=dt.UTC),
    dt.datetime.min.replace(tzinfo=dt.UTC),
    dt.datetime.max.replace(tzinfo=dt.UTC),
]


@pytest.mark.parametrize("value", CASES, ids=str)
def test_same_as_from_datetime(value: dt.datetime) -> None:
    expected = Timestamp()
    expected.FromDatetime(value)
    got = to_timestamp(value)
    assert got == expected, (got, expected)
    aware = value if value.tzinfo else value.replace(tzinfo=dt.UTC)
    assert got.ToDatetime(tzinfo=dt.UTC) == aware  # and back, to the microsecond


def test_none_stays_none() -> None:
    assert to_timestamp(None) is None
