"""The sandbox service's entities as plain dataclasses; states mirror the proto enums by lowercase name."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

WORK = "work"  # the checkout directory inside every sandbox (agents and processes run there)


class SandboxState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    DEGRADED = "degraded"
    ERROR = "error"
    DESTROYING = "destroying"
    DESTROYED = "destroyed"


class SessionState(StrEnum):
    CREATING = "creating"
    IDLE = "idle"
    RUNNING = "running"
    ERROR = "error"
    CLOSED = "closed"


class TurnState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    FAILED = "failed"

    @property
    def ended(self) -> bool:
        return self in (TurnState.COMPLETED, TurnState.CANCELLED, TurnState.FAILED)


class PermissionPolicy(StrEnum):
    ALLOW = "allow"
    REJECT = "reject"


class EventKind(StrEnum):
    """Session event kinds; the values of ACP `sessionUpdate` where one exists."""

    USER_MESSAGE = "user_message"
    USER_MESSAGE_CHUNK = "user_message_chunk"
    AGENT_MESSAGE_CHUNK = "agent_message_chunk"
    AGENT_THOUGHT_CHUNK = "agent_thought_chunk"
    PLAN = "plan"
    TOOL_CALL = "tool_call"
    TOOL_CALL_UPDATE = "tool_call_update"
    PERMISSION_REQUEST = "permission_request"
    PERMISSION_RESPONSE = "permission_response"
    AVAILABLE_COMMANDS_UPDATE = "available_commands_update"
    CURRENT_MODE_UPDATE = "current_mode_update"
    CONFIG_OPTION_UPDATE = "config_option_update"
    SESSION_INFO_UPDATE = "session_info_update"
    USAGE_UPDATE = "usage_update"
    TURN_COMPLETED = "turn_completed"
    ERROR = "error"
    OTHER = "other"


class EventSender(StrEnum):
    CLIENT = "client"
    AGENT = "agent"
    SERVICE = "service"


class ProcessState(StrEnum):
    RUNNING = "running"
    STOPPING = "stopping"
    EXITED = "exited"


class ChangeType(StrEnum):
    MODIFIED = "M"
    ADDED = "A"
    DELETED = "D"


@dataclass(frozen=True)
class SandboxKey:
    """Identifies a sandbox: `organizations/{organization}/sandboxes/{sandbox}`."""

    organization: str
    sandbox_id: str

    @property
    def name(self) -> str:
        return f"organizations/{self.organization}/sandboxes/{self.sandbox_id}"


@dataclass(frozen=True)
class SessionKey:
    """Identifies an agent session: `<sandbox>/sessions/{session}`."""

    sandbox: SandboxKey
    session_id: str

    @property
    def name(self) -> str:
        return f"{self.sandbox.name}/sessions/{self.session_id}"

    def turn_name(self, turn_id: str) -> str:
        return f"{self.name}/turns/{turn_id}"


@dataclass
class Checkout:
    clone_url: str
    branch: str
    base_branch: str
    branch_existed: bool
    path: str
    head_commit: str
    prepare_time: dt.datetime


@dataclass
class Sandbox:
    key: SandboxKey
    task: str
    repository: str
    provider: str
    provider_sandbox_id: str
    state: SandboxState
    checkout: Checkout | None
    error_message: str
    create_time: dt.datetime
    update_time: dt.datetime
    destroy_time: dt.datetime | None
    version: int
    replica: str = ""  # address of the owning replica; "" when one replica owns every sandbox


@dataclass
class AgentSession:
    key: SessionKey
    agent: str
    model: str
    mode: str
    permission_policy: PermissionPolicy
    acp_session_id: str
    state: SessionState
    current_turn: str
    last_event_seq: int
    error_message: str
    create_time: dt.datetime
    update_time: dt.datetime
    close_time: dt.datetime | None
    version: int


@dataclass
class Attachment:
    id: str
    file_path: str
    line_number: int
    line_content: str


@dataclass
class Turn:
    session: SessionKey
    turn_id: str
    state: TurnState
    text: str
    attachments: list[Attachment]
    user: str
    stop_reason: str
    error_message: str
    first_event_seq: int
    last_event_seq: int
    cancel_requested: bool
    runner: str
    agent_pid: int
    create_time: dt.datetime
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    heartbeat_time: dt.datetime | None = None

    @property
    def name(self) -> str:
        return self.session.turn_name(self.turn_id)


@dataclass
class NewEvent:
    """An event to append; the store assigns its sequence number and time."""

    kind: EventKind
    sender: EventSender
    text: str = ""
    payload: dict[str, Any] = field(default_factory=dict)


@dataclass
class SessionEvent:
    session: SessionKey
    seq: int
    create_time: dt.datetime
    kind: EventKind
    sender: EventSender
    turn: str
    text: str
    payload: dict[str, Any]

    @property
    def name(self) -> str:
        return f"{self.session.name}/events/{self.seq}"


@dataclass
class FileChange:
    path: str
    type: ChangeType
    added_lines: int
    removed_lines: int
    binary: bool


@dataclass
class FileDiff:
    path: str
    unified_diff: str
    truncated: bool


@dataclass
class GitState:
    sandbox: SandboxKey
    branch: str
    head_commit: str
    file_changes: list[FileChange]
    diffs: list[FileDiff]
    files: list[str]
    directories: list[str]
    compute_time: dt.datetime
    version: int = 0


@dataclass
class ProcessSpec:
    command: str
    args: list[str]
    cwd: str
    env: dict[str, str]
    tty: bool
    interactive: bool


@dataclass
class Process:
    sandbox: SandboxKey
    process_id: str
    spec: ProcessSpec
    request_id: str
    pid: int
    state: ProcessState
    exit_code: int | None
    exit_signal: int
    output_size_bytes: int
    create_time: dt.datetime
    exit_time: dt.datetime | None

    @property
    def name(self) -> str:
        return f"{self.sandbox.name}/processes/{self.process_id}"


@dataclass(frozen=True)
class AgentInfo:
    """A configured agent: `agents/{name}` → command line."""

    name: str
    command: str
    available: bool
    default: bool


@dataclass
class AgentConnection:
    sandbox: SandboxKey
    agent: str
    state: str  # starting | ready | error | stopped
    pid: int
    protocol_version: int
    error_message: str
    start_time: dt.datetime
