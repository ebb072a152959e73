"""Calls to peer services over `rt.peers` channels (generated stubs only). Peer errors arrive as
FoundryError subclasses (`from_rpc_error`), keeping the peer's reason."""

from __future__ import annotations

import time
from typing import Any, TypeVar

from foundry.github_data.v1 import github_data_service_pb2 as gd_pb2
from foundry.github_data.v1 import github_data_service_pb2_grpc as gd_grpc
from foundry.github_data.v1 import pull_request_pb2, repository_pb2, sync_status_pb2
from foundry.organization.v1 import organization_pb2, task_index_pb2, user_pb2
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.sandbox.v1 import agent_pb2, agent_session_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc

from services.platform.channels import Channels
from services.platform.routing import ReplicaRoutes, first_segments

T = TypeVar("T")
SANDBOX_OF = first_segments(4)  # organizations/{o}/sandboxes/{s}/... → the sandbox

MODES = {
    "exact": task_index_pb2.BRANCH_RESERVATION_MODE_EXACT,
    "existing": task_index_pb2.BRANCH_RESERVATION_MODE_EXISTING,
    "generate": task_index_pb2.BRANCH_RESERVATION_MODE_GENERATE,
}


EGRESS_POLICIES = {
    organization_pb2.SANDBOX_EGRESS_NONE: "none",
    organization_pb2.SANDBOX_EGRESS_MODEL_APIS: "model_apis",
    organization_pb2.SANDBOX_EGRESS_OPEN: "open",
}

