"""Reads: stored rows only, each with the sync status it is as fresh as. Never waits for a sync."""

from __future__ import annotations

import base64
import binascii

from services.github_data.domain.models import GithubMember, PullRequest, Repository, SyncStatus
from services.github_data.domain.names import ALL_REPOSITORIES, DOMAIN
from services.github_data.store import queries
from services.github_data.usecases.deps import Deps
from services.platform.errors import InvalidArgument, NotFound

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def page_window(page_size: int, page_token: str) -> tuple[int, int]:
    """(offset, limit) of a page. Raises InvalidArgument for a negative size or a bad token."""
    if page_size < 0:
        raise InvalidArgument(
            "page_size: must not be negative",
            domain=DOMAIN,
            field_violations={"page_size": "must not be negative"},
        )
    limit = DEFAULT_PAGE if page_size == 0 else min(page_size, MAX_PAGE)
    if not page_token:
        return 0, limit
    try:
        text = base64.urlsafe_b64decode(page_token.encode()).decode()
        if not text.startswith("o:"):
            raise ValueError(text)
        return max(0, int(text[2:])), limit
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidArgument(
            "page_token: not a token from this list",
            reason="INVALID_PAGE_TOKEN",
            domain=DOMAIN,
            field_violations={"page_token": "not a token from this list"},
        ) from exc


def next_token(offset: int, limit: int, got: int) -> str:
    """The token of the page after (offset, limit) when this page was full, else ''."""
    return base64.urlsafe_b64encode(f"o:{offset + limit}".encode()).decode() if got > limit else ""


async def list_repositories(
    deps: Deps, org: str, page_size: int, page_token: str
) -> tuple[list[Repository], str, SyncStatus | None]:
    offset, limit = page_window(page_size, page_token)
    async with deps.db.snapshot() as session:
        rows = await queries.list_repositories(session, org=org, offset=offset, limit=limit + 1)
        status = await queries.get_status(session, org=org)
    return rows[:limit], next_token(offset, limit, len(rows)), status


async def get_repository(deps: Deps, org: str, repo_id: str) -> tuple[Repository, SyncStatus | None]:
    async with deps.db.snapshot() as session:
        repo = await queries.get_repository(session, org=org, repo_id=repo_id)
        status = await queries.get_status(session, org=org)
    if repo is None:
        raise NotFound(
            f"organizations/{org}/repositories/{repo_id} not found",
            reason="REPOSITORY_NOT_FOUND",
            domain=DOMAIN,
        )
    return repo, status


async def list_pull_requests(
    deps: Deps, org: str, repo_id: str, head_branch: str, page_size: int, page_token: str
) -> tuple[list[PullRequest], str, SyncStatus | None]:
    offset, limit = page_window(page_size, page_token)
    async with deps.db.snapshot() as session:
        rows = await queries.list_pull_requests(
            session,
            org=org,
            repo_id=None if repo_id == ALL_REPOSITORIES else repo_id,
            head_branch=head_branch,
            offset=offset,
            limit=limit + 1,
        )
        status = await queries.get_status(session, org=org)
    return rows[:limit], next_token(offset, limit, len(rows)), status


async def get_pull_request(
    deps: Deps, org: str, repo_id: str, number: int
) -> tuple[PullRequest, SyncStatus | None]:
    async with deps.db.snapshot() as session:
        pr = await queries.get_pull_request(session, org=org, repo_id=repo_id, number=number)
        status = await queries.get_status(session, org=org)
    if pr is None:
        raise NotFound(
            f"pull request {number} of organizations/{org}/repositories/{repo_id} is not open or unknown",
            reason="PULL_REQUEST_NOT_FOUND",
            domain=DOMAIN,
        )
    return pr, status


async def list_members(
    deps: Deps, org: str, page_size: int, page_token: str
) -> tuple[list[GithubMember], str, SyncStatus | None]:
    offset, limit = page_window(page_size, page_token)
    async with deps.db.snapshot() as session:
        rows = await queries.list_members(session, org=org, offset=offset, limit=limit + 1)
        status = await queries.get_status(session, org=org)
    return rows[:limit], next_token(offset, limit, len(rows)), status


async def get_sync_status(deps: Deps, org: str) -> SyncStatus:
    async with deps.db.snapshot() as session:
        status = await queries.get_status(session, org=org)
    if status is None:
        raise NotFound(f"organizations/{org} is not connected", reason="CONNECTION_NOT_FOUND", domain=DOMAIN)
    return status
