"""Fixtures: the task service with its real peers (organization, github-data, sandbox) on a local
organization whose one repository is a real git repository in the test's temp dir, plus a WatchTask
follower.

`task_world` signs alice in, connects the directory as organization `acme`, waits for the first
sync to list the repository and hands back stubs. Observations of the peers go through their own
RPCs (ListSandboxes, GetAgentSession, ListTaskIndexEntries) or, where no RPC lists them, by reading
the sandbox host's rows."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from foundry.github_data.v1 import events_pb2 as gd_events
from foundry.github_data.v1 import github_data_service_pb2 as gd_pb2
from foundry.github_data.v1 import github_data_service_pb2_grpc as gd_grpc
from foundry.github_data.v1 import pull_request_pb2
from foundry.organization.v1 import member_pb2, task_index_pb2
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.sandbox.v1 import sandbox_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as pb
from foundry.task.v1 import task_service_pb2_grpc as pb_grpc
from google.protobuf import json_format

from services.platform.channels import open_channel
from services.platform.identity import Caller, sign
from services.platform.messaging.broker import Broker
from services.platform.process import make_broker
from services.platform.server.host import ServiceHost
from services.platform.settings import ServiceName, Settings
from services.platform.watch.testing import WatchClient
from services.sandbox.store.tables import agent_sessions
from tests.helpers.eventually import assert_eventually
from tests.helpers.mesh import Mesh, running
from tests.unit.sandbox.gitrepo import make_origin

GATEWAY = Caller.service("gateway")
PEERS: tuple[ServiceName, ...] = ("organization", "github_data", "sandbox")


@dataclass
class TaskWorld:
    mesh: Mesh
    alice: Caller
    organization: str  # organizations/{id}
    repository: str  # organizations/{id}/repositories/{repo id}
    root: Path  # the organization's directory of repositories
    stub: pb_grpc.TaskServiceAsyncStub

    def watch(self, name: str, caller: Caller | None = None) -> TaskWatch:
        return TaskWatch(self.stub, name, self.mesh.settings, caller or self.alice)

    def task_stub(self, caller: Caller) -> pb_grpc.TaskServiceAsyncStub:
        return pb_grpc.TaskServiceStub(self.mesh.channel("task", caller))

    async def create(self, prompt: str = "add a hello file", **task: Any) -> task_pb2.Task:
        request = pb.CreateTaskRequest(
            parent=self.organization,
            task=task_pb2.Task(repository=task.pop("repository", self.repository), prompt=prompt, **task),
        )
        return (await self.stub.CreateTask(request)).task

    async def get(self, name: str) -> task_pb2.Task:
        return (await self.stub.GetTask(pb.GetTaskRequest(name=name))).task

    async def sign_in(self, login: str) -> Caller:
        """A signed-in local user (`user/local-<login>`), added to the organization by alice (its
        owner) with CreateMember."""
        caller = await sign_in(self.mesh, login)
        as_alice = org_grpc.OrganizationServiceStub(self.mesh.channel("organization", self.alice))
        await as_alice.CreateMember(
            org_pb2.CreateMemberRequest(
                parent=self.organization, member=member_pb2.Member(user=f"users/{caller.user_id}")
            )
        )
        return caller

    @property
    def org_id(self) -> str:
        return self.organization.removeprefix("organizations/")

    # -- observations of the real peers ---------------------------------------------------------

    def sandbox_stub(self) -> sb_grpc.SandboxServiceAsyncStub:
        return sb_grpc.SandboxServiceStub(self.mesh.channel("sandbox", self.alice))

    def sandbox_as_task_service(self) -> sb_grpc.SandboxServiceAsyncStub:
        """The sandbox service as the task service calls it: its commands (StartAgent,
        CloseAgentSession, …) are service-only, so a test acting underneath the task speaks as it."""
        return sb_grpc.SandboxServiceStub(self.mesh.channel("sandbox", Caller.service("task")))

    async def sandboxes(self) -> list[sandbox_pb2.Sandbox]:
        """Every sandbox of the organization, destroyed ones included."""
        listed = await self.sandbox_stub().ListSandboxes(
            sb_pb2.ListSandboxesRequest(parent=self.organization, show_destroyed=True)
        )
        return list(listed.sandboxes)

    async def agent_session_rows(self, sandbox_id: str | None = None) -> list[str]:
        """Agent sessions the sandbox service recorded (no RPC lists them), as session ids."""
        return await agent_session_ids(self.mesh.hosts["sandbox"], sandbox_id)

    async def index_entries(self) -> list[task_index_pb2.TaskIndexEntry]:
        stub = org_grpc.OrganizationServiceStub(self.mesh.channel("organization", self.alice))
        listed = await stub.ListTaskIndexEntries(
            org_pb2.ListTaskIndexEntriesRequest(parent=self.organization)
        )
        return list(listed.task_index_entries)


async def agent_session_ids(sandbox_host: ServiceHost, sandbox_id: str | None = None) -> list[str]:
    """Session ids of the agent_sessions rows of the sandbox service (of one sandbox if given)."""
    assert sandbox_host.db is not None
    query = sa.select(agent_sessions.c.session_id)
    if sandbox_id is not None:
        query = query.where(agent_sessions.c.sandbox_id == sandbox_id)
    async with sandbox_host.db.snapshot() as session:
        return sorted((await session.execute(query)).scalars())


async def sign_in(mesh: Mesh, login: str, *, root: Path | None = None, org_id: str = "acme") -> Caller:
    """Sign `login` in offline and, given `root`, connect it to organization `org_id` on that
    directory (which makes it a member). Returns the caller the gateway would then sign."""
    org = org_grpc.OrganizationServiceStub(mesh.channel("organization", GATEWAY))
    user = (await org.SignInLocal(org_pb2.SignInLocalRequest(login=login))).user
    caller = Caller(subject=f"user/{user.name.removeprefix('users/')}", login=login)
    if root is not None:
        as_user = org_grpc.OrganizationServiceStub(mesh.channel("organization", caller))
        await as_user.ConnectLocalOrganization(
            org_pb2.ConnectLocalOrganizationRequest(
                organization_id=org_id, root_path=str(root), request_id=str(uuid.uuid4())
            )
        )
    return caller


def make_repositories(tmp_path: Path) -> Path:
    """A directory holding one bare repository `demo` (branches `main` and `feature/existing`)."""
    (tmp_path / "git").mkdir()
    origin = make_origin(tmp_path / "git")
    root = tmp_path / "repos"
    root.mkdir()
    shutil.move(origin, root / "demo")
    return root


async def connect(mesh: Mesh, root: Path, *, org_id: str = "acme") -> tuple[Caller, str, str]:
    """Sign alice in, connect `root` as `org_id` and wait for the sync; (alice, org, repository)."""
    alice = await sign_in(mesh, "alice", root=root, org_id=org_id)
    organization = f"organizations/{org_id}"
    repos = gd_grpc.GithubDataServiceStub(mesh.channel("github_data", alice))

    async def synced() -> str:
        listed = await repos.ListRepositories(gd_pb2.ListRepositoriesRequest(parent=organization))
        assert [r.full_name for r in listed.repositories] == ["demo"]
        return str(listed.repositories[0].name)

    return alice, organization, await assert_eventually(synced, timeout=20)


@contextlib.asynccontextmanager
async def task_world(settings: Settings, tmp_path: Path, *, sandbox: bool = True) -> AsyncIterator[TaskWorld]:
    """The four real services (without the sandbox host when not `sandbox`: it is down)."""
    root = make_repositories(tmp_path)
    services: list[ServiceName] = [s for s in PEERS if sandbox or s != "sandbox"]
    async with running(settings, [*services, "task"]) as mesh:
        try:
            alice, organization, repository = await connect(mesh, root)
            stub = pb_grpc.TaskServiceStub(mesh.channel("task", alice))
            yield TaskWorld(mesh, alice, organization, repository, root, stub)
        finally:
            await stop_sandbox_now(mesh)


async def edited_task(world: TaskWorld) -> task_pb2.Task:
    """A provisioned task whose agent wrote hello.txt (not committed)."""
    task = await world.create("say hello")

    async def idle() -> task_pb2.Task:
        got = await world.get(task.name)
        assert got.status == task_pb2.TASK_STATUS_IDLE, got.status_message
        return got

    task = await assert_eventually(idle, timeout=30)
    await world.stub.SendMessage(
        pb.SendMessageRequest(name=task.sessions[0].name, text="write hello.txt: hi")
    )

    async def edited() -> task_pb2.Task:
        got = await idle()
        assert [c.path for c in got.git_state.file_changes] == ["hello.txt"], got.git_state
        return got

    return await assert_eventually(edited, timeout=30)


async def virtual_task(world: TaskWorld, number: int, branch: str, *, title: str = "") -> str:
    """Publish an open pull request on `branch` (as github_data would); return the name of the
    virtual task it makes in the organization's task index."""
    pr_name = f"{world.repository}/pullRequests/{number}"
    summary = pull_request_pb2.PullRequestSummary(
        name=pr_name,
        number=number,
        repository=world.repository,
        repository_full_name="demo",
        title=title or f"PR {number}",
        state=pull_request_pb2.PULL_REQUEST_STATE_OPEN,
        head_branch=branch,
        base_branch="main",
    )
    event = gd_events.PullRequestChanged(
        name=pr_name,
        version=1,
        pull_request=json_format.ParseDict(
            json_format.MessageToDict(summary), pull_request_pb2.PullRequest()
        ),
        summary=summary,
    )
    await world.mesh.broker.publish(
        exchange="events",
        routing_key="github_data.pull_request.changed",
        body=event.SerializeToString(),
        message_id=f"pr-{number}-opened",
    )

    async def virtual() -> str:
        found = [e for e in await world.index_entries() if e.branch == branch]
        assert len(found) == 1 and found[0].virtual, found
        return str(found[0].name).replace("/taskIndexEntries/", "/tasks/")

    return await assert_eventually(virtual, timeout=15)


