"""Resource names and id rules of the organization service (plain functions, no I/O).

Organization ids are lowercase slugs: `[a-z0-9]` then up to 62 of `[a-z0-9-]`. A local organization's
default id is `local-<slug of its directory name>`; GitHub organizations use `<slug>` and personal
accounts `personal-<slug>`. Local users are `local-<slug of their login>`.
"""

from __future__ import annotations

import hashlib
import re
from functools import cache

from services.organization.domain.errors import DOMAIN
from services.platform.errors import InvalidArgument
from services.platform.names import IdRule, ResourcePattern

ORGANIZATION_ID = IdRule(r"[a-z0-9][a-z0-9-]{0,62}", "1-63 of [a-z0-9-], starting with a letter or digit")
_LOGIN = IdRule(r"[A-Za-z0-9][A-Za-z0-9-]{0,38}", "1-39 letters, digits or '-', not starting with '-'")
_BRANCH_FORBIDDEN = re.compile(r"(\.\.|[\s~^:?*\[\\]|@\{|//)")


def _pattern(pattern: str) -> ResourcePattern:
    """Id segments are the platform's default id, but organizations have the organization-id rule."""
    return ResourcePattern(pattern, rules={"organization": ORGANIZATION_ID}, domain=DOMAIN)


def _users(pattern: str) -> ResourcePattern:
    return ResourcePattern(pattern, domain=DOMAIN)


ORGANIZATION = _pattern("organizations/{organization}")
SUMMARY = _pattern("organizations/{organization}/summary")
SYNC_STATUS = _pattern("organizations/{organization}/syncStatus")
PULL_REQUEST = _pattern("organizations/{organization}/repositories/{repository}/pullRequests/{number}")
USER = _users("users/{user}")
APP_SNAPSHOT = _users("users/{user}/appSnapshot")
AUTH_SESSION = _users("users/{user}/authSessions/{auth_session}")


@cache
def _child(collection: str) -> ResourcePattern:
    return _pattern(f"organizations/{{organization}}/{collection}/{{id}}")


def slugify(text: str) -> str:
    """`My Repos_2` → `my-repos-2` (lowercase, runs of other characters become one `-`, max 50)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:50].strip("-")


def _bad(field: str, message: str) -> InvalidArgument:
    return InvalidArgument(f"{field}: {message}", domain=DOMAIN, field_violations={field: message})


def check_organization_id(value: str, field: str = "organization_id") -> str:
    """Return `value` if it is a valid organization id; raises InvalidArgument otherwise."""
    if not ORGANIZATION_ID.matches(value):
        raise _bad(field, f"must be {ORGANIZATION_ID.description}")
    return value


def check_login(value: str, field: str = "login") -> str:
    """A sign-in login: letters, digits and `-`, at most 39 characters."""
    if not _LOGIN.matches(value):
        raise _bad(field, f"must be {_LOGIN.description}")
    return value


def organization_name(org_id: str) -> str:
    return ORGANIZATION.format(org_id)


def parse_organization(name: str, field: str = "name") -> str:
    """`organizations/{id}` → id; raises InvalidArgument."""
    return ORGANIZATION.parse(name, field)[0]


def parse_child(name: str, collection: str, field: str = "name") -> tuple[str, str]:
    """`organizations/{org}/{collection}/{id}` → (org, id); raises InvalidArgument."""
    org_id, child_id = _child(collection).parse(name, field)
    return org_id, child_id


def parse_summary(name: str, field: str = "name") -> str:
    """`organizations/{org}/summary` → org id; raises InvalidArgument."""
    return SUMMARY.parse(name, field)[0]


def parse_user(name: str, field: str = "name") -> str:
    """`users/{id}` → id; raises InvalidArgument."""
    return USER.parse(name, field)[0]


def parse_app_snapshot(name: str, field: str = "name") -> str:
    """`users/{user}/appSnapshot` → user id, or `me` for the caller (users/me/appSnapshot); raises
    InvalidArgument."""
    return APP_SNAPSHOT.parse(name, field)[0]


def app_snapshot_name(user_id: str) -> str:
    return APP_SNAPSHOT.format(user_id)


def parse_auth_session(name: str, field: str = "auth_session") -> tuple[str, str]:
    """`users/{user}/authSessions/{session}` → (user id, session id); raises InvalidArgument."""
    user_id, session_id = AUTH_SESSION.parse(name, field)
    return user_id, session_id


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
    return SYNC_STATUS.format(org_id)


def parse_pull_request(name: str, field: str = "name") -> tuple[str, str]:
    """`organizations/{org}/repositories/{repo}/pullRequests/{n}` → (org id, repository name)."""
    org_id, repository, _ = PULL_REQUEST.parse(name, field)
    return org_id, _child("repositories").format(org_id, repository)


def virtual_task_id(repository: str, branch: str) -> str:
    """The id of the virtual task of a pull request's head branch: stable for (repository, branch), so
    a re-opened pull request gets the same task back."""
    return "pr-" + hashlib.sha1(f"{repository}\n{branch}".encode()).hexdigest()[:16]
