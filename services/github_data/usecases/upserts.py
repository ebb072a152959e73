"""Upserts and removals shared by the full sync and the webhook handlers.

Each writes the row and its event in the caller's transaction, and only announces real changes;
an unchanged row is just marked as seen by `generation`.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from services.github_data.domain.models import GithubMember, PullRequest, Repository
from services.github_data.domain.names import repository_id
from services.github_data.domain.ports import RemotePullRequest, RemoteRepository
from services.github_data.store import queries
from services.github_data.usecases.events import Events

_REPO_FIELDS = (
    "full_name",
    "clone_url",
    "html_url",
    "private",
    "default_branch",
    "description",
    "provider_update_time",
)


async def upsert_repository(
    session: AsyncSession,
    events: Events,
    *,
    org: str,
    remote: RemoteRepository,
    generation: int,
    now: datetime,
    fallback_branch: str = "main",
) -> Repository:
    """Store `remote` for `org`; keeps a known default branch when the provider reports none."""
    repo_id = repository_id(remote.clone_url)
    existing = await queries.get_repository(session, org=org, repo_id=repo_id)
    branch = (
        remote.default_branch or (existing.default_branch if existing else "") or fallback_branch or "main"
    )
    repo = Repository(
        organization=org,
        repo_id=repo_id,
        full_name=remote.full_name,
        clone_url=remote.clone_url,
        default_branch=branch,
        html_url=remote.html_url,
        private=remote.private,
        description=remote.description,
        sync_generation=generation,
        provider_update_time=remote.provider_update_time
        or (existing.provider_update_time if existing else None),
        create_time=existing.create_time if existing else now,
        update_time=now,
    )
    if existing is not None and all(getattr(repo, k) == getattr(existing, k) for k in _REPO_FIELDS):
        if existing.sync_generation != generation:
            await queries.touch_repository(session, org=org, repo_id=repo_id, generation=generation)
        return replace(existing, sync_generation=generation)
    repo = replace(repo, version=await queries.bump_seq(session, org=org))
    await queries.write_repository(session, repo=repo, now=now, exists=existing is not None)
    await events.repository_changed(session, repo)
    return repo


def pull_request_of(org: str, repo: Repository, remote: RemotePullRequest, generation: int) -> PullRequest:
    return PullRequest(
        organization=org,
        repo_id=repo.repo_id,
        number=remote.number,
        repository_full_name=repo.full_name,
        title=remote.title,
        state=remote.state,
        head_branch=remote.head_branch,
        base_branch=remote.base_branch,
        body=remote.body,
        draft=remote.draft,
        url=remote.url,
        author_login=remote.author_login,
        create_time=remote.create_time,
        provider_update_time=remote.update_time,
        merge_time=remote.merge_time,
        close_time=remote.close_time,
        sync_generation=generation,
    )


async def upsert_pull_request(
    session: AsyncSession,
    events: Events,
    *,
    org: str,
    repo: Repository,
    remote: RemotePullRequest,
    generation: int,
    now: datetime,
) -> PullRequest:
    """Store an open/draft pull request; publishes PullRequestChanged when it is new or changed."""
    pr = pull_request_of(org, repo, remote, generation)
    existing = await queries.get_pull_request(session, org=org, repo_id=repo.repo_id, number=remote.number)
    if existing is not None and not pr.differs_from(existing):
        if existing.sync_generation != generation:
            await queries.touch_pull_request(
                session, org=org, repo_id=repo.repo_id, number=remote.number, generation=generation
            )
        return replace(existing, sync_generation=generation)
    pr = replace(pr, version=await queries.bump_seq(session, org=org))
    await queries.write_pull_request(session, pr=pr, now=now, exists=existing is not None)
    await events.pull_request_changed(session, pr)
    return pr


async def announce_removed(
    session: AsyncSession, events: Events, *, org: str, prs: list[PullRequest], repos: list[Repository]
) -> None:
    """Publish PullRequestRemoved / RepositoryRemoved for rows already deleted."""
    for pr in prs:
        await events.pull_request_removed(session, pr, await queries.bump_seq(session, org=org))
    for repo in repos:
        await events.repository_removed(session, repo, await queries.bump_seq(session, org=org))


_MEMBER_FIELDS = ("login", "display_name", "email", "avatar_url", "role", "state")


async def upsert_member(
    session: AsyncSession, events: Events, *, member: GithubMember, now: datetime, keep_profile: bool = False
) -> None:
    """Store `member`; publishes GithubMemberChanged when it is new or its profile, role or state
    changed. `keep_profile`: fields the source left empty keep their stored values (webhooks)."""
    existing = await queries.get_member(session, org=member.organization, member_id=member.member_id)
    if existing is not None and keep_profile:
        member = replace(
            member,
            **{k: getattr(existing, k) for k in _MEMBER_FIELDS if not getattr(member, k)},
        )
    await queries.save_member(session, member=member, now=now)
    if existing is not None and all(getattr(member, k) == getattr(existing, k) for k in _MEMBER_FIELDS):
        return
    version = await queries.bump_seq(session, org=member.organization)
    await events.member_changed(session, replace(member, update_time=now), version)


async def remove_member(session: AsyncSession, events: Events, *, org: str, member_id: str) -> bool:
    """Delete a member and publish GithubMemberRemoved; False when it was not stored."""
    existing = await queries.get_member(session, org=org, member_id=member_id)
    if existing is None:
        return False
    await queries.delete_member(session, org=org, member_id=member_id)
    await events.member_removed(session, existing, await queries.bump_seq(session, org=org))
    return True
