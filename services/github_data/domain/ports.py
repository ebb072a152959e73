"""What the sync needs from a provider (a local directory of git repositories, or GitHub).

Implementations live in `services.github_data.providers`; they raise `ProviderError` for failures
that persist after their own retries (rate limits, 5xx, bad credentials, unreadable directory).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

from services.github_data.domain.models import PullRequestState


class ProviderError(Exception):
    """The provider failed for good (retries exhausted, or a non-retryable answer).

    `message` is readable by people; it becomes the sync status's error message.
    `status` is the HTTP status when there was one (0 otherwise).
    `retryable` says whether asking again later may succeed (rate limits, 5xx, GitHub unreachable).
    """

    def __init__(self, message: str, *, status: int = 0, retryable: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.retryable = retryable


@dataclass(frozen=True, slots=True)
class RemoteRepository:
    """A repository as the provider reports it."""

    full_name: str
    clone_url: str
    default_branch: str
    html_url: str = ""
    private: bool = False
    description: str = ""
    provider_update_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class RemotePullRequest:
    """An open (or draft) pull request as the provider reports it; `state` already normalized."""

    number: int
    title: str
    state: PullRequestState
    head_branch: str
    base_branch: str
    body: str = ""
    draft: bool = False
    url: str = ""
    author_login: str = ""
    create_time: datetime | None = None
    update_time: datetime | None = None
    merge_time: datetime | None = None
    close_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class RemoteMember:
    """A member of the provider account (GitHub organizations only)."""

    member_id: str
    login: str
    display_name: str = ""
    email: str = ""
    avatar_url: str = ""
    role: str = "member"
    state: str = "active"


class Provider(Protocol):
    """Reads one organization's account. Every method may raise `ProviderError`."""

    async def list_repositories(self) -> list[RemoteRepository]:
        """Every repository visible to the organization, in the provider's order."""
        ...

    async def list_members(self) -> list[RemoteMember]:
        """Members of the account ([] for local directories and personal accounts)."""
        ...

    async def list_open_pull_requests(self, repository: RemoteRepository) -> list[RemotePullRequest]:
        """Open pull requests of `repository`, most recently updated first ([] for local)."""
        ...