async def stop_sandbox_now(mesh: Mesh) -> None:
    """Stop the sandbox host without a grace period, so a provisioning step waiting on a slow
    CreateSandbox fails at once instead of holding the task host's drain for its whole grace."""
    host = mesh.hosts.get("sandbox")
    if host is not None and host.server is not None and not host.draining:
        await host.begin_drain()
        await host.wait_idle(0)


@dataclass
class Replica:
    """One more task-service replica next to a running mesh: its own broker connection (as a
    separate process has), its own port, and a stub speaking to it."""

    host: ServiceHost
    broker: Broker
    stub: pb_grpc.TaskServiceAsyncStub
    channel: grpc.aio.Channel
    stopped: bool = False

    async def stop(self, grace: float = 5.0) -> None:
        """Drain for up to `grace` seconds, then close (a short grace is a crash mid-step)."""
        if self.stopped:
            return
        self.stopped = True
        await self.channel.close()
        await self.host.begin_drain()
        await self.host.wait_idle(grace)
        await self.host.close()
        await self.broker.close()


@contextlib.asynccontextmanager
async def task_replica(settings: Settings, caller: Caller) -> AsyncIterator[Replica]:
    """Start a task host on a free port with `settings` (a running mesh's), stopped on exit."""
    from services.embedded import service_wiring

    broker = make_broker(settings)
    await broker.connect()
    host = ServiceHost(settings, "task", broker, service_wiring("task"), port=0)
    await host.start()
    channel = open_channel(f"127.0.0.1:{host.port}", settings, caller, timeout=30)
    replica = Replica(host, broker, pb_grpc.TaskServiceStub(channel), channel)
    try:
        yield replica
    finally:
        await replica.stop()


