"""Repository, pull request and member rows: keyword-only functions taking an AsyncSession.

Re-exported by `queries`; callers hold the organization's status row lock (see `queries`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.github_data.domain.models import GithubMember, PullRequest, Repository
from services.github_data.store.tables import github_members, pull_requests, repositories

# -- repositories -----------------------------------------------------------------------------------


def _repository(row: Any) -> Repository:
    return Repository(
        organization=row.organization,
        repo_id=row.repo_id,
        full_name=row.full_name,
        clone_url=row.clone_url,
        default_branch=row.default_branch,
        html_url=row.html_url,
        private=row.private,
        description=row.description,
        sync_generation=row.sync_generation,
        provider_update_time=row.provider_update_time,
        version=row.version,
        create_time=row.create_time,
        update_time=row.update_time,
    )


async def get_repository(session: AsyncSession, *, org: str, repo_id: str) -> Repository | None:
    row = (
        await session.execute(
            select(repositories).where(repositories.c.organization == org, repositories.c.repo_id == repo_id)
        )
    ).first()
    return _repository(row) if row else None


async def list_repositories(
    session: AsyncSession,
    *,
    org: str,
    offset: int = 0,
    limit: int | None = None,
    generation: int | None = None,
) -> list[Repository]:
    """Repositories of `org` by full name (only those of `generation` when given)."""
    stmt = select(repositories).where(repositories.c.organization == org)
    if generation is not None:
        stmt = stmt.where(repositories.c.sync_generation == generation)
    stmt = stmt.order_by(repositories.c.full_name, repositories.c.repo_id).offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [_repository(r) for r in await session.execute(stmt)]


async def write_repository(session: AsyncSession, *, repo: Repository, now: datetime, exists: bool) -> None:
    values = {
        "full_name": repo.full_name,
        "clone_url": repo.clone_url,
        "html_url": repo.html_url,
        "private": repo.private,
        "default_branch": repo.default_branch,
        "description": repo.description,
        "sync_generation": repo.sync_generation,
        "provider_update_time": repo.provider_update_time,
        "version": repo.version,
        "update_time": now,
    }
    if exists:
        await session.execute(
            update(repositories)
            .where(repositories.c.organization == repo.organization, repositories.c.repo_id == repo.repo_id)
            .values(**values)
        )
    else:
        await session.execute(
            insert(repositories).values(
                organization=repo.organization, repo_id=repo.repo_id, create_time=now, **values
            )
        )


async def touch_repository(session: AsyncSession, *, org: str, repo_id: str, generation: int) -> None:
    """Mark an unchanged repository as seen by `generation`."""
    await session.execute(
        update(repositories)
        .where(repositories.c.organization == org, repositories.c.repo_id == repo_id)
        .values(sync_generation=generation)
    )


async def delete_repositories(
    session: AsyncSession, *, org: str, keep_generation: int | None
) -> list[Repository]:
    """Delete the repositories of `org` not seen by `keep_generation` (all when None); returns them."""
    cond = repositories.c.organization == org
    if keep_generation is not None:
        cond = and_(cond, repositories.c.sync_generation != keep_generation)
    gone = [_repository(r) for r in await session.execute(select(repositories).where(cond))]
    await session.execute(delete(repositories).where(cond))
    return gone


# -- pull requests ----------------------------------------------------------------------------------


def _pull_request(row: Any) -> PullRequest:
    return PullRequest(
        organization=row.organization,
        repo_id=row.repo_id,
        number=int(row.number),
        repository_full_name=row.repository_full_name,
        title=row.title,
        state=row.state,
        head_branch=row.head_branch,
        base_branch=row.base_branch,
        body=row.body,
        draft=row.draft,
        url=row.url,
        author_login=row.author_login,
        create_time=row.create_time,
        provider_update_time=row.provider_update_time,
        sync_generation=row.sync_generation,
        version=row.version,
    )


def _pr_key(org: str, repo_id: str, number: int) -> Any:
    return and_(
        pull_requests.c.organization == org,
        pull_requests.c.repo_id == repo_id,
        pull_requests.c.number == number,
    )


async def get_pull_request(
    session: AsyncSession, *, org: str, repo_id: str, number: int
) -> PullRequest | None:
    row = (await session.execute(select(pull_requests).where(_pr_key(org, repo_id, number)))).first()
    return _pull_request(row) if row else None


async def list_pull_requests(
    session: AsyncSession,
    *,
    org: str,
    repo_id: str | None = None,
    head_branch: str = "",
    offset: int = 0,
    limit: int | None = None,
) -> list[PullRequest]:
    """Stored (open/draft) pull requests, most recently updated first."""
    stmt = select(pull_requests).where(pull_requests.c.organization == org)
    if repo_id is not None:
        stmt = stmt.where(pull_requests.c.repo_id == repo_id)
    if head_branch:
        stmt = stmt.where(pull_requests.c.head_branch == head_branch)
    stmt = stmt.order_by(
        pull_requests.c.provider_update_time.desc(), pull_requests.c.repo_id, pull_requests.c.number
    ).offset(offset)
    if limit is not None:
        stmt = stmt.limit(limit)
    return [_pull_request(r) for r in await session.execute(stmt)]


async def write_pull_request(session: AsyncSession, *, pr: PullRequest, now: datetime, exists: bool) -> None:
    values = {
        "repository_full_name": pr.repository_full_name,
        "title": pr.title,
        "body": pr.body,
        "state": pr.state,
        "draft": pr.draft,
        "url": pr.url,
        "head_branch": pr.head_branch,
        "base_branch": pr.base_branch,
        "author_login": pr.author_login,
        "create_time": pr.create_time,
        "provider_update_time": pr.provider_update_time,
        "sync_generation": pr.sync_generation,
        "version": pr.version,
        "update_time": now,
    }
    if exists:
        await session.execute(
            update(pull_requests).where(_pr_key(pr.organization, pr.repo_id, pr.number)).values(**values)
        )
    else:
        await session.execute(
            insert(pull_requests).values(
                organization=pr.organization, repo_id=pr.repo_id, number=pr.number, **values
            )
        )


async def touch_pull_request(
    session: AsyncSession, *, org: str, repo_id: str, number: int, generation: int
) -> None:
    await session.execute(
        update(pull_requests).where(_pr_key(org, repo_id, number)).values(sync_generation=generation)
    )


async def delete_pull_request(session: AsyncSession, *, org: str, repo_id: str, number: int) -> None:
    await session.execute(delete(pull_requests).where(_pr_key(org, repo_id, number)))


async def delete_pull_requests(
    session: AsyncSession, *, org: str, keep_generation: int | None, repo_ids: Sequence[str] = ()
) -> list[PullRequest]:
    """Delete pull requests of `org` not seen by `keep_generation` (all when None), plus every one of
    `repo_ids`; returns them."""
    cond = pull_requests.c.organization == org
    if keep_generation is not None:
        stale = pull_requests.c.sync_generation != keep_generation
        cond = and_(cond, or_(stale, pull_requests.c.repo_id.in_(list(repo_ids))) if repo_ids else stale)
    gone = [_pull_request(r) for r in await session.execute(select(pull_requests).where(cond))]
    await session.execute(delete(pull_requests).where(cond))
    return gone


# -- members ----------------------------------------------------------------------------------------


def _member(row: Any) -> GithubMember:
    return GithubMember(
        organization=row.organization,
        member_id=row.member_id,
        login=row.login,
        display_name=row.display_name,
        email=row.email,
        avatar_url=row.avatar_url,
        role=row.role,
        state=row.state,
        sync_generation=row.sync_generation,
        update_time=row.update_time,
    )


async def save_member(session: AsyncSession, *, member: GithubMember, now: datetime) -> None:
    values = {
        "login": member.login,
        "display_name": member.display_name,
        "email": member.email,
        "avatar_url": member.avatar_url,
        "role": member.role,
        "state": member.state,
        "sync_generation": member.sync_generation,
        "update_time": now,
    }
    key = and_(
        github_members.c.organization == member.organization, github_members.c.member_id == member.member_id
    )
    result = await session.execute(update(github_members).where(key).values(**values))
    if not result.rowcount:  # type: ignore[attr-defined]
        await session.execute(
            insert(github_members).values(
                organization=member.organization, member_id=member.member_id, **values
            )
        )


async def get_member(session: AsyncSession, *, org: str, member_id: str) -> GithubMember | None:
    row = (
        await session.execute(
            select(github_members).where(
                github_members.c.organization == org, github_members.c.member_id == member_id
            )
        )
    ).first()
    return _member(row) if row else None


async def stale_members(session: AsyncSession, *, org: str, keep_generation: int) -> list[GithubMember]:
    """Members of `org` last seen by another sync generation than `keep_generation` (to sweep)."""
    stmt = select(github_members).where(
        github_members.c.organization == org, github_members.c.sync_generation != keep_generation
    )
    return [_member(r) for r in await session.execute(stmt.order_by(github_members.c.member_id))]


async def delete_member(session: AsyncSession, *, org: str, member_id: str) -> bool:
    result = await session.execute(
        delete(github_members).where(
            github_members.c.organization == org, github_members.c.member_id == member_id
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def delete_members(session: AsyncSession, *, org: str, keep_generation: int | None) -> int:
    cond = github_members.c.organization == org
    if keep_generation is not None:
        cond = and_(cond, github_members.c.sync_generation != keep_generation)
    result = await session.execute(delete(github_members).where(cond))
    return int(result.rowcount)  # type: ignore[attr-defined]


async def list_members(session: AsyncSession, *, org: str, offset: int, limit: int) -> list[GithubMember]:
    stmt = (
        select(github_members)
        .where(github_members.c.organization == org)
        .order_by(github_members.c.login)
        .offset(offset)
        .limit(limit)
    )
    return [_member(r) for r in await session.execute(stmt)]