# The organization's PermissionPolicy → the sandbox's (unspecified: allow, today's default).
PERMISSION_POLICIES = {
    organization_pb2.PERMISSION_POLICY_UNSPECIFIED: agent_session_pb2.PERMISSION_POLICY_ALLOW,
    organization_pb2.PERMISSION_POLICY_ALLOW: agent_session_pb2.PERMISSION_POLICY_ALLOW,
    organization_pb2.PERMISSION_POLICY_REJECT: agent_session_pb2.PERMISSION_POLICY_REJECT,
    organization_pb2.PERMISSION_POLICY_ASK: agent_session_pb2.PERMISSION_POLICY_ASK,
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
        response = await self._stub.ReserveTaskBranch(
            org_pb2.ReserveTaskBranchRequest(
                parent=f"organizations/{organization}",
                task_id=task_id,
                repository=repository,
                branch=branch,
                mode=MODES[mode],
                title=title,
            )
        )
        return response.task_index_entry.branch

    async def release_branch(self, *, organization: str, task_id: str) -> None:
        await self._stub.ReleaseTaskBranch(
            org_pb2.ReleaseTaskBranchRequest(name=f"organizations/{organization}/taskIndexEntries/{task_id}")
        )

    async def task_index_entry(self, *, organization: str, task_id: str) -> task_index_pb2.TaskIndexEntry:
        response = await self._stub.GetTaskIndexEntry(
            org_pb2.GetTaskIndexEntryRequest(name=f"organizations/{organization}/taskIndexEntries/{task_id}")
        )
        return response.task_index_entry

    async def sandbox_policies(
        self, *, organization: str
    ) -> tuple[str, agent_session_pb2.PermissionPolicy.ValueType]:
        """The organization's sandbox egress policy as the sandbox service names it (`none`,
        `model_apis`, `open`; "" for the sandbox service's default) and its permission policy (ALLOW
        when unset), from one GetOrganization. Background work only. Errors: NotFound, Unavailable."""
        response = await self._stub.GetOrganization(
            org_pb2.GetOrganizationRequest(name=f"organizations/{organization}")
        )
        egress = EGRESS_POLICIES.get(response.organization.sandbox_egress, "")
        policy = PERMISSION_POLICIES.get(
            response.organization.permission_policy, agent_session_pb2.PERMISSION_POLICY_ALLOW
        )
        return egress, policy

    async def permission_policy(self, *, organization: str) -> agent_session_pb2.PermissionPolicy.ValueType:
        """The organization's permission policy as the sandbox service names it (ALLOW when unset).
        Background work only (a peer read). Errors: NotFound, Unavailable."""
        _, policy = await self.sandbox_policies(organization=organization)
        return policy

    async def model_credentials(self, *, organization: str) -> dict[str, str]:
        """The organization's model API keys (variable -> key) for its agents' environment; never log
        them. Background work only (a service caller). Errors: PermissionDenied, Unavailable."""
        response = await self._stub.ResolveModelCredentials(
            org_pb2.ResolveModelCredentialsRequest(organization=f"organizations/{organization}")
        )
        return dict(response.environment)

    async def model_credential_variables(self, *, organization: str, deadline: float) -> set[str]:
        """Which model API key variables the organization has set (names only, never values).
        Errors: NotFound, PermissionDenied, Unavailable."""
        response = await self._stub.ListModelCredentials(
            org_pb2.ListModelCredentialsRequest(parent=f"organizations/{organization}"), timeout=deadline
        )
        return {c.variable for c in response.model_credentials}

    async def user(self, name: str) -> user_pb2.User:
        """GetUser `users/{id}` (the caller must be that user or a service)."""
        response = await self._stub.GetUser(org_pb2.GetUserRequest(name=name))
        return response.user

    async def is_member(self, *, organization: str, user: str) -> bool:
        response = await self._stub.CheckMembership(
            org_pb2.CheckMembershipRequest(organization=f"organizations/{organization}", user=user)
        )
        return bool(response.member)


class GithubDataClient:
    """Stored repository rows on the github-data service."""

    def __init__(self, peers: Channels) -> None:
        self._stub = gd_grpc.GithubDataServiceStub(peers.channel("github_data"))

    async def repository(self, name: str) -> repository_pb2.Repository:
        """The stored repository. Errors: NotFound."""
        response = await self._stub.GetRepository(gd_pb2.GetRepositoryRequest(name=name))
        return response.repository

    async def provider(self, organization: str) -> sync_status_pb2.Provider.ValueType:
        """The organization's provider (`PROVIDER_LOCAL`, `PROVIDER_GITHUB`) from its stored
        connection (no GitHub call). Errors: NotFound (never connected)."""
        response = await self._stub.GetConnection(
            gd_pb2.GetConnectionRequest(name=f"organizations/{organization}/connection")
        )
        return response.connection.provider

    async def access_token(self, repository: str, *, deadline: float | None = None) -> str:
        """A short-lived git token for `repository` ("" for local organizations); background work
        only (it may talk to GitHub). Never log it. Errors: FailedPrecondition
        (`NO_GITHUB_CREDENTIALS`), NotFound, Unavailable."""
        request = gd_pb2.GenerateRepositoryAccessTokenRequest(name=repository)
        rpc = self._stub.GenerateRepositoryAccessToken
        response = await (rpc(request, timeout=deadline) if deadline else rpc(request))
        return response.access_token

    async def publish_pull_request(
        self, request: gd_pb2.PublishPullRequestRequest, *, deadline: float
    ) -> pull_request_pb2.PullRequestSummary:
        """Open the pull request on GitHub and store it; returns its summary (derived by github_data).
        Errors: FailedPrecondition (`PROVIDER_HAS_NO_PULL_REQUESTS`), AlreadyExists
        (`PULL_REQUEST_ALREADY_EXISTS`), Unavailable."""
        response = await self._stub.PublishPullRequest(request, timeout=deadline)
        return response.summary

    async def open_pull_request(
        self, repository: str, head_branch: str
    ) -> pull_request_pb2.PullRequestSummary | None:
        """The summary of the stored open pull request whose head is `head_branch`, or None."""
        response = await self._stub.ListPullRequests(
            gd_pb2.ListPullRequestsRequest(parent=repository, head_branch=head_branch, page_size=1)
        )
        if not response.pull_requests:
            return None
        found = await self._stub.GetPullRequest(
            gd_pb2.GetPullRequestRequest(name=response.pull_requests[0].name)
        )
        return found.summary


class SandboxClient:
    """The sandbox service's idempotent commands (keyed by task id, session id and turn id), each sent
    to the replica that owns the sandbox (services.platform.routing)."""

    def __init__(self, peers: Channels) -> None:
        self.routes = ReplicaRoutes(peers, "sandbox", sb_grpc.SandboxServiceStub, SANDBOX_OF)
        self._agents: tuple[float, list[agent_pb2.Agent]] | None = None

    async def list_agents(self, *, deadline: float, max_age: float) -> list[agent_pb2.Agent]:
        """The agents the sandbox service can start (ListAgents, every page; any replica), reused for
        `max_age` seconds."""
        if self._agents is not None and time.monotonic() - self._agents[0] < max_age:
            return self._agents[1]
        agents: list[agent_pb2.Agent] = []
        token = ""
        while True:
            request = sb_pb2.ListAgentsRequest(page_size=1000, page_token=token)
            page: sb_pb2.ListAgentsResponse = await self._on("agents", "ListAgents", request, deadline)
            agents.extend(page.agents)
            token = page.next_page_token
            if not token:
                break
        self._agents = (time.monotonic(), agents)
        return agents

    async def _on(
        self, name: str, method: str, request: object, deadline: float | None = None, *, placing: bool = False
    ) -> Any:
        def invoke(stub: sb_grpc.SandboxServiceStub) -> Any:
            rpc = getattr(stub, method)
            return rpc(request, timeout=deadline) if deadline else rpc(request)

        return await self.routes.call(name, invoke, placing=placing)

    async def create_sandbox(
        self, request: sb_pb2.CreateSandboxRequest, *, deadline: float
    ) -> sb_pb2.CreateSandboxResponse:
        name = f"{request.parent}/sandboxes/{request.sandbox_id}"
        # The replica CreateSandbox lands on owns the sandbox: new ones go round the replicas in turn.
        response: sb_pb2.CreateSandboxResponse = await self._on(
            name, "CreateSandbox", request, deadline, placing=True
        )
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

    async def answer_permission_request(
        self, request: sb_pb2.AnswerPermissionRequestRequest
    ) -> sb_pb2.AnswerPermissionRequestResponse:
        return await self._on(request.name, "AnswerPermissionRequest", request)  # type: ignore[no-any-return]

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
