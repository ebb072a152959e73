"""Reads a GitHub user's accounts with their OAuth token through githubkit (async REST).

    async with GithubAccounts(api_url=settings.github.api_url, token=token) as gh:
        viewer = await gh.viewer()                    # GET /user
        orgs = await gh.organizations()               # GET /user/orgs            (paged)
        installs = await gh.installations(app_id)     # GET /user/installations   (paged)

`api_url` is the REST base (`https://api.github.com`, or `https://host/api/v3` for GitHub Enterprise
Server). githubkit's own retries are off: failures become FoundryErrors at this one boundary and the
queue Worker decides about retries (with its backoff):

    rate limit (403/429 with rate-limit headers)     ResourceExhausted  GITHUB_RATE_LIMITED   retryable
    5xx, timeout, unreachable                        Unavailable        GITHUB_UNAVAILABLE    retryable
    401 (token revoked or expired)                   Unauthenticated    GITHUB_TOKEN_REJECTED
    other 4xx                                        FailedPrecondition GITHUB_REQUEST_FAILED
"""

from __future__ import annotations

import contextlib
import re
from typing import Any

from githubkit import GitHub, TokenAuthStrategy
from githubkit.exception import GitHubException, RateLimitExceeded, RequestError, RequestFailed

from services.organization.domain.errors import DOMAIN
from services.organization.domain.github_accounts import AppInstallation, GithubAccount
from services.platform.errors import (
    FailedPrecondition,
    FoundryError,
    ResourceExhausted,
    Unauthenticated,
    Unavailable,
)

PAGE_SIZE = 100
MAX_PAGES = 50  # 5,000 organizations or installations is far beyond any real account
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="next"')


def describe(exc: GitHubException, method: str, path: str) -> FoundryError:
    """The FoundryError (with a readable message) for a githubkit failure of `method path`."""
    if isinstance(exc, RateLimitExceeded):
        wait = int(exc.retry_after.total_seconds())
        return ResourceExhausted(
            f"GitHub rate limit exceeded for {method} {path} (retry in {wait}s)",
            reason="GITHUB_RATE_LIMITED",
            domain=DOMAIN,
        )
    if isinstance(exc, RequestFailed):
        status = exc.response.status_code
        try:
            detail = str(exc.response.json().get("message", ""))
        except Exception:  # a proxy's HTML error page
            detail = ""
        message = f"GitHub answered {status} {exc.response.reason_phrase} for {method} {path}"
        message += f": {detail}" if detail else ""
        if status >= 500:
            return Unavailable(message, reason="GITHUB_UNAVAILABLE", domain=DOMAIN)
        if status == 401:
            return Unauthenticated(message, reason="GITHUB_TOKEN_REJECTED", domain=DOMAIN)
        return FailedPrecondition(message, reason="GITHUB_REQUEST_FAILED", domain=DOMAIN)
    if isinstance(exc, RequestError):
        return Unavailable(
            f"GitHub is unreachable for {method} {path}: {exc.exc!r}",
            reason="GITHUB_UNAVAILABLE",
            domain=DOMAIN,
        )
    return FailedPrecondition(
        f"GitHub request {method} {path} failed: {exc!r}", reason="GITHUB_REQUEST_FAILED", domain=DOMAIN
    )


def _account(data: dict[str, Any]) -> GithubAccount:
    return GithubAccount(
        login=str(data["login"]),
        account_id=int(data["id"]),
        name=str(data.get("name") or ""),
        avatar_url=str(data.get("avatar_url") or ""),
    )


class GithubAccounts:
    """The accounts visible to one OAuth token. Use as `async with` (one HTTP client per discovery).

    Args:
        api_url: REST base URL.
        token: the user's OAuth access token.
        timeout_seconds: per request.
    """

    def __init__(self, *, api_url: str, token: str, timeout_seconds: float = 30.0) -> None:
        self._gh: GitHub[Any] = GitHub(
            TokenAuthStrategy(token),
            base_url=api_url,
            http_cache=False,
            auto_retry=False,
            timeout=timeout_seconds,
            user_agent="foundry-mesh-organization",
        )
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> GithubAccounts:
        await self._stack.enter_async_context(self._gh)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> tuple[Any, str | None]:
        try:
            response = await self._gh.arequest("GET", path, params=params)
        except GitHubException as exc:
            raise describe(exc, "GET", path.split("?", 1)[0]) from exc
        match = _NEXT.search(response.headers.get("link") or "")
        return response.json(), match.group(1) if match else None

    async def _paged(self, path: str, key: str | None = None) -> list[dict[str, Any]]:
        """Every item of a list endpoint, following `Link: rel="next"`; `key` names the list in an
        object answer."""
        items: list[dict[str, Any]] = []
        url: str | None = path
        params: dict[str, Any] | None = {"per_page": PAGE_SIZE}
        for _ in range(MAX_PAGES):
            if url is None:
                break
            data, url = await self._get(url, params)
            params = None  # the next link carries the query
            items.extend(data.get(key, []) if key else data)
        return items

    async def viewer(self) -> GithubAccount:
        """The token's user (GET /user). Raises FoundryError (see the module table)."""
        data, _ = await self._get("/user")
        return _account(data)

    async def organizations(self) -> list[GithubAccount]:
        """The user's GitHub organizations (GET /user/orgs; needs the `read:org` scope)."""
        return [_account(o) for o in await self._paged("/user/orgs")]

    async def installations(self, app_id: str) -> list[AppInstallation]:
        """Installations of App `app_id` that the user can access (GET /user/installations).

        Installations of other Apps are left out; an installation without an `app_id` is kept.
        """
        raw = await self._paged("/user/installations", key="installations")
        return [
            AppInstallation(
                installation_id=int(i["id"]),
                account_login=str(i["account"]["login"]),
                account_id=int(i["account"]["id"]),
            )
            for i in raw
            if i.get("account") and str(i.get("app_id", app_id)) == str(app_id)
        ]
