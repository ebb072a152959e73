"""Consumer of `organization.connect_provider`: forwards a ConnectOrganizationRequest (written by
ConnectLocalOrganization in its transaction) to github-data. ConnectOrganization only stores and
enqueues, and is idempotent by its request id, so a redelivery is harmless."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from foundry.github_data.v1 import github_data_service_pb2 as gh_pb2
from foundry.github_data.v1 import github_data_service_pb2_grpc as gh_grpc

from services.platform.channels import Channels
from services.platform.messaging.broker import Message
from services.platform.messaging.consumer import HandlerContext


def handler(peers: Channels) -> Callable[[Message, HandlerContext], Awaitable[None]]:
    """The queue handler, calling github-data over `peers` (UNAVAILABLE and the like are retried)."""

    async def handle(message: Message, ctx: HandlerContext) -> None:
        request = gh_pb2.ConnectOrganizationRequest.FromString(message.body)
        stub = gh_grpc.GithubDataServiceStub(peers.channel("github_data"))
        await stub.ConnectOrganization(request)  # a peer error raises as FoundryError (Channels)

    return handle
