"""The shared state every load user works on: one signed-in user, one organization with a synced
repository, and one task whose first session is ready (so messages can be sent to it).

`set_up` creates them through the services' gRPC APIs (synchronous stubs, so it runs both in a plain
process and under locust's gevent); `ensure` loads a saved world or sets one up.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TypeVar

import grpc
from foundry.github_data.v1 import github_data_service_pb2 as gd_pb
from foundry.github_data.v1 import github_data_service_pb2_grpc as gd_grpc
from foundry.organization.v1 import organization_service_pb2 as org_pb
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as task_pb
from foundry.task.v1 import task_service_pb2_grpc as task_grpc

from load.config import Targets
from services.platform.identity import Caller, sign

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """Resource names shared by the load users (JSON-serialisable)."""

    login: str
    user_subject: str
    organization: str
    repository: str
    task: str
    session: str

    @property
    def caller(self) -> Caller:
        return Caller(subject=self.user_subject, login=self.login)

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @staticmethod
    def load(path: Path) -> World:
        return World(**json.loads(path.read_text()))


def make_git_repos(root: Path, names: tuple[str, ...] = ("demo",)) -> Path:
    """`root` holding one git repository per name, each with one commit; returns `root`."""
    for name in names:
        repo = root / name
        repo.mkdir(parents=True, exist_ok=True)
        (repo / "README.md").write_text(f"# {name}\n")
        git = ["git", "-c", "user.name=Load", "-c", "user.email=load@localhost"]
        for args in (["init", "-q", "-b", "main"], ["add", "."], ["commit", "-q", "-m", "init"]):
            subprocess.run([*git, *args], cwd=repo, check=True, capture_output=True)
    return root


def _poll(what: str, probe: Callable[[], T | None], timeout: float) -> T:
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached within {timeout:g} s")
        time.sleep(0.2)


def set_up(
    targets: Targets,
    *,
    login: str = "load",
    organization: str = "",
    repos_dir: Path | None = None,
    ready_task: bool = True,
    timeout: float = 90.0,
) -> World:
    """Sign in `login`, connect a local organization (a fresh git repository under `repos_dir`, or a
    temporary directory) unless `organization` names an existing one the user belongs to, wait for
    its first repository, create a task and wait until it is idle with a ready session (unless
    `ready_task` is false: then `task` and `session` are "").

    Raises grpc.RpcError from any call and TimeoutError when a wait exceeds `timeout` seconds.
    """
    service = sign(Caller.service("load"), targets.secret, ttl_seconds=3600)
    with (
        grpc.insecure_channel(targets.organization) as org_ch,
        grpc.insecure_channel(targets.github_data) as gd_ch,
        grpc.insecure_channel(targets.task) as task_ch,
    ):
        orgs = org_grpc.OrganizationServiceStub(org_ch)
        user = orgs.SignInLocal(
            org_pb.SignInLocalRequest(login=login, user_agent="foundry-load"), metadata=service
        ).user
        caller = Caller(subject=f"user/{user.name.removeprefix('users/')}", login=user.login)
        me = sign(caller, targets.secret, ttl_seconds=3600)
        if not organization:
            root = repos_dir or Path(tempfile.mkdtemp(prefix="foundry-load-"))
            make_git_repos(root)
            organization = orgs.ConnectLocalOrganization(
                org_pb.ConnectLocalOrganizationRequest(
                    root_path=str(root.resolve()), request_id=str(uuid.uuid4())
                ),
                metadata=me,
            ).organization.name
        repos = gd_grpc.GithubDataServiceStub(gd_ch)

        def first_repository() -> str | None:
            listed = repos.ListRepositories(gd_pb.ListRepositoriesRequest(parent=organization), metadata=me)
            return listed.repositories[0].name if listed.repositories else None

        repository = _poll("a synced repository", first_repository, timeout)
        if not ready_task:
            return World(login, caller.subject, organization, repository, "", "")
        tasks = task_grpc.TaskServiceStub(task_ch)
        created = tasks.CreateTask(
            task_pb.CreateTaskRequest(
                parent=organization,
                task=task_pb2.Task(repository=repository, prompt="load test: the shared task"),
                request_id=str(uuid.uuid4()),
            ),
            metadata=me,
        ).task

        def ready() -> task_pb2.Task | None:
            task = tasks.GetTask(task_pb.GetTaskRequest(name=created.name), metadata=me).task
            if task.status == task_pb2.TASK_STATUS_ERROR:
                raise RuntimeError(f"task {task.name} failed: {task.status_message}")
            return task if task.status == task_pb2.TASK_STATUS_IDLE and task.sessions else None

        task = _poll("the shared task's idle state", ready, timeout)
    return World(login, caller.subject, organization, repository, task.name, task.sessions[0].name)


def ensure(targets: Targets, path: Path | None, **options: object) -> World:
    """The world saved at `path` if it exists; otherwise a new one (saved to `path` when given)."""
    if path is not None and path.exists():
        return World.load(path)
    world = set_up(targets, **options)  # type: ignore[arg-type]
    if path is not None:
        world.save(path)
    return world
