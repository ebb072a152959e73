"""GitHub users' OAuth tokens and the discovery of the accounts a token can see (no I/O).

github_data owns both: the gateway hands it the token at each GitHub sign-in (SetGithubToken), a
worker reads the token's viewer, organizations and App installations, and the result is published
as `github_data.user_accounts.changed` for the organization service, which turns it into
organizations and memberships. Sync, push and pull-request work that has no App installation uses
these tokens (`usable`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

DiscoveryState = Literal["pending", "running", "done", "error"]
REPO_SCOPE = "repo"


@dataclass(frozen=True, slots=True)
class GithubAccount:
    """A GitHub account: `login`, numeric `account_id`, display `name` (may be empty), avatar URL."""

    login: str
    account_id: int
    name: str = ""
    avatar_url: str = ""


@dataclass(frozen=True, slots=True)
class AppInstallation:
    """An installation of the configured GitHub App on the account `account_login`."""

    installation_id: int
    account_login: str
    account_id: int


@dataclass(frozen=True, slots=True)
class UserAccounts:
    """What one discovery read: the token's own account, its organizations and (App configured) the
    App installations it can access (None when no App is configured, so none were read)."""

    viewer: GithubAccount
    organizations: list[GithubAccount] = field(default_factory=list)
    installations: list[AppInstallation] | None = None

    def account_ids(self) -> list[int]:
        """The viewer's and the organizations' account ids (whose data the token can read)."""
        return [self.viewer.account_id, *(o.account_id for o in self.organizations)]


@dataclass(frozen=True, slots=True)
class Discovery:
    """Where a user's discovery is; `version` grows with every change (events carry it)."""

    user_id: str
    state: DiscoveryState
    version: int
    update_time: datetime
    error_message: str = ""
    last_success_time: datetime | None = None


@dataclass(frozen=True, slots=True)
class UserToken:
    """A user's newest OAuth token (never leaves the service but to GitHub and git)."""

    user_id: str
    access_token: str
    scopes: tuple[str, ...]
    expire_time: datetime | None
    update_time: datetime

    def usable(self, now: datetime, *, require_repo_scope: bool = True) -> bool:
        """Not expired, and holding the `repo` scope when asked for."""
        if self.expire_time is not None and self.expire_time <= now:
            return False
        return not require_repo_scope or REPO_SCOPE in self.scopes
