"""Domain set-up over real gRPC against a `Cluster`: a signed-in user, a local organization whose
repository was synced, and tasks created in it."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from foundry.github_data.v1 import github_data_service_pb2 as gh_pb
from foundry.github_data.v1 import github_data_service_pb2_grpc as gh_grpc
from foundry.organization.v1 import organization_service_pb2 as org_pb
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as task_pb
from foundry.task.v1 import task_service_pb2_grpc as task_grpc

from services.platform.identity import Caller
from tests.e2e.procs.cluster import Cluster
from tests.helpers import assert_eventually

GATEWAY = Caller.service("gateway")


@dataclass
class World:
    """A user who is a member of `organization` (`organizations/<id>`) holding `repository`."""

    user: Caller
    organization: str
    repository: str


def make_repos(root: Path) -> Path:
    """A directory holding one git repository (`demo`) with one commit; returns the directory."""
    repo = root / "repos" / "demo"
    repo.mkdir(parents=True)
    (repo / "README.md").write_text("# demo\n")
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=repo, check=True)
    return repo.parent


async def make_world(cluster: Cluster, root: Path, login: str = "alice") -> World:
    """Sign `login` in, connect a local organization on a fresh repository directory and wait until
    its repository is synced."""
    orgs = org_grpc.OrganizationServiceStub(cluster.channel("organization", GATEWAY))
    signed = await orgs.SignInLocal(org_pb.SignInLocalRequest(login=login))
    user = Caller(subject=f"user/{signed.user.name.removeprefix('users/')}", login=login)
    as_user = org_grpc.OrganizationServiceStub(cluster.channel("organization", user))
    connect = org_pb.ConnectLocalOrganizationRequest(
        root_path=str(make_repos(root)), request_id=str(uuid.uuid4())
    )
    org = (await as_user.ConnectLocalOrganization(connect)).organization
    github = gh_grpc.GithubDataServiceStub(cluster.channel("github_data", user))

    async def synced() -> str:
        repos = (await github.ListRepositories(gh_pb.ListRepositoriesRequest(parent=org.name))).repositories
        assert repos, "repository not synced yet"
        return str(repos[0].name)

    repository = await assert_eventually(synced, timeout=30, interval=0.2)
    return World(user, org.name, repository)


def create_request(world: World, prompt: str = "add a feature") -> task_pb.CreateTaskRequest:
    """An idempotent CreateTask request (its request_id makes a retry return the first task)."""
    return task_pb.CreateTaskRequest(
        parent=world.organization,
        task=task_pb2.Task(repository=world.repository, prompt=prompt),
        request_id=str(uuid.uuid4()),
    )


def task_stub(cluster: Cluster, world: World, label: str | None = None) -> task_grpc.TaskServiceAsyncStub:
    """TaskService over every task replica (round-robin), or one replica `label` (`task-1`)."""
    channel = cluster.direct(label, world.user) if label else cluster.channel("task", world.user)
    return task_grpc.TaskServiceStub(channel)
