"""Plain records of the task service's state (rows read from and written to the store).

Statuses and stages are the lower-case short names of the proto enums (`TaskStatus`,
`ProvisioningStage`, `SessionStatus`), e.g. `init_enqueue_provision`, `sandbox_allocated`, `ready`.
Times are timezone-aware UTC datetimes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from services.platform.clock import now as now  # re-exported: the use cases import it from here

INIT_STATUSES = (
    "init_enqueue_provision",
    "init_create_sandbox",
    "init_prepare_repository",
    "init_ensure_agent",
    "init_create_session",
    "init_complete",
)
ENDED_STATUSES = ("archived", "killed")
BUSY_STATUSES = (
    "archive_stop_sessions",
    "archive_release_sandbox",
    "archive_finalize",
    "kill_destroy_sandbox",
    "kill_finalize",
)
STAGES = (
    "queued",
    "sandbox_allocated",
    "repo_prepared",
    "agent_starting",
    "agent_ready",
    "session_creating",
    "ready",
    "error",
)
OPEN_SESSION_STATUSES = ("pending_provision", "pending_session_create", "ready", "running", "idle", "error")
MESSAGE_ACCEPTING = ("ready", "idle", "running")
# A session in "error" whose agent session exists takes a message too: its turn or its agent failed
# (a crash, an OOM kill, the model API refusing), and the next message restarts the agent and resumes
# the ACP session where the agent can (`session/load`); the sandbox refuses it with its reason when
# the agent session never started.
RECOVERABLE_STATUSES = ("error",)


@dataclass
class Owner:
    """The user whose identity the sandbox uses for git."""

    user: str  # `users/{user}`
    login: str = ""
    email: str = ""
    avatar_url: str = ""
    updated_at: dt.datetime | None = None


@dataclass
class Task:
    """One task row. `organization` is the bare organization id; names are built from it."""

    id: str
    organization: str
    repository: str
    repository_full_name: str
    clone_url: str
    default_branch: str
    title: str
    prompt: str
    branch: str
    status: str
    agent: str = ""
    model: str = ""
    status_message: str = ""
    stage: str = "queued"
    stage_error: str = ""
    failed_stage: str = ""
    stage_updated_at: dt.datetime | None = None
    owner: Owner | None = None
    pull_request: bytes | None = None  # serialized foundry.github_data.v1.PullRequestSummary
    sandbox_state: int = 0  # foundry.sandbox.v1.SandboxState value; 0 until allocated
    sandbox_provider: str = ""
    sandbox_cwd: str = ""
    sandbox_error: str = ""
    git_state: bytes | None = None  # serialized foundry.sandbox.v1.GitState
    git_state_version: int = 0
    request_id: str | None = None
    # The latest PublishPullRequest or PushTask: "" (never) | publishing | published | error, with its
    # request.
    publish_state: str = ""
    publish_request_id: str | None = None
    publish_title: str = ""
    publish_body: str = ""
    publish_draft: bool = False
    publish_error: str = ""
    publish_head_commit: str = ""
    publish_requested_at: dt.datetime | None = None
    publish_updated_at: dt.datetime | None = None
    publish_push_only: bool = False  # PushTask: push the branch, open no pull request
    # The latest RevertFile requests, newest first: {request_id, path, state (pending | done | failed),
    # error, requested_at, updated_at (ISO 8601)}.
    file_reverts: list[dict[str, Any]] = field(default_factory=list)
    version: int = 0
    lease_owner: str | None = None
    lease_until: dt.datetime | None = None
    created_at: dt.datetime = field(default_factory=now)
    updated_at: dt.datetime = field(default_factory=now)
    ended_at: dt.datetime | None = None

    @property
    def name(self) -> str:
        return f"organizations/{self.organization}/tasks/{self.id}"

    @property
    def parent(self) -> str:
        return f"organizations/{self.organization}"

    @property
    def sandbox_name(self) -> str:
        """The sandbox of the task: its id is the task id."""
        return f"organizations/{self.organization}/sandboxes/{self.id}"

    @property
    def provisioning(self) -> bool:
        return self.status in INIT_STATUSES[:-1]

    @property
    def ended(self) -> bool:
        return self.status in ENDED_STATUSES


@dataclass
class Session:
    """One session (agent tab) row."""

    id: str
    task_id: str
    organization: str
    position: int
    display_name: str
    agent: str
    model: str
    status: str
    error_message: str = ""
    used: bool = False
    thinking_since: dt.datetime | None = None
    current_turn: str = ""
    sandbox_session: str = ""
    request_id: str | None = None
    created_at: dt.datetime = field(default_factory=now)
    updated_at: dt.datetime = field(default_factory=now)
    closed_at: dt.datetime | None = None
    agent_model: str = ""  # the model the agent session runs (ChangeModel pending while != model)
    agent_closed: bool = False  # the agent session was closed (CloseSession done)
    stop_requested_at: dt.datetime | None = None  # StopSession asked; cleared when the turns end
    command_at: dt.datetime | None = None  # the pending session command was last enqueued
    notice: str = ""  # the last turn was interrupted (sandbox service restart); cleared by a send

    @property
    def task_name(self) -> str:
        return f"organizations/{self.organization}/tasks/{self.task_id}"

    @property
    def name(self) -> str:
        return f"{self.task_name}/sessions/{self.id}"

    @property
    def closed(self) -> bool:
        return self.closed_at is not None


@dataclass
class QueuedMessage:
    """A message sent to a session; its id is the sandbox turn id."""

    id: str
    session_id: str
    task_id: str
    text: str
    attachments: list[dict[str, Any]]
    user: str
    # held (a first prompt waiting for its session to be ready) | queued | delivered | completed | failed
    state: str = "queued"
    request_id: str | None = None
    created_at: dt.datetime = field(default_factory=now)
    resent_at: dt.datetime | None = None  # last handed to the sandbox again by the turn sweep


@dataclass
class UserSessionState:
    """One user's unread flag and draft for one session."""

    session_id: str
    user: str
    unread: bool = False
    draft_text: str = ""
    draft_attachments: list[dict[str, Any]] = field(default_factory=list)
    draft_updated_at: dt.datetime | None = None
    updated_at: dt.datetime = field(default_factory=now)


@dataclass
class UserTaskState:
    """One user's state of a task: active tab and per-session state."""

    task_id: str
    user: str  # bare user id
    active_session: str = ""  # session id; "" = the first open one
    sessions: list[UserSessionState] = field(default_factory=list)
    updated_at: dt.datetime = field(default_factory=now)
