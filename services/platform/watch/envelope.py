"""Build `foundry.common.v1.WatchEvent` envelopes; each change's event is built once and shared by
every subscriber of its scope (anchors §6: render once, fan out)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TypeAlias

from foundry.common.v1 import watch_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

from services.platform.watch.changes import UPSERT, Change

Kind: TypeAlias = watch_pb2.WatchEventKind.ValueType
EndReason: TypeAlias = watch_pb2.WatchEndReason.ValueType

SNAPSHOT = watch_pb2.WATCH_EVENT_KIND_SNAPSHOT
SNAPSHOT_END = watch_pb2.WATCH_EVENT_KIND_SNAPSHOT_END
BOOKMARK = watch_pb2.WATCH_EVENT_KIND_BOOKMARK
RESET = watch_pb2.WATCH_EVENT_KIND_RESET
END = watch_pb2.WATCH_EVENT_KIND_END

END_REASON_NAMES: dict[EndReason, str] = {
    watch_pb2.WATCH_END_REASON_ROTATE: "rotate",
    watch_pb2.WATCH_END_REASON_DRAINING: "draining",
    watch_pb2.WATCH_END_REASON_LAGGING: "lagging",
    watch_pb2.WATCH_END_REASON_EXPIRED: "expired",
    watch_pb2.WATCH_END_REASON_UNAUTHORIZED: "unauthorized",
}


def change_event(change: Change, token: str) -> watch_pb2.WatchEvent:
    """UPSERT or DELETE carrying exactly one item whose version equals the event's token."""
    item = watch_pb2.WatchItem(name=change.name, version=token)
    if change.kind == UPSERT:
        item.resource.type_url = change.type_url
        item.resource.value = change.payload or b""
        kind = watch_pb2.WATCH_EVENT_KIND_UPSERT
    else:
        kind = watch_pb2.WATCH_EVENT_KIND_DELETE
    return watch_pb2.WatchEvent(kind=kind, resume_token=token, items=[item])


def snapshot_pages(
    items: Sequence[tuple[str, Message]], token: str, page_size: int
) -> Iterator[watch_pb2.WatchEvent]:
    """SNAPSHOT pages of at most `page_size` items (at least one page, possibly empty).

    Pages carry no resume token (a client cannot resume mid-snapshot); items carry the snapshot
    token as their version.
    """
    for start in range(0, max(len(items), 1), page_size):
        event = watch_pb2.WatchEvent(kind=SNAPSHOT)
        for name, resource in items[start : start + page_size]:
            packed = any_pb2.Any()
            packed.Pack(resource)
            event.items.append(watch_pb2.WatchItem(name=name, resource=packed, version=token))
        yield event


def control_event(
    kind: Kind, token: str, *, reason: EndReason = watch_pb2.WATCH_END_REASON_UNSPECIFIED, message: str = ""
) -> watch_pb2.WatchEvent:
    """SNAPSHOT_END, BOOKMARK, RESET or END."""
    return watch_pb2.WatchEvent(kind=kind, resume_token=token, end_reason=reason, message=message)
