"""The mesh's one clock (`services.platform.clock`)."""

from __future__ import annotations

import datetime as dt
import time

from services.platform import clock


def test_now_is_aware_utc() -> None:
    before = dt.datetime.now(dt.UTC)
    now = clock.now()
    assert now.tzinfo is not None and now.utcoffset() == dt.timedelta(0)
    assert before <= now <= dt.datetime.now(dt.UTC)


def test_utc_attaches_utc_to_a_naive_sqlite_value_and_converts_an_aware_one() -> None:
    naive = dt.datetime(2024, 5, 1, 12, 0, 0, 123456)
    assert clock.utc(naive) == naive.replace(tzinfo=dt.UTC)
    assert clock.utc(naive).tzinfo is dt.UTC
    paris = dt.datetime(2024, 5, 1, 14, 0, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert clock.utc(paris).isoformat() == "2024-05-01T12:00:00+00:00"
    assert clock.utc(None) is None


def test_microseconds_since_the_epoch_are_exact() -> None:
    assert clock.to_us(dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) == 0
    assert clock.to_us(dt.datetime(2024, 5, 1, 12, 0, 0, 123456)) == 1_714_564_800_123_456
    before = time.time_ns() // 1000
    now = clock.to_us(clock.now())
    assert before <= now <= time.time_ns() // 1000


def test_from_us_inverts_to_us() -> None:
    for us in (0, 1, 1_714_564_800_123_456, 86_400_000_001):
        assert clock.to_us(clock.from_us(us)) == us
    assert clock.from_us(1_714_564_800_123_456) == dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)
    assert clock.from_us(0) == clock.EPOCH
