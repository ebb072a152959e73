"""Calls to peer services over `rt.peers` channels (generated stubs only). Peer errors arrive as
FoundryError subclasses (`from_rpc_error`), keeping the peer's reason."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, TypeVar

import grpc
from foundry.github_data.v1 import github_data_service_pb2 as gd_pb2
from foundry.github_data.v1 import github_data_service_pb2_grpc as gd_grpc
from foundry.github_data.v1 import pull_request_pb2, repository_pb2, sync_status_pb2
from foundry.organization.v1 import organization_pb2, task_index_pb2
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc

from services.platform.channels import Channels
from services.platform.errors import from_rpc_error
from services.platform.routing import ReplicaRoutes, first_segments

T = TypeVar("T")
SANDBOX_OF = first_segments(4)  # organizations/{o}/sandboxes/{s}/... → the sandbox

MODES = {
    "exact": task_index_pb2.BRANCH_RESERVATION_MODE_EXACT,
    "existing": task_index_pb2.BRANCH_RESERVATION_MODE_EXISTING,
    "generate": task_index_pb2.BRANCH_RESERVATION_MODE_GENERATE,
}


async def _call(awaitable: Awaitable[T], what: str) -> T:
    try:
        return await awaitable
    except grpc.RpcError as exc:
        raise from_rpc_error(exc, context=what) from exc


EGRESS_POLICIES = {
    organization_pb2.SANDBOX_EGRESS_NONE: "none",
    organization_pb2.SANDBOX_EGRESS_MODEL_APIS: "model_apis",
    organization_pb2.SANDBOX_EGRESS_OPEN: "open",
}


class OrganizationClient:
    """Task index (branch reservations) on the organization service."""

    def __init__(self, peers: Channels) -> None:
        self._stub = org_grpc.OrganizationServiceStub(peers.channel("organization"))

    async def reserve_branch(
        self, *, organization: str, task_id: str, repository: str, branch: str, mode: str, title: str
    ) -> str:
        """Reserve `branch` (mode exact | existing | generate) for the task; returns the branch.
        Errors: AlreadyExists (`BRANCH_TAKEN`), InvalidArgument, Unavailable."""
        response = await _call(
            self._stub.ReserveTaskBranch(
                org_pb2.ReserveTaskBranchRequest(
                    parent=f"organizations/{organization}",
                    task_id=task_id,
                    repository=repository,
                    branch=branch,
                    mode=MODES[mode],
                    title=title,
                )
            ),
            "ReserveTaskBranch",
        )
        return response.task_index_entry.branch

    async def release_branch(self, *, organization: str, task_id: str) -> None:
        await _call(
            self._stub.ReleaseTaskBranch(
                org_pb2.ReleaseTaskBranchRequest(
                    name=f"organizations/{organization}/taskIndexEntries/{task_id}"
                )
            ),
            "ReleaseTaskBranch",
        )

    async def task_index_entry(self, *, organization: str, task_id: str) -> task_index_pb2.TaskIndexEntry:
        response = await _call(
            self._stub.GetTaskIndexEntry(
                org_pb2.GetTaskIndexEntryRequest(
                    name=f"organizations/{organization}/taskIndexEntries/{task_id}"
                )
            ),
            "GetTaskIndexEntry",
        )
        return response.task_index_entry

    async def sandbox_egress(self, *, organization: str) -> str:
        """The organization's sandbox egress policy as the sandbox service names it (`none`,
        `model_apis`, `open`), or "" for the sandbox service's default. Errors: NotFound, Unavailable."""
        response = await _call(
            self._stub.GetOrganization(org_pb2.GetOrganizationRequest(name=f"organizations/{organization}")),
            "GetOrganization",
        )
        return EGRESS_POLICIES.get(response.organization.sandbox_egress, "")

    async def is_member(self, *, organization: str, user: str) -> bool:
        response = await _call(
            self._stub.CheckMembership(
                org_pb2.CheckMembershipRequest(organization=f"organizations/{organization}", user=user)
            ),
            "CheckMembership",
        )
        return bool(response.member)


