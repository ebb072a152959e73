"""An organization's model API key reaches its own tasks' agents (read by the task service in the
background and handed to the sandbox service), with the sandbox service's environment NOT holding
it; CreateTask accepts an agent whose key only the organization has; another organization's tasks
(a hostile agent included) never get it, and it shows in no task response or transcript."""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.github_data.v1 import github_data_service_pb2 as gd_pb2
from foundry.github_data.v1 import github_data_service_pb2_grpc as gd_grpc
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as pb
from foundry.task.v1 import task_service_pb2_grpc as pb_grpc

from services.platform.identity import Caller
from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, make_repositories, sign_in, task_world

KEY = "FOUNDRY_TEST_ORG_CLAUDE_KEY"
DIGEST = f'$ printf %s "${KEY}" | sha256sum'


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


async def _transcript(
    world: TaskWorld, caller: Caller, organization: str, repository: str, prompt: str, agent: str
) -> str:
    """Create a task with `prompt` as its first turn; the session's transcript once the turn ended."""
    stub = pb_grpc.TaskServiceStub(world.mesh.channel("task", caller))
    task = (
        await stub.CreateTask(
            pb.CreateTaskRequest(
                parent=organization, task=task_pb2.Task(repository=repository, prompt=prompt), agent=agent
            )
        )
    ).task
    sandbox = sb_grpc.SandboxServiceStub(world.mesh.channel("sandbox", caller))

    async def ended() -> str:
        got = (await stub.GetTask(pb.GetTaskRequest(name=task.name))).task
        session = (await stub.GetSession(pb.GetSessionRequest(name=got.sessions[0].name))).session
        assert session.sandbox_session, got.status_message
        listed = await sandbox.ListSessionEvents(
            sb_pb2.ListSessionEventsRequest(parent=session.sandbox_session)
        )
        text = str(listed)
        assert "TURN_COMPLETED" in text or "turn_completed" in text.lower(), text[-2000:]
        return text + str(got) + str(session)

    return await assert_eventually(ended, timeout=40, interval=0.3)


async def test_an_organizations_key_reaches_its_tasks_agents_and_no_other_organizations(
    fast_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY, raising=False)  # the sandbox service's environment does not hold it
    secret = "sk-ant-org-" + uuid.uuid4().hex
    settings = fast_settings(
        sandbox={
            "agents": {"fake": "foundry-fake-agent", "claude": "foundry-fake-agent"},
            "agent_credentials": {"claude": [KEY]},
        }
    )
    async with task_world(settings, tmp_path) as world:
        # Without a key anywhere, the agent is refused at once.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await world.stub.CreateTask(
                pb.CreateTaskRequest(
                    parent=world.organization,
                    task=task_pb2.Task(repository=world.repository, prompt="hi"),
                    agent="agents/claude",
                )
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION

        owner = org_grpc.OrganizationServiceStub(world.mesh.channel("organization", world.alice))
        await owner.SetModelCredential(
            org_pb2.SetModelCredentialRequest(parent=world.organization, variable=KEY, value=secret)
        )
        seen = await _transcript(
            world, world.alice, world.organization, world.repository, DIGEST, "agents/claude"
        )
        assert _sha(secret) in seen and secret not in seen

        # Organization B (bob's, its own repositories): its claude tasks are refused, and its hostile
        # agent reads no key in its environment and finds A's in no process it can see.
        (tmp_path / "b").mkdir()
        bob = await sign_in(world.mesh, "bob", root=make_repositories(tmp_path / "b"), org_id="borg")
        repos = gd_grpc.GithubDataServiceStub(world.mesh.channel("github_data", bob))

        async def synced() -> str:
            listed = await repos.ListRepositories(gd_pb2.ListRepositoriesRequest(parent="organizations/borg"))
            assert [r.full_name for r in listed.repositories] == ["demo"]
            return str(listed.repositories[0].name)

        repository_b = await assert_eventually(synced, timeout=20)
        bob_tasks = pb_grpc.TaskServiceStub(world.mesh.channel("task", bob))
        with pytest.raises(grpc.aio.AioRpcError) as refused_b:
            await bob_tasks.CreateTask(
                pb.CreateTaskRequest(
                    parent="organizations/borg",
                    task=task_pb2.Task(repository=repository_b, prompt="hi"),
                    agent="agents/claude",
                )
            )
        assert refused_b.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        probe = (
            f'$ printf %s "${KEY}" | sha256sum; for f in /proc/[0-9]*/environ; do '
            f'grep -qs {secret[:20]} "$f" && echo LE""AK "$f"; done; echo DO""NE'
        )
        seen_b = await _transcript(world, bob, "organizations/borg", repository_b, probe, "agents/fake")
        assert "DONE" in seen_b and "LEAK" not in seen_b
        assert _sha(secret) not in seen_b and _sha("") in seen_b
