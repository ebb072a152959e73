"""Provider implementations and the factory that picks one for a connection.

async with open_provider(connection, settings, tokens) as provider:
    repos = await provider.list_repositories()
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Protocol

from services.github_data.domain.models import Connection
from services.github_data.domain.ports import Provider, ProviderError
from services.github_data.providers.github import (
    GithubProvider,
    GithubUserAccounts,
    RetryPolicy,
    installation_auth,
    token_auth,
)
from services.github_data.providers.local import LocalProvider
from services.platform.settings import GithubSettings

__all__ = [
    "GithubProvider",
    "GithubUserAccounts",
    "LocalProvider",
    "RetryPolicy",
    "TokenSource",
    "open_provider",
]


class TokenSource(Protocol):
    """Finds a user's OAuth token for an organization (this service stores them; see
    `usecases.user_accounts.StoredTokens`)."""

    async def token_for(self, organization: str, user: str) -> str:
        """The access token; raises ProviderError when there is none."""
        ...


@contextlib.asynccontextmanager
async def open_provider(
    connection: Connection,
    github: GithubSettings,
    tokens: TokenSource,
    *,
    retry: RetryPolicy | None = None,
) -> AsyncIterator[Provider]:
    """The provider of `connection`, open for the duration of the block.

    GitHub credentials: the App installation when the connection has an installation id and the
    App is configured (`FOUNDRY_GITHUB__APP_ID`/`APP_PRIVATE_KEY`), else the OAuth token of the
    connection's `token_user` (or of a user whose token sees the account). Raises ProviderError when
    neither is available.
    """
    if connection.provider == "local":
        yield LocalProvider(connection.root_path)
        return
    key = github.app_private_key.get_secret_value() if github.app_private_key else ""
    if connection.installation_id and github.app_id and key:
        auth = installation_auth(github.app_id, key, connection.installation_id)
    else:
        token = await tokens.token_for(connection.organization, connection.token_user)
        if not token:
            raise ProviderError(
                "no GitHub credentials: the App is not installed and no OAuth token is available"
            )
        auth = token_auth(token)
    provider = GithubProvider(
        api_url=connection.api_url or github.api_url,
        account_login=connection.account_login,
        account_type=connection.account_type or "organization",
        auth=auth,
        retry=retry,
    )
    async with provider:
        yield provider
