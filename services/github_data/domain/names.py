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
from functools import cache

from services.platform.names import IdRule, ResourcePattern, id_rule

DOMAIN = "foundry.github_data"
ALL_REPOSITORIES = "-"
_ID = id_rule(100)
_REPO_ID = IdRule(r"[0-9a-f]{16}", "16 lowercase hex digits (repository_id of the clone URL)")
_REPO_ID_OR_ALL = IdRule(r"[0-9a-f]{16}|-", "16 lowercase hex digits, or '-' for all repositories")
_NUMBER = IdRule(r"[0-9]+", "a pull request number")


def _pattern(pattern: str, **rules: IdRule) -> ResourcePattern:
    return ResourcePattern(pattern, rules=rules, default=_ID, domain=DOMAIN, reason="INVALID_NAME")


ORGANIZATION = _pattern("organizations/{organization}")
CONNECTION = _pattern("organizations/{organization}/connection")
SYNC_STATUS = _pattern("organizations/{organization}/syncStatus")
REPOSITORY = _pattern("organizations/{organization}/repositories/{repository}", repository=_REPO_ID)
_REPOSITORY_OR_ALL = _pattern(
    "organizations/{organization}/repositories/{repository}", repository=_REPO_ID_OR_ALL
)
PULL_REQUEST = _pattern(
    "organizations/{organization}/repositories/{repository}/pullRequests/{number}",
    repository=_REPO_ID,
    number=_NUMBER,
)
MEMBER = _pattern("organizations/{organization}/githubMembers/{member}")
DELIVERY = _pattern("webhookDeliveries/{delivery}")
USER = _pattern("users/{user}")


@cache
def _suffixed(suffix: str) -> ResourcePattern:
    return _pattern(f"organizations/{{organization}}/{suffix}")


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
    return ORGANIZATION.format(org)


def connection_name(org: str) -> str:
    return CONNECTION.format(org)


def sync_status_name(org: str) -> str:
    return SYNC_STATUS.format(org)


def repository_name(org: str, repo_id: str) -> str:
    return REPOSITORY.format(org, repo_id)


def pull_request_name(org: str, repo_id: str, number: int) -> str:
    return PULL_REQUEST.format(org, repo_id, number)


def member_name(org: str, member_id: str) -> str:
    return MEMBER.format(org, member_id)


def delivery_name(delivery_id: str) -> str:
    return DELIVERY.format(delivery_id)


def parse_organization(name: str, field: str = "parent") -> str:
    """`organizations/{org}` → org."""
    return ORGANIZATION.parse(name, field)[0]


def parse_suffixed(name: str, suffix: str, field: str = "name") -> str:
    """`organizations/{org}/<suffix>` (connection, syncStatus) → org."""
    return _suffixed(suffix).parse(name, field)[0]


def parse_repository(name: str, field: str = "name", *, allow_all: bool = False) -> tuple[str, str]:
    """`organizations/{org}/repositories/{repo}` → (org, repo_id); repo may be `-` when `allow_all`."""
    org, repo = (_REPOSITORY_OR_ALL if allow_all else REPOSITORY).parse(name, field)
    return org, repo


def parse_pull_request(name: str, field: str = "name") -> tuple[str, str, int]:
    """`organizations/{org}/repositories/{repo}/pullRequests/{number}` → (org, repo_id, number)."""
    org, repo, number = PULL_REQUEST.parse(name, field)
    return org, repo, int(number)


def user_name(user_id: str) -> str:
    return f"users/{user_id}"


def parse_user(name: str, field: str) -> str:
    """`users/{user}` → the same name, validated."""
    USER.parse(name, field)
    return name
