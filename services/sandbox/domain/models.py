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
    INTERRUPTED = "interrupted"  # the service stopped while it ran (not a failure of the session)

    @property
    def ended(self) -> bool:
        return self in (TurnState.COMPLETED, TurnState.CANCELLED, TurnState.FAILED, TurnState.INTERRUPTED)


class PermissionPolicy(StrEnum):
    ALLOW = "allow"
    REJECT = "reject"
    ASK = "ask"  # recorded as a PermissionRequest; the agent waits for a user's answer


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
    NOTICE = "notice"  # what the service did to the session (interrupted turn, agent restarted)
    MESSAGE_QUEUED = "message_queued"  # a prompt queued behind the running turn (steering)


class Opened(StrEnum):
    """How `Agents.open` got a live ACP session for an agent session."""

    LIVE = "live"  # this process already had it
    NEW = "new"  # `session/new`: the agent session had none yet
    LOADED = "loaded"  # the agent process was gone; `session/load` resumed the same ACP session
    REPLACED = "replaced"  # the agent process was gone and cannot load it; `session/new` replaced it


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
    pool: str = ""  # warm pool state (store/tables.py); "claimed" = taken from the warm pool
    egress: str = ""  # the egress policy it was created with ("" = the service's default)

    @property
    def from_warm_pool(self) -> bool:
        return self.pool == "claimed"


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

    @property
    def accepts_turns(self) -> bool:
        """Whether a prompt may be queued (and a queued turn claimed): IDLE or RUNNING, or ERROR once
        its ACP session existed, so the next turn restarts the dead agent and resumes the session."""
        if self.state in (SessionState.IDLE, SessionState.RUNNING):
            return True
        return self.state is SessionState.ERROR and bool(self.acp_session_id)


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
    base_branch: str = ""  # the branch the changes are measured against ("" : HEAD)
    base_commit: str = ""  # merge-base of HEAD and origin/<base_branch>; HEAD without one


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
    """A configured agent: `agents/{name}` → command line, whether it can run here, and its models.

    `installed`: the command is found; `credentials`: the variables one of which it needs
    (empty: none); `credentials_present`: one of them is set. Usable when both hold."""

    name: str
    command: str
    installed: bool
    default: bool
    models: tuple[str, ...] = ()
    credentials: tuple[str, ...] = ()
    credentials_present: bool = True

    @property
    def available(self) -> bool:
        return self.installed and self.credentials_present

    @property
    def unavailable_reason(self) -> str:
        """Why the agent cannot run here, in words ("" when it can)."""
        if not self.installed:
            return f"command {self.command!r} is not installed"
        if not self.credentials_present:
            return f"none of {', '.join(self.credentials)} is set for the sandbox service"
        return ""


@dataclass
class AgentConnection:
    sandbox: SandboxKey
    agent: str
    state: str  # starting | ready | error | stopped
    pid: int
    protocol_version: int
    error_message: str
    start_time: dt.datetime
