"""GenerateRepositoryAccessToken: a short-lived git token for one repository (service callers only).

The task service asks for one right before the sandbox clones or pushes over HTTPS. Tokens are
handed out, never stored or logged here.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

from services.github_data.domain.names import DOMAIN
from services.github_data.domain.ports import ProviderError
from services.github_data.providers import GithubProvider, open_provider
from services.github_data.store import queries
from services.github_data.usecases.deps import Deps
from services.platform.errors import FailedPrecondition, NotFound, Unavailable


async def repository_access_token(
    deps: Deps, *, org: str, repo_id: str, user: str = ""
) -> tuple[str, datetime | None]:
    """(token, expiry or None) for git over HTTPS on the repository; ("", None) for `local`
    organizations. Raises NotFound (unknown repository), FailedPrecondition
    (`NO_GITHUB_CREDENTIALS`: neither the App nor an OAuth token is usable) and Unavailable
    (GitHub refused or cannot be reached)."""
    async with deps.db.snapshot() as session:
        conn = await queries.get_connection(session, org=org)
        repo = await queries.get_repository(session, org=org, repo_id=repo_id)
    if conn is None or repo is None:
        raise NotFound(
            f"organizations/{org}/repositories/{repo_id} not found",
            reason="REPOSITORY_NOT_FOUND",
            domain=DOMAIN,
        )
    if conn.provider != "github":
        return "", None
    if user:
        conn = replace(conn, installation_id=0, token_user=user)
    try:  # a ProviderError from opening the provider means the credentials are not usable
        async with open_provider(conn, deps.github, deps.tokens, retry=deps.retry) as provider:
            assert isinstance(provider, GithubProvider)
            try:
                return await provider.repository_access_token(repo.full_name)
            except ProviderError as exc:
                raise Unavailable(exc.message, reason="GITHUB_UNAVAILABLE", domain=DOMAIN) from exc
    except ProviderError as exc:
        raise FailedPrecondition(exc.message, reason="NO_GITHUB_CREDENTIALS", domain=DOMAIN) from exc
