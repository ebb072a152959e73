"""Every RPC of the four services answers a bad request with a precise status and a message, never
UNKNOWN or INTERNAL (issue 2, "Done when"). The RPCs come from the service descriptors, so a new RPC
is covered the day it is added; streaming RPCs are judged by their first response or their error."""

from __future__ import annotations

from collections.abc import Callable
from types import ModuleType
from typing import Any

import grpc
from foundry.github_data.v1 import github_data_service_pb2
from foundry.organization.v1 import organization_service_pb2
from foundry.sandbox.v1 import sandbox_service_pb2
from foundry.task.v1 import task_service_pb2
from google.protobuf import message_factory
from google.protobuf.descriptor import FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message

from services.platform.settings import ServiceName, Settings
from tests.helpers.mesh import running

CONTRACTS: dict[ServiceName, ModuleType] = {
    "organization": organization_service_pb2,
    "task": task_service_pb2,
    "github_data": github_data_service_pb2,
    "sandbox": sandbox_service_pb2,
}
# What a client can act on: the request is wrong, or the caller may not do it, or the state forbids it.
PRECISE = {
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.OUT_OF_RANGE,
}
# Lists whose every field is optional: an empty request is a good one (the caller's organizations,
# the configured agents). Every other RPC has a required field.
EMPTY_IS_VALID = {"ListOrganizations", "ListAgents"}
RESOURCE_FIELDS = {"name", "parent", "organization", "task", "session", "sandbox", "auth_session", "user"}


def _fill(message: Message, value: str, wanted: Callable[[str], bool], depth: int = 0) -> None:
    """Set singular string fields chosen by `wanted` to `value`, one level into sub-messages."""
    for field in message.DESCRIPTOR.fields:
        if field.is_repeated:
            continue
        if field.type == FieldDescriptor.TYPE_STRING and wanted(field.name):
            setattr(message, field.name, value)
        elif (
            field.type == FieldDescriptor.TYPE_MESSAGE
            and depth == 0
            and field.message_type is not None
            and not field.message_type.full_name.startswith("google.protobuf.")
        ):
            _fill(getattr(message, field.name), value, wanted, depth + 1)


def _bad_requests(method: MethodDescriptor) -> list[tuple[str, Message]]:
    cls = message_factory.GetMessageClass(method.input_type)
    cases: list[tuple[str, Message]] = []
    if method.name not in EMPTY_IS_VALID:
        cases.append(("empty", cls()))
    bogus = cls()  # a well-formed name of nothing that exists (or of the wrong kind)
    _fill(bogus, "organizations/nope/tasks/zzz", lambda field: field in RESOURCE_FIELDS)
    if bogus.ByteSize():
        cases.append(("bogus name", bogus))
    garbage = cls()  # every text field malformed
    _fill(garbage, "not a name!", lambda field: True)
    if garbage.ByteSize():
        cases.append(("malformed", garbage))
    return cases


async def _status(
    channel: grpc.aio.Channel, path: str, method: MethodDescriptor, request: Message
) -> tuple[grpc.StatusCode, str]:
    request_cls = type(request)
    response_cls = message_factory.GetMessageClass(method.output_type)
    kwargs: dict[str, Any] = {
        "request_serializer": request_cls.SerializeToString,
        "response_deserializer": response_cls.FromString,
    }
    try:
        if method.server_streaming:
            call = channel.unary_stream(path, **kwargs)(request, timeout=5)
            try:
                async for _ in call:
                    break
            finally:
                call.cancel()
        else:
            await channel.unary_unary(path, **kwargs)(request, timeout=5)
    except grpc.aio.AioRpcError as error:
        return error.code(), error.details() or ""
    return grpc.StatusCode.OK, ""


async def test_every_rpc_answers_a_bad_request_with_a_precise_status_and_a_message(
    settings_factory: Callable[..., Settings],
) -> None:
    methods = {
        m.name
        for module in CONTRACTS.values()
        for service in module.DESCRIPTOR.services_by_name.values()
        for m in service.methods
    }
    assert EMPTY_IS_VALID <= methods, "stale allow-list"
    problems: list[str] = []
    called = 0
    async with running(settings_factory(), list(CONTRACTS)) as mesh:
        for name, module in CONTRACTS.items():
            channel = mesh.channel(name)
            for service in module.DESCRIPTOR.services_by_name.values():
                for method in service.methods:
                    path = f"/{service.full_name}/{method.name}"
                    for label, request in _bad_requests(method):
                        code, details = await _status(channel, path, method, request)
                        called += 1
                        if code not in PRECISE or not details.strip():
                            problems.append(f"{path} ({label}): {code.name} {details!r}")
    assert called > 150  # every RPC of the four services, streaming ones included
    assert problems == []