class GithubDataClient:
    """Stored repository rows on the github-data service."""

    def __init__(self, peers: Channels) -> None:
        self._stub = gd_grpc.GithubDataServiceStub(peers.channel("github_data"))

    async def repository(self, name: str) -> repository_pb2.Repository:
        """The stored repository. Errors: NotFound."""
        response = await _call(
            self._stub.GetRepository(gd_pb2.GetRepositoryRequest(name=name)), "GetRepository"
        )
        return response.repository

    async def provider(self, organization: str) -> sync_status_pb2.Provider.ValueType:
        """The organization's provider (`PROVIDER_LOCAL`, `PROVIDER_GITHUB`) from its stored
        connection (no GitHub call). Errors: NotFound (never connected)."""
        response = await _call(
            self._stub.GetConnection(
                gd_pb2.GetConnectionRequest(name=f"organizations/{organization}/connection")
            ),
            "GetConnection",
        )
        return response.connection.provider

    async def access_token(self, repository: str, *, deadline: float | None = None) -> str:
        """A short-lived git token for `repository` ("" for local organizations); background work
        only (it may talk to GitHub). Never log it. Errors: FailedPrecondition
        (`NO_GITHUB_CREDENTIALS`), NotFound, Unavailable."""
        request = gd_pb2.GenerateRepositoryAccessTokenRequest(name=repository)
        rpc = self._stub.GenerateRepositoryAccessToken
        response = await _call(
            rpc(request, timeout=deadline) if deadline else rpc(request), "GenerateRepositoryAccessToken"
        )
        return response.access_token

    async def publish_pull_request(
        self, request: gd_pb2.PublishPullRequestRequest, *, deadline: float
    ) -> pull_request_pb2.PullRequest:
        """Open the pull request on GitHub and store it. Errors: FailedPrecondition
        (`PROVIDER_HAS_NO_PULL_REQUESTS`), AlreadyExists (`PULL_REQUEST_ALREADY_EXISTS`), Unavailable."""
        response = await _call(self._stub.PublishPullRequest(request, timeout=deadline), "PublishPullRequest")
        return response.pull_request

    async def open_pull_request(
        self, repository: str, head_branch: str
    ) -> pull_request_pb2.PullRequest | None:
        """The stored open pull request whose head is `head_branch`, or None."""
        response = await _call(
            self._stub.ListPullRequests(
                gd_pb2.ListPullRequestsRequest(parent=repository, head_branch=head_branch, page_size=1)
            ),
            "ListPullRequests",
        )
        return response.pull_requests[0] if response.pull_requests else None


class SandboxClient:
    """The sandbox service's idempotent commands (keyed by task id, session id and turn id), each sent
    to the replica that owns the sandbox (services.platform.routing)."""

    def __init__(self, peers: Channels) -> None:
        self.routes = ReplicaRoutes(peers, "sandbox", sb_grpc.SandboxServiceStub, SANDBOX_OF)

    async def _on(self, name: str, method: str, request: object, deadline: float | None = None) -> Any:
        def invoke(stub: sb_grpc.SandboxServiceStub) -> Any:
            rpc = getattr(stub, method)
            return rpc(request, timeout=deadline) if deadline else rpc(request)

        return await _call(self.routes.call(name, invoke), method)

    async def create_sandbox(
        self, request: sb_pb2.CreateSandboxRequest, *, deadline: float
    ) -> sb_pb2.CreateSandboxResponse:
        name = f"{request.parent}/sandboxes/{request.sandbox_id}"
        response: sb_pb2.CreateSandboxResponse = await self._on(name, "CreateSandbox", request, deadline)
        self.routes.remember(name, response.sandbox.replica)
        return response

    async def prepare_repository(
        self, request: sb_pb2.PrepareRepositoryRequest, *, deadline: float
    ) -> sb_pb2.PrepareRepositoryResponse:
        return await self._on(request.name, "PrepareRepository", request, deadline)  # type: ignore[no-any-return]

    async def start_agent(
        self, request: sb_pb2.StartAgentRequest, *, deadline: float
    ) -> sb_pb2.StartAgentResponse:
        return await self._on(request.parent, "StartAgent", request, deadline)  # type: ignore[no-any-return]

    async def start_agent_session(
        self, request: sb_pb2.StartAgentSessionRequest, *, deadline: float
    ) -> sb_pb2.StartAgentSessionResponse:
        return await self._on(request.parent, "StartAgentSession", request, deadline)  # type: ignore[no-any-return]

    async def prompt(self, request: sb_pb2.PromptSessionRequest) -> sb_pb2.PromptSessionResponse:
        return await self._on(request.name, "PromptSession", request)  # type: ignore[no-any-return]

    async def cancel_turn(self, name: str) -> None:
        await self._on(name, "CancelTurn", sb_pb2.CancelTurnRequest(name=name))

    async def close_session(self, name: str) -> None:
        await self._on(name, "CloseAgentSession", sb_pb2.CloseAgentSessionRequest(name=name))

    async def set_model(self, name: str, model: str) -> None:
        request = sb_pb2.SetAgentSessionModelRequest(name=name, model=model)
        await self._on(name, "SetAgentSessionModel", request)

    async def destroy(self, name: str, reason: str, *, deadline: float) -> None:
        await self._on(
            name, "DestroySandbox", sb_pb2.DestroySandboxRequest(name=name, reason=reason), deadline
        )

    async def push(
        self, name: str, *, access_token: str = "", commit_message: str = "", deadline: float = 300
    ) -> sb_pb2.PushBranchResponse:
        """`git push` of the sandbox's branch; `access_token` authenticates HTTPS remotes; with a
        `commit_message`, uncommitted changes are committed first."""
        request = sb_pb2.PushBranchRequest(
            name=name, access_token=access_token, commit_message=commit_message
        )
        return await self._on(name, "PushBranch", request, deadline)  # type: ignore[no-any-return]

    async def revert_file(self, name: str, path: str) -> sb_pb2.RevertFileResponse:
        request = sb_pb2.RevertFileRequest(name=name, path=path)
        return await self._on(name, "RevertFile", request)  # type: ignore[no-any-return]