@pytest.fixture
def fast_settings(settings_factory: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings with quick retries (2 attempts, 50 ms apart); keyword overrides merge on top."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {"messaging": {"max_attempts": 2, "retry_delay_seconds": 0.05}}
        values.update(overrides)
        return settings_factory(**values)

    return make


class TaskWatch:
    """Follows WatchTask in the background, applying events as a correct client does."""

    def __init__(
        self, stub: pb_grpc.TaskServiceAsyncStub, name: str, settings: Settings, caller: Caller
    ) -> None:
        self.client = WatchClient()
        # Explicit caller metadata wins over the channel's own signing: this watch runs as `caller`.
        self.metadata = sign(caller, settings.internal_auth_secret.get_secret_value())
        self.name = name
        self.history: list[task_pb2.Task] = []
        self.error: Exception | None = None
        self._task = asyncio.create_task(self._run(stub))

    async def _run(self, stub: pb_grpc.TaskServiceAsyncStub) -> None:
        try:
            await self._follow(stub)
        except Exception as exc:  # surfaced by `task`
            self.error = exc

    async def _follow(self, stub: pb_grpc.TaskServiceAsyncStub) -> None:
        async for response in stub.WatchTask(pb.WatchTaskRequest(name=self.name), metadata=self.metadata):
            self.client.apply(response.event)
            packed = self.client.state.get(self.name)
            if packed is None:
                continue
            current = task_pb2.Task()
            assert packed.Unpack(current)
            if not self.history or self.history[-1] != current:
                self.history.append(current)

    @property
    def task(self) -> task_pb2.Task:
        assert self.error is None, f"WatchTask failed: {self.error!r}"
        assert self.history, "no task seen yet"
        return self.history[-1]

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await self._task
