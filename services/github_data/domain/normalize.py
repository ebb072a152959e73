"""Turning GitHub's JSON (REST answers and webhook payloads) into domain records.

Only the fields we keep are read; every other field GitHub sends is ignored, and optional ones may
be missing or null.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from services.github_data.domain.models import PullRequestState
from services.github_data.domain.ports import RemotePullRequest, RemoteRepository
from services.platform.clock import utc


def parse_time(value: Any) -> datetime | None:
    """GitHub's ISO-8601 (`2024-05-01T12:00:00Z`) or a unix timestamp → aware UTC datetime."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, tz=UTC)
    parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    return utc(parsed)


def pull_request_state(pr: dict[str, Any]) -> PullRequestState:
    """merged → MERGED, closed → CLOSED, draft → DRAFT, else OPEN."""
    if pr.get("merged") or pr.get("merged_at"):
        return "MERGED"
    if str(pr.get("state", "open")).lower() == "closed":
        return "CLOSED"
    if pr.get("draft"):
        return "DRAFT"
    return "OPEN"


def remote_repository(repo: dict[str, Any]) -> RemoteRepository:
    """A GitHub repository object (REST or webhook) → RemoteRepository."""
    full_name = str(repo.get("full_name") or "")
    return RemoteRepository(
        full_name=full_name,
        clone_url=str(repo.get("clone_url") or f"https://github.com/{full_name}.git"),
        default_branch=str(repo.get("default_branch") or ""),
        html_url=str(repo.get("html_url") or ""),
        private=bool(repo.get("private", False)),
        description=str(repo.get("description") or ""),
        provider_update_time=parse_time(repo.get("pushed_at") or repo.get("updated_at")),
    )


def remote_pull_request(pr: dict[str, Any]) -> RemotePullRequest:
    """A GitHub pull request object (REST list item or webhook `pull_request`) → RemotePullRequest."""
    head = pr.get("head") or {}
    base = pr.get("base") or {}
    user = pr.get("user") or {}
    return RemotePullRequest(
        number=int(pr["number"]),
        title=str(pr.get("title") or ""),
        state=pull_request_state(pr),
        head_branch=str(head.get("ref") or ""),
        base_branch=str(base.get("ref") or ""),
        body=str(pr.get("body") or ""),
        draft=bool(pr.get("draft", False)),
        url=str(pr.get("html_url") or ""),
        author_login=str(user.get("login") or ""),
        create_time=parse_time(pr.get("created_at")),
        update_time=parse_time(pr.get("updated_at")),
        merge_time=parse_time(pr.get("merged_at")),
        close_time=parse_time(pr.get("closed_at")),
    )


def webhook_account_login(payload: dict[str, Any]) -> str:
    """The account a delivery is about: installation.account → repository.owner → organization."""
    for path in (("installation", "account"), ("repository", "owner"), ("organization",)):
        node: Any = payload
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and node.get("login"):
            return str(node["login"])
    return ""
