"""Test support for the organization service (shared by its unit and integration tests): an
environment with the real service host, event builders as the task and github-data services publish
them, a Watch reader, and a stand-in github-data gRPC server that records ConnectOrganization calls."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from foundry.github_data.v1 import events_pb2 as gh_events
from foundry.github_data.v1 import github_data_service_pb2 as gh_pb2
from foundry.github_data.v1 import github_data_service_pb2_grpc as gh_grpc
from foundry.github_data.v1 import pull_request_pb2, repository_pb2, sync_status_pb2
from foundry.organization.v1 import organization_service_pb2 as pb
from foundry.organization.v1 import organization_service_pb2_grpc as pb_grpc
from foundry.task.v1 import events_pb2 as task_events
from foundry.task.v1 import session_pb2, task_pb2
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from services.platform.identity import Caller
from services.platform.messaging.broker import Broker
from services.platform.watch.testing import WatchClient
from tests.helpers.mesh import ALICE, Mesh

M = TypeVar("M", bound=Message)


def new_org_id() -> str:
    return "o-" + uuid.uuid4().hex[:10]


def ts(seconds: int) -> Timestamp:
    return Timestamp(seconds=1_800_000_000 + seconds)


# -- events as the task and github-data services publish them ------------------------------------------


def repo_name(org: str, repo: str) -> str:
    return f"organizations/{org}/repositories/{repo}"


def task_updated(
    org: str,
    task: str,
    version: int,
    *,
    repo: str = "r1",
    title: str = "t",
    branch: str = "",
    status: task_pb2.TaskStatus.ValueType = task_pb2.TASK_STATUS_IDLE,
    at: int = 0,
) -> tuple[str, Message]:
    name = f"organizations/{org}/tasks/{task}"
    summary = task_pb2.TaskSummary(
        name=name,
        repository=repo_name(org, repo),
        repository_full_name=f"acme/{repo}",
        title=title,
        status=status,
        branch=branch or f"b-{task}",
        update_time=ts(at or version),
        sessions=[session_pb2.SessionSummary(name=f"{name}/sessions/s1", display_name="Tab", unread=True)],
    )
    return "task.summary.updated", task_events.TaskSummaryChanged(
        name=name, version=version, task_summary=summary
    )


def task_removed(org: str, task: str, version: int, *, repo: str = "r1") -> tuple[str, Message]:
    return "task.summary.removed", task_events.TaskSummaryRemoved(
        name=f"organizations/{org}/tasks/{task}", version=version, repository=repo_name(org, repo)
    )


def pr_changed(
    org: str,
    number: int,
    version: int,
    *,
    repo: str = "r1",
    branch: str = "feature",
    title: str = "Add things",
    at: int = 0,
) -> tuple[str, Message]:
    name = f"{repo_name(org, repo)}/pullRequests/{number}"
    summary = pull_request_pb2.PullRequestSummary(
        name=name,
        number=number,
        repository=repo_name(org, repo),
        repository_full_name=f"acme/{repo}",
        title=title,
        state=pull_request_pb2.PULL_REQUEST_STATE_OPEN,
        head_branch=branch,
        base_branch="main",
        update_time=ts(at or version),
    )
    return "github_data.pull_request.changed", gh_events.PullRequestChanged(
        name=name,
        version=version,
        pull_request=json_format.ParseDict(
            json_format.MessageToDict(summary), pull_request_pb2.PullRequest()
        ),
        summary=summary,
    )


def pr_removed(
    org: str, number: int, version: int, *, repo: str = "r1", branch: str = "feature"
) -> tuple[str, Message]:
    name = f"{repo_name(org, repo)}/pullRequests/{number}"
    return "github_data.pull_request.removed", gh_events.PullRequestRemoved(
        name=name,
        version=version,
        repository=repo_name(org, repo),
        head_branch=branch,
        final_state=pull_request_pb2.PULL_REQUEST_STATE_MERGED,
    )


def repo_changed(org: str, repo: str, version: int, *, at: int = 0) -> tuple[str, Message]:
    name = repo_name(org, repo)
    repository = repository_pb2.Repository(
        name=name, full_name=f"acme/{repo}", default_branch="main", provider_update_time=ts(at or version)
    )
    return "github_data.repository.changed", gh_events.RepositoryChanged(
        name=name, version=version, repository=repository
    )


def repo_removed(org: str, repo: str, version: int) -> tuple[str, Message]:
    return "github_data.repository.removed", gh_events.RepositoryRemoved(
        name=repo_name(org, repo), version=version
    )


def sync_progress(
    org: str,
    version: int,
    *,
    state: sync_status_pb2.SyncState.ValueType = sync_status_pb2.SYNC_STATE_SYNCED,
    repositories: int = 0,
) -> tuple[str, Message]:
    name = f"organizations/{org}/syncStatus"
    status = sync_status_pb2.SyncStatus(
        name=name, state=state, repository_count=repositories, provider=sync_status_pb2.PROVIDER_LOCAL
    )
    return "github_data.sync.progress", gh_events.SyncProgress(name=name, version=version, sync_status=status)


async def publish(broker: Broker, *events: tuple[str, Message]) -> None:
    """Publish events on the topic exchange, one message id each (as an outbox relay would)."""
    for routing_key, message in events:
        await broker.publish(
            exchange="events",
            routing_key=routing_key,
            body=message.SerializeToString(),
            message_id=uuid.uuid4().hex,
        )


# -- a stand-in github-data server ------------------------------------------------------------------------


class FakeGithubData(gh_grpc.GithubDataServiceServicer):
    """Records ConnectOrganization calls; every other RPC is UNIMPLEMENTED."""

    def __init__(self) -> None:
        self.connects: list[gh_pb2.ConnectOrganizationRequest] = []

    async def ConnectOrganization(self, request: gh_pb2.ConnectOrganizationRequest, context: Any) -> Any:
        self.connects.append(request)
        return gh_pb2.ConnectOrganizationResponse(connection=request.connection)


@contextlib.asynccontextmanager
async def fake_github_data(port: int) -> AsyncIterator[FakeGithubData]:
    server = grpc.aio.server()
    # The generated base answers UNIMPLEMENTED for the RPCs FakeGithubData does not override;
    # mypy-protobuf declares those methods abstract.
    fake = FakeGithubData()  # type: ignore[abstract]
    gh_grpc.add_GithubDataServiceServicer_to_server(fake, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    try:
        yield fake
    finally:
        await server.stop(None)


# -- the environment ----------------------------------------------------------------------------------------


@dataclass
class OrgEnv:
    """The running organization service, its broker and the github-data stand-in."""

    mesh: Mesh
    github: FakeGithubData
    _stubs: dict[str, pb_grpc.OrganizationServiceAsyncStub] = field(default_factory=dict)

    def stub(self, caller: Caller = ALICE) -> pb_grpc.OrganizationServiceAsyncStub:
        if caller.subject not in self._stubs:
            self._stubs[caller.subject] = pb_grpc.OrganizationServiceStub(
                self.mesh.channel("organization", caller)
            )
        return self._stubs[caller.subject]

    async def publish(self, *events: tuple[str, Message]) -> None:
        await publish(self.mesh.broker, *events)

    async def new_org(self, root: Path, caller: Caller = ALICE) -> str:
        """A local organization owned by `caller` (its id is unique per call)."""
        org_id = new_org_id()
        path = root / org_id
        path.mkdir(parents=True)
        await self.stub(caller).ConnectLocalOrganization(
            pb.ConnectLocalOrganizationRequest(organization_id=org_id, root_path=str(path))
        )
        return org_id

    async def summary(self, org: str, caller: Caller = ALICE) -> pb.GetOrganizationSummaryResponse:
        return await self.stub(caller).GetOrganizationSummary(
            pb.GetOrganizationSummaryRequest(name=f"organizations/{org}/summary")
        )


class SummaryWatcher:
    """Reads WatchOrganizationSummary in the background into a WatchClient, across reconnects."""

    def __init__(
        self, env: OrgEnv, org: str, client: WatchClient | None = None, caller: Caller = ALICE
    ) -> None:
        self.stub = env.stub(caller)
        self.org = org
        self.client = client or WatchClient()
        self.call: Any = None
        self._task: asyncio.Task[None] | None = None

    def start(self) -> SummaryWatcher:
        self.client.begin()
        self.call = self.stub.WatchOrganizationSummary(
            pb.WatchOrganizationSummaryRequest(
                name=f"organizations/{self.org}/summary", resume_token=self.client.token
            ),
        )
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for response in self.call:
            self.client.apply(response.event)

    async def stop(self) -> None:
        if self.call is not None:
            self.call.cancel()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                await self._task

    def resources(self, cls: type[M]) -> dict[str, M]:
        """The streamed items of one message type (the summary mixes four), by resource name."""
        return resources_of(self.client, cls)


def resources_of(client: WatchClient, cls: type[M]) -> dict[str, M]:
    decoded: dict[str, M] = {}
    for name, packed in client.state.items():
        # types-protobuf: a message's DESCRIPTOR may be the upb Descriptor, Any.Is names only the other.
        if packed.Is(cast(Descriptor, cls.DESCRIPTOR)):
            message = cls()
            packed.Unpack(message)
            decoded[name] = message
    return decoded
