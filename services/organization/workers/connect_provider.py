"""Consumer of `organization.connect_provider`: forwards a ConnectOrganizationRequest (written by
ConnectLocalOrganization in its transaction) to github-data. ConnectOrganization only stores and
enqueues, and is idempotent by its request id, so a redelivery is harmless."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import grpc
from foundry.github_data.v1 import github_data_service_pb2 as gh_pb2
from foundry.github_data.v1 import github_data_service_pb2_grpc as gh_grpc

from services.platform.channels import Channels
from services.platform.errors import from_rpc_error
from services.platform.messaging.broker import Message
from services.platform.messaging.consumer import HandlerContext


def handler(peers: Channels) -> Callable[[Message, HandlerContext], Awaitable[None]]:
    """The queue handler, calling github-data over `peers` (UNAVAILABLE and the like are retried)."""

    async def handle(message: Message, ctx: HandlerContext) -> None:
        request = gh_pb2.ConnectOrganizationRequest.FromString(message.body)
        stub = gh_grpc.GithubDataServiceStub(peers.channel("github_data"))
        try:
            await stub.ConnectOrganization(request)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc, context="github_data.ConnectOrganization") from exc

    return handle
