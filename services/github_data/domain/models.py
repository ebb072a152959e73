"""Plain typed records of the github_data service (no grpc, sqlalchemy or pb2 here).

States and phases are lower-case strings that match the stored columns; `api/convert.py` maps them
to the proto enums.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

ProviderKind = Literal["local", "github"]
AccountType = Literal["user", "organization", ""]
InstallationStatus = Literal["connected", "install_required", "reconnect_required", ""]
SyncState = Literal["pending", "syncing", "synced", "error"]
SyncPhase = Literal[
    "discovering_repositories", "syncing_repositories", "syncing_members", "syncing_pull_requests"
]
JobState = Literal["idle", "queued", "running"]
PullRequestState = Literal["OPEN", "DRAFT", "CLOSED", "MERGED", ""]
DeliveryState = Literal["queued", "handled", "ignored", "failed"]

PHASES: tuple[SyncPhase, ...] = (
    "discovering_repositories",
    "syncing_repositories",
    "syncing_members",
    "syncing_pull_requests",
)
PR_BATCH_SIZE = 10  # repositories whose pull requests are listed concurrently, one commit per batch
# A running sync's lease on its job: renewed every third of it while the runner lives; a runner that
# died (kill -9, lost host) is taken over once it lapses, by the next sweep (STALL_SWEEP_SECONDS).
SYNC_LEASE_SECONDS = 6.0


@dataclass(frozen=True, slots=True)
class Connection:
    """Where an organization's data comes from. `organization` is the id (`acme`)."""

    organization: str
    provider: ProviderKind
    root_path: str = ""
    account_login: str = ""
    account_id: int = 0
    account_type: AccountType = ""
    installation_id: int = 0
    token_user: str = ""
    api_url: str = ""
    installation_status: InstallationStatus = "connected"
    create_time: datetime | None = None
    update_time: datetime | None = None

    def same_settings(self, other: Connection) -> bool:
        """True when `other` points at the same data with the same credentials."""
        keys = (
            "provider",
            "root_path",
            "account_login",
            "account_id",
            "account_type",
            "installation_id",
            "token_user",
            "api_url",
        )
        return all(getattr(self, k) == getattr(other, k) for k in keys)


@dataclass(frozen=True, slots=True)
class SyncStatus:
    """The sync status of one organization plus counts of stored rows (filled by reads)."""

    organization: str
    state: SyncState = "pending"
    phase: SyncPhase | None = None
    label: str = ""
    processed: int = 0
    total: int = 0
    generation: int = 0
    last_sync_time: datetime | None = None
    last_webhook_time: datetime | None = None
    last_webhook_event: str = ""
    error_message: str = ""
    version: int = 0
    job_state: JobState = "idle"
    job_reason: str = ""
    job_rerun: str = ""  # why a sync was asked for while this one ran: it follows this one
    update_time: datetime | None = None
    repository_count: int = 0
    open_pull_request_count: int = 0
    provider: ProviderKind | None = None
    installation_status: InstallationStatus = ""
    connected_account: str = ""

    @property
    def job_active(self) -> bool:
        """A sync is queued or running: RequestSync must not start another."""
        return self.job_state in ("queued", "running")


@dataclass(frozen=True, slots=True)
class Repository:
    """A stored repository; `repo_id` is `repository_id(clone_url)`."""

    organization: str
    repo_id: str
    full_name: str
    clone_url: str
    default_branch: str
    html_url: str = ""
    private: bool = False
    description: str = ""
    sync_generation: int = 0
    provider_update_time: datetime | None = None
    version: int = 0
    create_time: datetime | None = None
    update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class PullRequest:
    """A pull request. Stored ones are OPEN or DRAFT; CLOSED/MERGED only travel in removal events."""

    organization: str
    repo_id: str
    number: int
    repository_full_name: str
    title: str
    state: PullRequestState
    head_branch: str
    base_branch: str
    body: str = ""
    draft: bool = False
    url: str = ""
    author_login: str = ""
    create_time: datetime | None = None
    provider_update_time: datetime | None = None
    merge_time: datetime | None = None
    close_time: datetime | None = None
    sync_generation: int = 0
    version: int = 0

    def differs_from(self, other: PullRequest) -> bool:
        """True when a field people see changed (what makes a PullRequestChanged event)."""
        keys = (
            "title",
            "body",
            "state",
            "draft",
            "url",
            "head_branch",
            "base_branch",
            "author_login",
            "provider_update_time",
            "repository_full_name",
        )
        return any(getattr(self, k) != getattr(other, k) for k in keys)


@dataclass(frozen=True, slots=True)
class GithubMember:
    """A member of the GitHub organization behind an organization."""

    organization: str
    member_id: str
    login: str
    display_name: str = ""
    email: str = ""
    avatar_url: str = ""
    role: str = ""
    state: str = ""
    sync_generation: int = 0
    update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class WebhookDelivery:
    """One stored webhook delivery."""

    delivery_id: str
    event: str
    action: str
    payload: bytes
    state: DeliveryState
    receive_time: datetime
    organization: str = ""
    detail: str = ""
    handle_time: datetime | None = None

    @property
    def event_action(self) -> str:
        """`<event>.<action>`, or the event alone when it has no action."""
        return f"{self.event}.{self.action}" if self.action else self.event
