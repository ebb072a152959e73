"""What a GitHub user's organization discovery found, and which organizations it implies.

Plain typed Python (no I/O). `plan` turns the viewer, their GitHub organizations and the App
installations visible to them into one `Discovered` record per organization of ours:

    personal-<slug(viewer login)>   kind personal,      the user is its owner
    <slug(org login)>               kind organization,  the user is an admin (foundry-domain §2.1)

Installation status (foundry-domain §7.2, proto `InstallationStatus`):
    personal account                      connected (an installation when there is one, else the
                                          user's OAuth token)
    GitHub org, App configured            connected when an installation of the App exists on it,
                                          else install_required (sign-in cannot install the App)
    GitHub org, no App configured         connected through the user's OAuth token (github-data
                                          syncs with `token_user` when there is no installation)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from services.organization.domain.names import slugify

AccountKind = Literal["user", "organization"]
Installation = Literal["connected", "install_required"]
Role = Literal["owner", "admin"]


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
class Discovered:
    """One organization of ours backed by a GitHub account, as this discovery sees it."""

    organization_id: str
    kind: AccountKind
    account: GithubAccount
    role: Role
    installation: Installation
    installation_id: int  # 0 = none (connected through the user's OAuth token, or install_required)

    @property
    def display_name(self) -> str:
        return self.account.name or self.account.login

    @property
    def primary_domain(self) -> str:
        """`personal` for personal organizations, else `<slug>.github` (foundry-domain §2.1)."""
        return "personal" if self.kind == "user" else f"{self.organization_id}.github"


def personal_id(login: str) -> str:
    """`personal-<slug(login)>`; raises ValueError for a login with no slug characters."""
    return f"personal-{_slug(login)}"


def organization_id(login: str) -> str:
    """`<slug(login)>`; raises ValueError for a login with no slug characters."""
    return _slug(login)


def _slug(login: str) -> str:
    slug = slugify(login)
    if not slug:
        raise ValueError(f"GitHub login {login!r} has no slug")
    return slug


def plan(
    viewer: GithubAccount,
    organizations: list[GithubAccount],
    installations: list[AppInstallation] | None,
) -> list[Discovered]:
    """The organizations the viewer is eligible for, personal first, then by GitHub login.

    `installations` is None when no GitHub App is configured (organizations are then connected
    through the user's OAuth token). Duplicate GitHub organizations are listed once.
    """
    by_account = {i.account_id: i.installation_id for i in installations or []}
    personal = Discovered(
        organization_id=personal_id(viewer.login),
        kind="user",
        account=viewer,
        role="owner",
        installation="connected",
        installation_id=by_account.get(viewer.account_id, 0),
    )
    found = [personal]
    seen = {viewer.account_id}
    for org in sorted(organizations, key=lambda o: o.login.lower()):
        if org.account_id in seen:
            continue
        seen.add(org.account_id)
        installation_id = by_account.get(org.account_id, 0)
        connected = installations is None or installation_id > 0
        found.append(
            Discovered(
                organization_id=organization_id(org.login),
                kind="organization",
                account=org,
                role="admin",
                installation="connected" if connected else "install_required",
                installation_id=installation_id,
            )
        )
    return found
