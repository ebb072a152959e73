"""GithubDataService over gRPC: decode → one flow call → encode. Errors are FoundryErrors, mapped by
the host's interceptor."""

from __future__ import annotations

from typing import Any

import grpc
from foundry.github_data.v1 import github_data_service_pb2 as pb
from foundry.github_data.v1 import github_data_service_pb2_grpc as pb_grpc

from services.github_data import convert
from services.github_data.domain import names
from services.github_data.usecases import connections, publish, reads, tokens, user_accounts, webhooks
from services.github_data.usecases.deps import Deps
from services.platform import context as request_context
from services.platform.authz import Membership
from services.platform.errors import PermissionDenied, require

Ctx = grpc.aio.ServicerContext[Any, Any]


def _require_service(method: str) -> None:
    caller = request_context.caller()
    if caller is None or not caller.is_service:
        raise PermissionDenied(
            f"{method} is for services only", reason="SERVICE_CALLER_REQUIRED", domain=names.DOMAIN
        )


class GithubDataServicer(pb_grpc.GithubDataServiceServicer):
    """Thin RPC layer; every organization-scoped call checks membership first."""

    def __init__(self, deps: Deps, membership: Membership) -> None:
        self.deps = deps
        self.membership = membership

    async def _member(self, org: str) -> None:
        await self.membership.require(names.organization_name(org))

    async def ConnectOrganization(
        self, request: pb.ConnectOrganizationRequest, context: Ctx
    ) -> pb.ConnectOrganizationResponse:
        connection = convert.connection_from_pb(request.connection)
        await self._member(connection.organization)
        stored, status = await connections.connect(self.deps, connection)
        return pb.ConnectOrganizationResponse(
            connection=convert.connection_to_pb(stored), sync_status=convert.sync_status_to_pb(status)
        )

    async def GetConnection(self, request: pb.GetConnectionRequest, context: Ctx) -> pb.GetConnectionResponse:
        org = names.parse_suffixed(request.name, "connection")
        await self._member(org)
        return pb.GetConnectionResponse(
            connection=convert.connection_to_pb(await connections.get_connection(self.deps, org))
        )

    async def DisconnectOrganization(
        self, request: pb.DisconnectOrganizationRequest, context: Ctx
    ) -> pb.DisconnectOrganizationResponse:
        org = names.parse_suffixed(request.name, "connection")
        status = convert.installation_status(request.installation_status)
        await self._member(org)
        conn, sync = await connections.disconnect(self.deps, org, status, request.reason)
        return pb.DisconnectOrganizationResponse(
            connection=convert.connection_to_pb(conn), sync_status=convert.sync_status_to_pb(sync)
        )

    async def ListRepositories(
        self, request: pb.ListRepositoriesRequest, context: Ctx
    ) -> pb.ListRepositoriesResponse:
        org = names.parse_organization(request.parent)
        await self._member(org)
        rows, token, status = await reads.list_repositories(
            self.deps, org, request.page_size, request.page_token
        )
        return pb.ListRepositoriesResponse(
            repositories=[convert.repository_to_pb(r) for r in rows],
            next_page_token=token,
            freshness=convert.freshness(status),
        )

    async def GetRepository(self, request: pb.GetRepositoryRequest, context: Ctx) -> pb.GetRepositoryResponse:
        org, repo_id = names.parse_repository(request.name)
        await self._member(org)
        repo, status = await reads.get_repository(self.deps, org, repo_id)
        return pb.GetRepositoryResponse(
            repository=convert.repository_to_pb(repo), freshness=convert.freshness(status)
        )

    async def ListPullRequests(
        self, request: pb.ListPullRequestsRequest, context: Ctx
    ) -> pb.ListPullRequestsResponse:
        org, repo_id = names.parse_repository(request.parent, "parent", allow_all=True)
        await self._member(org)
        rows, token, status = await reads.list_pull_requests(
            self.deps, org, repo_id, request.head_branch, request.page_size, request.page_token
        )
        return pb.ListPullRequestsResponse(
            pull_requests=[convert.pull_request_to_pb(p) for p in rows],
            next_page_token=token,
            freshness=convert.freshness(status),
        )

    async def GetPullRequest(
        self, request: pb.GetPullRequestRequest, context: Ctx
    ) -> pb.GetPullRequestResponse:
        org, repo_id, number = names.parse_pull_request(request.name)
        await self._member(org)
        pr, status = await reads.get_pull_request(self.deps, org, repo_id, number)
        full = convert.pull_request_to_pb(pr)
        return pb.GetPullRequestResponse(
            pull_request=full, freshness=convert.freshness(status), summary=convert.pull_request_summary(full)
        )

    async def ListGithubMembers(
        self, request: pb.ListGithubMembersRequest, context: Ctx
    ) -> pb.ListGithubMembersResponse:
        org = names.parse_organization(request.parent)
        await self._member(org)
        rows, token, status = await reads.list_members(self.deps, org, request.page_size, request.page_token)
        return pb.ListGithubMembersResponse(
            github_members=[convert.member_to_pb(m) for m in rows],
            next_page_token=token,
            freshness=convert.freshness(status),
        )

    async def GetSyncStatus(self, request: pb.GetSyncStatusRequest, context: Ctx) -> pb.GetSyncStatusResponse:
        org = names.parse_suffixed(request.name, "syncStatus")
        await self._member(org)
        return pb.GetSyncStatusResponse(
            sync_status=convert.sync_status_to_pb(await reads.get_sync_status(self.deps, org))
        )

    async def RequestSync(self, request: pb.RequestSyncRequest, context: Ctx) -> pb.RequestSyncResponse:
        org = names.parse_suffixed(request.name, "syncStatus")
        await self._member(org)
        status, enqueued = await connections.request_sync(self.deps, org, request.reason or "manual reload")
        return pb.RequestSyncResponse(sync_status=convert.sync_status_to_pb(status), enqueued=enqueued)

    async def RecordWebhookDelivery(
        self, request: pb.RecordWebhookDeliveryRequest, context: Ctx
    ) -> pb.RecordWebhookDeliveryResponse:
        _require_service("RecordWebhookDelivery")
        delivery, duplicate = await webhooks.record_delivery(
            self.deps,
            delivery_id=request.delivery_id,
            event=request.event,
            payload=request.payload,
            receive_time=convert.from_ts(request.receive_time, request.HasField("receive_time")),
        )
        return pb.RecordWebhookDeliveryResponse(
            webhook_delivery=convert.delivery_to_pb(delivery), duplicate=duplicate
        )

    async def PublishPullRequest(
        self, request: pb.PublishPullRequestRequest, context: Ctx
    ) -> pb.PublishPullRequestResponse:
        org, repo_id = names.parse_repository(request.parent, "parent")
        user = names.parse_user(request.user, "user") if request.user else ""
        require(bool(request.head_branch), "head_branch", "must be set", domain=names.DOMAIN)
        require(bool(request.title), "title", "must be set", domain=names.DOMAIN)
        await self._member(org)
        pr = await publish.publish_pull_request(
            self.deps,
            org=org,
            repo_id=repo_id,
            head=request.head_branch,
            base=request.base_branch,
            title=request.title,
            body=request.body,
            draft=request.draft,
            user=user,
        )
        full = convert.pull_request_to_pb(pr)
        return pb.PublishPullRequestResponse(pull_request=full, summary=convert.pull_request_summary(full))

    async def GenerateRepositoryAccessToken(
        self, request: pb.GenerateRepositoryAccessTokenRequest, context: Ctx
    ) -> pb.GenerateRepositoryAccessTokenResponse:
        _require_service("GenerateRepositoryAccessToken")
        org, repo_id = names.parse_repository(request.name)
        user = names.parse_user(request.user, "user") if request.user else ""
        token, expires = await tokens.repository_access_token(self.deps, org=org, repo_id=repo_id, user=user)
        return pb.GenerateRepositoryAccessTokenResponse(access_token=token, expire_time=convert.ts(expires))

    async def SetGithubToken(
        self, request: pb.SetGithubTokenRequest, context: Ctx
    ) -> pb.SetGithubTokenResponse:
        _require_service("SetGithubToken")
        user_id = names.parse_user(request.user, "user").removeprefix("users/")
        await user_accounts.set_token(
            self.deps,
            user_id=user_id,
            access_token=request.access_token,
            scopes=list(request.scopes),
            expire_time=convert.from_ts(request.expire_time, request.HasField("expire_time")),
        )
        return pb.SetGithubTokenResponse()
