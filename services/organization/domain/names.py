"""Resource names and id rules of the organization service (plain functions, no I/O).

Organization ids are lowercase slugs: `[a-z0-9]` then up to 62 of `[a-z0-9-]`. A local organization's
default id is `local-<slug of its directory name>`; GitHub organizations use `<slug>` and personal
accounts `personal-<slug>`. Local users are `local-<slug of their login>`.
"""

from __future__ import annotations

import hashlib
import re

from services.organization.domain.errors import DOMAIN
from services.platform.errors import InvalidArgument

_ORG_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
_LOGIN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,38}$")
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_BRANCH_FORBIDDEN = re.compile(r"(\.\.|[\s~^:?*\[\\]|@\{|//)")


def slugify(text: str) -> str:
    """`My Repos_2` → `my-repos-2` (lowercase, runs of other characters become one `-`, max 50)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:50].strip("-")


def _bad(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", domain=DOMAIN, field_violations={field: message})


def check_organization_id(value: str, field: str = "organization_id") -> str:
    """Return `value` if it is a valid organization id; raises InvalidArgument otherwise."""
    if not _ORG_ID.match(value):
        raise _bad(field, "must be 1-63 of [a-z0-9-], starting with a letter or digit")
    return value


def check_login(value: str, field: str = "login") -> str:
    """A sign-in login: letters, digits and `-`, at most 39 characters."""
    if not _LOGIN.match(value):
        raise _bad(field, "must be 1-39 letters, digits or '-', not starting with '-'")
    return value


def organization_name(org_id: str) -> str:
    return f"organizations/{org_id}"


def parse_organization(name: str, field: str = "name") -> str:
    """`organizations/{id}` → id; raises InvalidArgument."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "organizations":
        raise _bad(field, "must be organizations/{organization}")
    return check_organization_id(parts[1], field)


def parse_child(name: str, collection: str, field: str = "name") -> tuple[str, str]:
    """`organizations/{org}/{collection}/{id}` → (org, id); raises InvalidArgument."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "organizations"
        or parts[2] != collection
        or not _SEGMENT.match(parts[3])
    ):
        raise _bad(field, f"must be organizations/{{organization}}/{collection}/{{id}}")
    return check_organization_id(parts[1], field), parts[3]


def parse_summary(name: str, field: str = "name") -> str:
    """`organizations/{org}/summary` → org id; raises InvalidArgument."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "organizations" or parts[2] != "summary":
        raise _bad(field, "must be organizations/{organization}/summary")
    return check_organization_id(parts[1], field)


def parse_user(name: str, field: str = "name") -> str:
    """`users/{id}` → id; raises InvalidArgument."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "users" or not _SEGMENT.match(parts[1]):
        raise _bad(field, "must be users/{user}")
    return parts[1]


def parse_app_snapshot(name: str, field: str = "name") -> str:
    """`users/{user}/appSnapshot` → user id, or `me` for the caller; raises InvalidArgument."""
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "users" or parts[2] != "appSnapshot" or not _SEGMENT.match(parts[1]):
        raise _bad(field, "must be users/{user}/appSnapshot (users/me/appSnapshot for the caller)")
    return parts[1]


def app_snapshot_name(user_id: str) -> str:
    return f"users/{user_id}/appSnapshot"


def parse_auth_session(name: str, field: str = "auth_session") -> tuple[str, str]:
    """`users/{user}/authSessions/{session}` → (user id, session id); raises InvalidArgument."""
    parts = name.split("/")
    if (
        len(parts) != 4
        or parts[0] != "users"
        or parts[2] != "authSessions"
        or not all(_SEGMENT.match(p) for p in (parts[1], parts[3]))
    ):
        raise _bad(field, "must be users/{user}/authSessions/{auth_session}")
    return parts[1], parts[3]


def check_branch(value: str, field: str = "branch") -> str:
    """A git branch name as `git check-ref-format --branch` would mostly accept it."""
    if (
        not value
        or len(value) > 250
        or value.startswith(("-", "/", "."))
        or value.endswith(("/", ".", ".lock"))
        or _BRANCH_FORBIDDEN.search(value)
    ):
        raise _bad(field, "is not a valid git branch name")
    return value


def summary_scope(org_id: str) -> str:
    """Watch scope of an organization's summary projection."""
    return f"org_summary:{org_id}"


def app_scope(user_id: str) -> str:
    """Watch scope of a user's app shell (all their auth sessions)."""
    return f"app:users/{user_id}"


def sync_status_name(org_id: str) -> str:
    return f"organizations/{org_id}/syncStatus"


def parse_pull_request(name: str, field: str = "name") -> tuple[str, str]:
    """`organizations/{org}/repositories/{repo}/pullRequests/{n}` → (org id, repository name)."""
    parts = name.split("/")
    if (
        len(parts) != 6
        or parts[0] != "organizations"
        or parts[2] != "repositories"
        or parts[4] != "pullRequests"
        or not _SEGMENT.match(parts[3])
        or not _SEGMENT.match(parts[5])
    ):
        raise _bad(
            field, "must be organizations/{organization}/repositories/{repository}/pullRequests/{number}"
        )
    return check_organization_id(parts[1], field), "/".join(parts[:4])


def virtual_task_id(repository: str, branch: str) -> str:
    """The id of the virtual task of a pull request's head branch: stable for (repository, branch), so
    a re-opened pull request gets the same task back."""
    return "pr-" + hashlib.sha1(f"{repository}\n{branch}".encode()).hexdigest()[:16]
