"""Timestamp ↔ microseconds."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp


def to_us(ts: Timestamp) -> int:
    return ts.seconds * 1_000_000 + ts.nanos // 1000


def from_us(us: int) -> Timestamp:
    ts = Timestamp()
    ts.seconds, rest = divmod(us, 1_000_000)
    ts.nanos = rest * 1000
    return ts
