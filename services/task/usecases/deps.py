"""`Deps`: what the task service's use cases need, built once by `app.wire`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from services.platform.authz import Membership
from services.platform.db import Database
from services.platform.messaging.broker import queue_name
from services.platform.outbox import Outbox
from services.platform.settings import Settings
from services.task.clients import GithubDataClient, OrganizationClient, SandboxClient
from services.task.repositories import RepositoryCache

LEASE_SECONDS = 6.0
"""How long a provisioning step's lease lasts without renewal (renewed every 2 s); a crashed
replica's task is taken over by another one after at most this plus one stall sweep (2 s): measured
in tests/e2e/test_drain_mesh.py, goal <= 10 s (issue 16)."""
LEASE_RENEW_SECONDS = 4.0


@dataclass
class StepRuns:
    """Diagnostic: when this process ran the provisioning steps of its latest `keep` tasks
    (`time.monotonic()` seconds, start and end per run), for tests that check one task's steps never
    overlap across replicas. Bounded, so a long-running replica does not grow it forever."""

    spans: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    keep: int = 1000

    def record(self, task_id: str, start: float, end: float) -> None:
        self.spans.setdefault(task_id, []).append((start, end))
        if len(self.spans) > self.keep:
            del self.spans[next(iter(self.spans))]  # the task seen first


@dataclass
class Deps:
    """Settings, database, outbox and peer clients of one task-service process."""

    settings: Settings
    db: Database
    outbox: Outbox
    organization: OrganizationClient
    github_data: GithubDataClient
    sandbox: SandboxClient
    membership: Membership
    replica: str = field(default_factory=lambda: uuid.uuid4().hex)
    lease_seconds: float = LEASE_SECONDS
    steps: StepRuns = field(default_factory=StepRuns)
    # GetRepository answers for CreateTask (TTL and github_data.repository.* events; see its module).
    repositories: RepositoryCache = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.repositories is None:
            self.repositories = RepositoryCache(self.github_data.repository)

    def queue(self, name: str) -> str:
        """Full name of one of the task service's work queues (`provision`, `ensure_session`, …)."""
        return queue_name(self.settings.name_prefix, "task", name)

    @property
    def step_timeout(self) -> float:
        """Seconds one provisioning step may take (`FOUNDRY_SANDBOX__STEP_TIMEOUT_SECONDS`)."""
        return self.settings.sandbox.step_timeout_seconds
