"""Shared wiring for github_data tests: fast settings, a service-identity stub, an event recorder,
an RSA key pair for the GitHub App, and real git repositories."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from foundry.github_data.v1 import events_pb2
from foundry.github_data.v1 import github_data_service_pb2_grpc as pb_grpc
from foundry.task.v1 import events_pb2 as task_events_pb2
from google.protobuf.message import Message as ProtoMessage

from services.platform.identity import Caller
from services.platform.messaging import Delivery, QueueSpec
from services.platform.messaging.broker import Broker
from services.platform.settings import MessagingSettings, Settings
from tests.helpers.github_server import app_key_pair
from tests.helpers.mesh import Mesh

ORGANIZATION = Caller.service("organization")
EVENT_TYPES: dict[str, type[ProtoMessage]] = {
    "github_data.sync.progress": events_pb2.SyncProgress,
    "github_data.repository.changed": events_pb2.RepositoryChanged,
    "github_data.repository.removed": events_pb2.RepositoryRemoved,
    "github_data.pull_request.changed": events_pb2.PullRequestChanged,
    "github_data.pull_request.removed": events_pb2.PullRequestRemoved,
    "github_data.task.archive_on_branch": task_events_pb2.ArchiveTaskOnBranch,
    "github_data.member.changed": events_pb2.GithubMemberChanged,
    "github_data.member.removed": events_pb2.GithubMemberRemoved,
    "github_data.user_accounts.changed": events_pb2.UserAccountsChanged,
}


@pytest.fixture(name="settings")
def _settings(settings_factory: Callable[..., Settings], rsa_keys: tuple[str, str]) -> Settings:
    return settings_factory(
        messaging=MessagingSettings(
            retry_delay_seconds=0.05, retry_delay_max_seconds=0.2, outbox_sweep_seconds=0.5
        ),
        github={"app_id": "4242", "app_private_key": rsa_keys[0], "webhook_secret": "s3cret"},
    )


@pytest.fixture(name="rsa_keys", scope="session")
def _rsa_keys() -> tuple[str, str]:
    """(private PEM, public PEM) of the test GitHub App."""
    return app_key_pair()


def stub(mesh: Mesh, caller: Caller = ORGANIZATION) -> pb_grpc.GithubDataServiceAsyncStub:
    """A GithubDataService stub speaking as `caller` (default: the organization service)."""
    return pb_grpc.GithubDataServiceStub(mesh.channel("github_data", caller))


@dataclass
class EventLog:
    """Every event published on `github_data.#` (and the archive request), decoded, in order."""

    items: list[tuple[str, Any]] = field(default_factory=list)

    async def attach(self, broker: Broker, prefix: str) -> None:
        spec = QueueSpec(name=f"{prefix}.test.github_data_events", bindings=("github_data.#",))

        async def on_delivery(delivery: Delivery) -> None:
            key = delivery.message.routing_key
            self.items.append((key, EVENT_TYPES[key].FromString(delivery.message.body)))
            await delivery.ack()

        await broker.consume(spec, on_delivery)

    def of(self, routing_key: str) -> list[Any]:
        return [msg for key, msg in self.items if key == routing_key]


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True)


def make_repo(root: Path, name: str, branch: str = "main", *, bare: bool = False) -> Path:
    """A real git repository (one commit on `branch`), or a bare one whose HEAD is `branch`."""
    path = root / name
    path.mkdir(parents=True)
    if bare:
        git("init", "--bare", "-q", "-b", branch, cwd=path)
        return path
    git("init", "-q", "-b", branch, cwd=path)
    (path / "README.md").write_text(f"# {name}\n")
    git("add", ".", cwd=path)
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-q", "-m", "init", cwd=path)
    return path
