"""Server-Sent Events framing of the browser stream (the grammar is in gateway/README.md, "Browser stream").

Every frame is `id: <position>\\nevent: <kind>\\ndata: <one JSON object>\\n\\n`. The data is rendered
once per upstream event and shared by every subscriber; only the `id:` line is per connection. The
position is base64url(JSON {topic label: upstream resume token}) for all topics of the connection,
so `Last-Event-ID` alone restores both the topic set and where each topic was.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any

from foundry.common.v1 import watch_pb2

from gateway.codec import dumps, to_dict
from gateway.stream.topics import PER_USER_TYPES

MAX_POSITION_CHARS = 8192


@dataclass(frozen=True, slots=True)
class Frame:
    """One SSE event without its id: `event` name and the JSON `data` bytes."""

    event: str
    data: bytes


def encode(frame: Frame, position: str) -> bytes:
    """The wire bytes of `frame` at `position` (the connection's id)."""
    return (
        b"id: " + position.encode() + b"\nevent: " + frame.event.encode() + b"\ndata: " + frame.data + b"\n\n"
    )


def encode_position(tokens: dict[str, str]) -> str:
    raw = json.dumps(tokens, separators=(",", ":"), sort_keys=True).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_position(position: str) -> dict[str, str]:
    """{topic label: token} of an `id:` value; {} when empty or not one of ours."""
    if not position or len(position) > MAX_POSITION_CHARS:
        return {}
    try:
        raw = base64.urlsafe_b64decode(position + "=" * (-len(position) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError):
        return {}
    if not isinstance(value, dict):
        return {}
    return {str(k): str(v) for k, v in value.items() if isinstance(v, str)}


def item_json(item: watch_pb2.WatchItem, *, per_user_topic: bool = False) -> bytes | None:
    """`{"name", "version", "resource": {"@type", ...}}` of a watch item; None for per-user items,
    except on a per-user topic (its upstream runs as its one user and carries only that user's)."""
    if not per_user_topic and item.resource.type_url.rsplit("/", 1)[-1] in PER_USER_TYPES:
        return None
    resource = to_dict(item.resource)
    return dumps({"name": item.name, "version": item.version, "resource": resource})


def _with_topic(label: str, fields: dict[str, Any]) -> bytes:
    return dumps({"topic": label, **fields})


def snapshot(label: str, items: list[bytes]) -> Frame:
    """The topic's complete state; the browser replaces what it had."""
    head = b'{"topic":' + dumps(label) + b',"items":['
    return Frame("snapshot", head + b",".join(items) + b"]}")


def upsert(label: str, item: bytes) -> Frame:
    return Frame("upsert", b'{"topic":' + dumps(label) + b',"item":' + item + b"}")


def delete(label: str, name: str) -> Frame:
    return Frame("delete", _with_topic(label, {"name": name}))


def reset(label: str, message: str) -> Frame:
    """The topic's state is void; a snapshot follows."""
    return Frame("reset", _with_topic(label, {"message": message}))


def status(label: str, state: str, **extra: Any) -> Frame:
    """Upstream health of a topic: `live` or `reconnecting` (with attempt, retryInSeconds, code)."""
    return Frame("status", _with_topic(label, {"state": state, **extra}))


def error(label: str, code: str, message: str) -> Frame:
    """The topic failed for good (not found, permission denied, bad name) and was removed."""
    return Frame("error", _with_topic(label, {"code": code, "message": message}))


def hello(stream_id: str, topics: list[str], heartbeat_seconds: float) -> Frame:
    return Frame(
        "hello", dumps({"stream": stream_id, "topics": topics, "heartbeatSeconds": heartbeat_seconds})
    )


def subscribed(topics: list[str]) -> Frame:
    """The connection's topic set changed (the id now lists it)."""
    return Frame("subscribed", dumps({"topics": topics}))


def bookmark() -> Frame:
    return Frame("bookmark", b"{}")


def end(reason: str, resume_from: str) -> Frame:
    """Terminal frame: reconnect with `resume_from` as Last-Event-ID (or `?resume=`)."""
    return Frame("end", dumps({"reason": reason, "resume_from": resume_from}))
