"""The one JSON conversion of the gateway: proto3 JSON mapping (`google.protobuf.json_format`).

Responses and stream items are rendered with lowerCamelCase names, enums as names and fields
without presence always printed (so the browser never guesses defaults). Requests accept either
camelCase or snake_case names. Query strings are typed by the request's field descriptors.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Mapping
from typing import Any

import foundry
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message
from google.rpc import error_details_pb2  # noqa: F401 - registers ErrorInfo & co. for Any rendering


def _register_all_messages() -> None:
    """Import every generated `foundry.*_pb2` module so `Any` items resolve in the default pool."""
    for module in pkgutil.walk_packages(foundry.__path__, prefix="foundry."):
        if module.name.endswith("_pb2"):
            importlib.import_module(module.name)


_register_all_messages()


class DecodeError(ValueError):
    """A request body or query string that does not fit the request message (→ 400)."""


def to_dict(message: Message) -> dict[str, Any]:
    """`message` as a JSON-ready dict (proto3 JSON mapping)."""
    return json_format.MessageToDict(message, always_print_fields_with_no_presence=True)


def to_json(message: Message) -> bytes:
    """`message` rendered as compact JSON bytes."""
    return dumps(to_dict(message))


def dumps(value: Any) -> bytes:
    """Compact JSON bytes (no spaces, UTF-8)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


def merge_dict(values: Mapping[str, Any], message: Message) -> None:
    """Merge a JSON object into `message`; raises DecodeError on unknown fields or bad values."""
    try:
        json_format.ParseDict(dict(values), message)
    except json_format.ParseError as exc:
        raise DecodeError(str(exc)) from exc


def set_path(message: Message, path: str, value: str) -> None:
    """Set the string field at dotted `path` (e.g. `user_task_state.name`) from a URL parameter."""
    *parents, leaf = path.split(".")
    target = message
    for part in parents:
        target = getattr(target, part)
    setattr(target, leaf, value)


def query_to_dict(descriptor: Any, query: Mapping[str, list[str]]) -> dict[str, Any]:
    """Type query parameters by the message's top-level scalar fields (repeated: the key repeats).

    Unknown names raise DecodeError; message-typed fields except FieldMask are not settable here.
    """
    by_name = {f.name: f for f in descriptor.fields} | {f.json_name: f for f in descriptor.fields}
    out: dict[str, Any] = {}
    for key, raw_values in query.items():
        field = by_name.get(key)
        if field is None:
            raise DecodeError(f"unknown query parameter {key!r}")
        values = [_scalar(field, raw) for raw in raw_values]
        out[field.json_name] = values if _is_repeated(field) else values[-1]
    return out


def _is_repeated(field: Any) -> bool:
    return bool(field.is_repeated)


def _scalar(field: Any, raw: str) -> Any:
    if field.type == FieldDescriptor.TYPE_BOOL:
        if raw.lower() in ("true", "1", ""):
            return True
        if raw.lower() in ("false", "0"):
            return False
        raise DecodeError(f"{field.name}: expected true or false")
    if field.type == FieldDescriptor.TYPE_MESSAGE:
        if field.message_type.full_name == "google.protobuf.FieldMask":
            return raw
        raise DecodeError(f"{field.name}: message fields cannot be set from the query string")
    return raw  # numbers and enum names: json_format parses strings for these
