"""Calls to peer services (generated stubs over `rt.peers` only)."""

from __future__ import annotations

import grpc
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc

from services.github_data.domain.names import organization_name
from services.github_data.domain.ports import ProviderError
from services.platform.channels import Channels


class OrganizationTokens:
    """`TokenSource` backed by the organization service's ResolveGithubToken (service callers only)."""

    def __init__(self, peers: Channels) -> None:
        self._peers = peers

    async def token_for(self, organization: str, user: str) -> str:
        """The OAuth token of `user` (`users/{id}`, or '' for any member's) for `organization` (its id).

        Raises ProviderError when the organization service has none or cannot be reached.
        """
        stub = org_grpc.OrganizationServiceStub(self._peers.channel("organization"))
        try:
            response = await stub.ResolveGithubToken(
                org_pb2.ResolveGithubTokenRequest(
                    organization=organization_name(organization), user=user, require_repo_scope=True
                )
            )
        except grpc.aio.AioRpcError as exc:
            raise ProviderError(f"no GitHub token for organizations/{organization}: {exc.details()}") from exc
        return str(response.access_token)
