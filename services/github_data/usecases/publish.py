"""PublishPullRequest: open a pull request on GitHub from a pushed branch and store it.

This is the one call that talks to GitHub on the request path (the contract asks for the created
pull request in the answer); it is bounded by the provider's timeout and retry policy.
"""

from __future__ import annotations

from dataclasses import replace

from services.github_data.domain.models import PullRequest
from services.github_data.domain.names import DOMAIN
from services.github_data.domain.ports import ProviderError
from services.github_data.providers import GithubProvider, open_provider
from services.github_data.store import queries
from services.github_data.usecases.deps import Deps
from services.github_data.usecases.upserts import upsert_pull_request
from services.platform.errors import AlreadyExists, FailedPrecondition, NotFound, Unavailable


async def publish_pull_request(
    deps: Deps, *, org: str, repo_id: str, head: str, base: str, title: str, body: str, draft: bool, user: str
) -> PullRequest:
    """Raises NotFound (unknown repository), FailedPrecondition (PROVIDER_HAS_NO_PULL_REQUESTS for
    local organizations), AlreadyExists (an open pull request has that head branch), Unavailable."""
    async with deps.db.snapshot() as session:
        conn = await queries.get_connection(session, org=org)
        repo = await queries.get_repository(session, org=org, repo_id=repo_id)
        open_prs = await queries.list_pull_requests(session, org=org, repo_id=repo_id, head_branch=head)
    if conn is None or repo is None:
        raise NotFound(
            f"organizations/{org}/repositories/{repo_id} not found",
            reason="REPOSITORY_NOT_FOUND",
            domain=DOMAIN,
        )
    if conn.provider != "github":
        raise FailedPrecondition(
            "local organizations have no pull requests", reason="PROVIDER_HAS_NO_PULL_REQUESTS", domain=DOMAIN
        )
    if open_prs:
        raise AlreadyExists(
            f"pull request #{open_prs[0].number} is open for {head}",
            reason="PULL_REQUEST_ALREADY_EXISTS",
            domain=DOMAIN,
        )
    if user:
        conn = replace(conn, installation_id=0, token_user=user)
    try:
        async with open_provider(conn, deps.github, deps.tokens, retry=deps.retry) as provider:
            assert isinstance(provider, GithubProvider)
            remote = await provider.create_pull_request(
                full_name=repo.full_name,
                head=head,
                base=base or repo.default_branch,
                title=title,
                body=body,
                draft=draft,
            )
    except ProviderError as exc:
        if exc.status == 422:
            raise AlreadyExists(exc.message, reason="PULL_REQUEST_ALREADY_EXISTS", domain=DOMAIN) from exc
        raise Unavailable(exc.message, reason="GITHUB_UNAVAILABLE", domain=DOMAIN) from exc
    async with deps.db.transaction() as session:
        status = await queries.get_status(session, org=org, with_counts=False)
        generation = status.generation if status else 0
        return await upsert_pull_request(
            session, deps.events, org=org, repo=repo, remote=remote, generation=generation, now=deps.now()
        )
