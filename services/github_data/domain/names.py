"""Resource names and ids of the github_data service.

    organizations/{organization}
    organizations/{organization}/connection
    organizations/{organization}/syncStatus
    organizations/{organization}/repositories/{repository}          repository = repository_id(clone_url)
    organizations/{organization}/repositories/{repository}/pullRequests/{number}
    organizations/{organization}/githubMembers/{github user id}
    webhookDeliveries/{X-GitHub-Delivery}

Parsers raise `InvalidArgument` (reason `INVALID_NAME`) naming the request field.
"""

from __future__ import annotations

import hashlib
import re

from services.platform.errors import InvalidArgument

DOMAIN = "foundry.github_data"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_REPO_ID = re.compile(r"^[0-9a-f]{16}$")
ALL_REPOSITORIES = "-"


def _bad(field: str, value: str, shape: str) -> InvalidArgument:
    return InvalidArgument(
        f"{field}: {value!r} is not {shape}",
        reason="INVALID_NAME",
        domain=DOMAIN,
        field_violations={field: f"expected {shape}"},
    )


def normalize_clone_url(clone_url: str) -> str:
    """The clone URL with surrounding space, trailing slashes and `.git` removed; lower-cased for URLs
    (hosts and GitHub paths are case-insensitive), kept as is for filesystem paths."""
    url = clone_url.strip().rstrip("/")
    url = url.removesuffix(".git")
    if "://" in url or url.startswith("git@"):
        url = url.lower()
    return url


def repository_id(clone_url: str) -> str:
    """First 16 hex characters of the SHA-1 of the normalized clone URL (stable across syncs)."""
    return hashlib.sha1(normalize_clone_url(clone_url).encode()).hexdigest()[:16]


def organization_name(org: str) -> str:
    return f"organizations/{org}"


def connection_name(org: str) -> str:
    return f"organizations/{org}/connection"


def sync_status_name(org: str) -> str:
    return f"organizations/{org}/syncStatus"


def repository_name(org: str, repo_id: str) -> str:
    return f"organizations/{org}/repositories/{repo_id}"


def pull_request_name(org: str, repo_id: str, number: int) -> str:
    return f"organizations/{org}/repositories/{repo_id}/pullRequests/{number}"


def member_name(org: str, member_id: str) -> str:
    return f"organizations/{org}/githubMembers/{member_id}"


def delivery_name(delivery_id: str) -> str:
    return f"webhookDeliveries/{delivery_id}"


def _org(value: str, field: str, shape: str) -> str:
    if not _ID.match(value):
        raise _bad(field, value, shape)
    return value


def parse_organization(name: str, field: str = "parent") -> str:
    """`organizations/{org}` → org."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "organizations":
        raise _bad(field, name, "organizations/{organization}")
    return _org(parts[1], field, "organizations/{organization}")


def parse_suffixed(name: str, suffix: str, field: str = "name") -> str:
    """`organizations/{org}/<suffix>` (connection, syncStatus) → org."""
    shape = f"organizations/{{organization}}/{suffix}"
    parts = name.split("/")
    if len(parts) != 3 or parts[0] != "organizations" or parts[2] != suffix:
        raise _bad(field, name, shape)
    return _org(parts[1], field, shape)


def parse_repository(name: str, field: str = "name", *, allow_all: bool = False) -> tuple[str, str]:
    """`organizations/{org}/repositories/{repo}` → (org, repo_id); repo may be `-` when `allow_all`."""
    shape = "organizations/{organization}/repositories/{repository}"
    parts = name.split("/")
    if len(parts) != 4 or parts[0] != "organizations" or parts[2] != "repositories":
        raise _bad(field, name, shape)
    org = _org(parts[1], field, shape)
    if not (_REPO_ID.match(parts[3]) or (allow_all and parts[3] == ALL_REPOSITORIES)):
        raise _bad(field, name, shape)
    return org, parts[3]


def parse_pull_request(name: str, field: str = "name") -> tuple[str, str, int]:
    """`organizations/{org}/repositories/{repo}/pullRequests/{number}` → (org, repo_id, number)."""
    shape = "organizations/{organization}/repositories/{repository}/pullRequests/{number}"
    parts = name.split("/")
    if len(parts) != 6 or parts[4] != "pullRequests" or not parts[5].isdigit():
        raise _bad(field, name, shape)
    org, repo = parse_repository("/".join(parts[:4]), field)
    return org, repo, int(parts[5])


def parse_user(name: str, field: str) -> str:
    """`users/{user}` → the same name, validated."""
    parts = name.split("/")
    if len(parts) != 2 or parts[0] != "users" or not _ID.match(parts[1]):
        raise _bad(field, name, "users/{user}")
    return name
