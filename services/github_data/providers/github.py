"""The `github` provider: GitHub's REST API (github.com or Enterprise Server) through githubkit.

Credentials: a GitHub App installation (app id + private key → RS256 JWT → installation token,
minted and cached by githubkit per provider instance) or a user's OAuth token.

Endpoints (all paged by following the `Link: <…>; rel="next"` header, 100 items per page):

    installation  GET /installation/repositories                  repositories of the installation
    OAuth token   GET /user/repos                                 filtered to `<login>/…`
    organization  GET /orgs/{org}/members (+ ?role=admin)         members, admins marked `admin`
    both          GET /repos/{owner}/{repo}/pulls?state=open&sort=updated&direction=desc

`GithubUserAccounts` reads what one user's OAuth token sees (account discovery, same client):

    GET /user                  the token's own account
    GET /user/orgs             its organizations (needs `read:org`)
    GET /user/installations    installations of the configured App it can access

Retries (githubkit's `auto_retry` hook): rate limits (403/429 with `x-ratelimit-remaining: 0` or
`retry-after`) wait what GitHub asks, when that is at most `max_wait_seconds`; a request still
rate-limited after that waits at least `backoff_seconds`, doubling per further retry (GitHub's advice
for a limit that persists). 5xx answers wait their `Retry-After` when given, else back off
exponentially from `backoff_seconds`, as transport errors do. After `max_retries` retries the failure
becomes a `ProviderError`, which the sync records as its error.
"""

from __future__ import annotations

import contextlib
import re
from datetime import datetime, timedelta
from typing import Any, Self

from githubkit import AppInstallationAuthStrategy, BaseAuthStrategy, GitHub, TokenAuthStrategy
from githubkit.cache import MemCacheStrategy
from githubkit.exception import (
    AuthCredentialError,
    GitHubException,
    RateLimitExceeded,
    RequestError,
    RequestFailed,
)
from githubkit.typing import RetryOption

from services.github_data.domain.accounts import AppInstallation, GithubAccount, UserAccounts
from services.github_data.domain.normalize import remote_pull_request, remote_repository
from services.github_data.domain.ports import ProviderError, RemoteMember, RemotePullRequest, RemoteRepository

PAGE_SIZE = 100
_MIN_WAIT = timedelta(milliseconds=10)
_NEXT = re.compile(r'<([^>]+)>\s*;\s*rel="next"')


def next_link(link_header: str | None) -> str | None:
    """The `rel="next"` URL of a `Link` header, or None on the last page."""
    if not link_header:
        return None
    match = _NEXT.search(link_header)
    return match.group(1) if match else None


class RetryPolicy:
    """githubkit `auto_retry` decision: which failures to retry and how long to wait.

    Args:
        max_retries: retries per request (so at most max_retries + 1 attempts).
        backoff_seconds: first wait after a 5xx or transport error, or after a rate limit that
            persisted past GitHub's own wait; doubles per retry.
        max_wait_seconds: a rate-limit wait longer than this is not waited for (fails now).
    """

    def __init__(self, *, max_retries: int = 3, backoff_seconds: float = 1.0, max_wait_seconds: float = 60.0):
        self.max_retries = max_retries
        self.backoff_seconds = backoff_seconds
        self.max_wait_seconds = max_wait_seconds

    def __call__(self, exc: GitHubException, retry_count: int) -> RetryOption:
        option = self._decide(exc, retry_count)
        if option.do_retry and option.retry_after is not None:
            # githubkit sleeps 60 s for a falsy wait, and timedelta(0) is falsy: wait at least 10 ms
            return RetryOption(True, max(option.retry_after, _MIN_WAIT))
        return option

    def _decide(self, exc: GitHubException, retry_count: int) -> RetryOption:
        if (
            isinstance(exc, RequestError)
            and not isinstance(exc, RequestFailed)
            and isinstance(exc.exc, GitHubException)
        ):
            exc = exc.exc  # the installation-token request failed inside the auth flow: judge that answer
        if retry_count >= self.max_retries:
            return RetryOption(False)
        if isinstance(exc, RateLimitExceeded):
            wait = exc.retry_after.total_seconds()
            if wait > self.max_wait_seconds:
                return RetryOption(False)
            if retry_count:  # still limited after waiting what GitHub asked: back off as well
                persisted = self.backoff_seconds * 2 ** (retry_count - 1)
                wait = max(wait, min(persisted, self.max_wait_seconds))
            return RetryOption(True, timedelta(seconds=max(wait, 0.0)))
        backoff = timedelta(seconds=self.backoff_seconds * (2**retry_count))
        if isinstance(exc, RequestFailed):
            asked = exc.response.headers.get("retry-after", "")  # 503s may say when to come back
            if asked.isdigit():
                backoff = timedelta(seconds=min(int(asked), self.max_wait_seconds))
            return RetryOption(exc.response.status_code >= 500, backoff)
        if isinstance(exc, RequestError):  # timeouts, refused connections, failed token mint
            return RetryOption(True, backoff)
        return RetryOption(False)


def _describe(exc: BaseException, method: str, path: str) -> ProviderError:
    """A readable ProviderError for a githubkit failure (unwrapping failures of the auth flow)."""
    if (
        isinstance(exc, RequestError)
        and not isinstance(exc, RequestFailed)
        and isinstance(exc.exc, GitHubException)
    ):
        exc = exc.exc  # the installation-token request failed inside the auth flow
    if isinstance(exc, RateLimitExceeded):
        wait = int(exc.retry_after.total_seconds())
        return ProviderError(
            f"GitHub rate limit exceeded for {method} {path} (retry in {wait}s)",
            status=exc.response.status_code,
            retryable=True,
        )
    if isinstance(exc, RequestFailed):
        status = exc.response.status_code
        try:
            detail = str(exc.response.json().get("message", ""))
        except Exception:
            detail = ""
        phrase = exc.response.reason_phrase
        suffix = f": {detail}" if detail else ""
        url_path = exc.request.url.path
        return ProviderError(
            f"GitHub answered {status} {phrase} for {method} {url_path}{suffix}",
            status=status,
            retryable=status >= 500,
        )
    if isinstance(exc, AuthCredentialError):
        return ProviderError(f"GitHub credentials are not usable: {exc}")
    if isinstance(exc, RequestError):
        return ProviderError(f"GitHub is unreachable for {method} {path}: {exc.exc!r}", retryable=True)
    return ProviderError(f"GitHub request {method} {path} failed: {exc!r}")


class _GithubClient:
    """The service's one GitHub REST client: githubkit with the retry policy, paged GETs and readable
    ProviderErrors. Use as `async with` (one HTTP client per sync or discovery)."""

    def __init__(
        self,
        *,
        api_url: str,
        auth: BaseAuthStrategy,
        retry: RetryPolicy | None = None,
        timeout_seconds: float = 30.0,
    ) -> None:
        self._auth = auth
        self._gh: GitHub[Any] = GitHub(
            auth,
            base_url=api_url,
            http_cache=False,
            cache_strategy=MemCacheStrategy(),  # tokens cached per provider, never shared across accounts
            auto_retry=retry or RetryPolicy(),
            timeout=timeout_seconds,
            user_agent="foundry-mesh-github-data",
        )
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Self:
        await self._stack.enter_async_context(self._gh)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def _get(self, path: str, params: dict[str, Any] | None = None) -> tuple[Any, str | None]:
        try:
            response = await self._gh.arequest("GET", path, params=params)
        except GitHubException as exc:
            raise _describe(exc, "GET", path) from exc
        return response.json(), next_link(response.headers.get("link"))

    async def _paged(self, path: str, params: dict[str, Any], key: str | None = None) -> list[dict[str, Any]]:
        """Every item of a paged list endpoint; `key` names the list inside an object answer."""
        items: list[dict[str, Any]] = []
        url: str | None = path
        query: dict[str, Any] | None = {**params, "per_page": PAGE_SIZE}
        while url:
            data, url = await self._get(url, query)
            query = None  # the next link carries the query
            page = data.get(key, []) if key else data
            items.extend(page)
        return items


class GithubProvider(_GithubClient):
    """Reads one GitHub account. Use as `async with provider:` (one HTTP client for the whole sync).

    Args:
        api_url: REST base URL (`https://api.github.com`, or `https://host/api/v3`).
        account_login: the organization or user login.
        account_type: `organization` or `user`.
        auth: githubkit auth strategy (installation or OAuth token); see `installation_auth`/`token_auth`.
        retry: the retry policy.
    """

    def __init__(
        self,
        *,
        api_url: str,
        account_login: str,
        account_type: str,
        auth: BaseAuthStrategy,
        retry: RetryPolicy | None = None,
        timeout_seconds: float = 30.0,
    ) -> None:
        super().__init__(api_url=api_url, auth=auth, retry=retry, timeout_seconds=timeout_seconds)
        self.account_login = account_login
        self.account_type = account_type
        self._installation = isinstance(auth, AppInstallationAuthStrategy)

    async def list_repositories(self) -> list[RemoteRepository]:
        if self._installation:
            raw = await self._paged("/installation/repositories", {}, key="repositories")
        else:
            raw = await self._paged("/user/repos", {"sort": "full_name"})
            prefix = f"{self.account_login.lower()}/"
            raw = [r for r in raw if str(r.get("full_name", "")).lower().startswith(prefix)]
        return [remote_repository(r) for r in raw]

    async def list_members(self) -> list[RemoteMember]:
        if self.account_type != "organization":
            return []
        path = f"/orgs/{self.account_login}/members"
        admins = {int(u["id"]) for u in await self._paged(path, {"role": "admin"})}
        return [
            RemoteMember(
                member_id=str(u["id"]),
                login=str(u.get("login") or ""),
                avatar_url=str(u.get("avatar_url") or ""),
                role="admin" if int(u["id"]) in admins else "member",
                state="active",
            )
            for u in await self._paged(path, {})
        ]

    async def list_open_pull_requests(self, repository: RemoteRepository) -> list[RemotePullRequest]:
        params = {"state": "open", "sort": "updated", "direction": "desc"}
        raw = await self._paged(f"/repos/{repository.full_name}/pulls", params)
        return [remote_pull_request(p) for p in raw]

    async def create_pull_request(
        self, *, full_name: str, head: str, base: str, title: str, body: str, draft: bool
    ) -> RemotePullRequest:
        """POST /repos/{full_name}/pulls. Raises ProviderError (status 422 when one already exists)."""
        path = f"/repos/{full_name}/pulls"
        payload = {"head": head, "base": base, "title": title, "body": body, "draft": draft}
        try:
            response = await self._gh.arequest("POST", path, json=payload)
        except GitHubException as exc:
            raise _describe(exc, "POST", path) from exc
        return remote_pull_request(response.json())

    async def repository_access_token(self, full_name: str) -> tuple[str, datetime | None]:
        """A token for git over HTTPS on `full_name` and when it expires (None: unknown).

        Installation credentials: `POST /app/installations/{id}/access_tokens` (as the App, RS256
        JWT) scoped to this one repository with `contents: write`, about one hour long. OAuth
        credentials: the user's token itself. Raises ProviderError."""
        auth = self._auth
        if isinstance(auth, TokenAuthStrategy):
            return auth.token, None
        if not isinstance(auth, AppInstallationAuthStrategy):
            raise ProviderError("these GitHub credentials cannot mint repository tokens")
        path = f"/app/installations/{auth.installation_id}/access_tokens"
        payload = {"repositories": [full_name.split("/", 1)[-1]], "permissions": {"contents": "write"}}
        try:
            response = await self._gh.with_auth(auth.as_app()).arequest("POST", path, json=payload)
        except GitHubException as exc:
            raise _describe(exc, "POST", path) from exc
        data = response.json()
        expires = str(data.get("expires_at") or "")
        return str(data["token"]), datetime.fromisoformat(expires) if expires else None


def _account(data: dict[str, Any]) -> GithubAccount:
    return GithubAccount(
        login=str(data["login"]),
        account_id=int(data["id"]),
        name=str(data.get("name") or ""),
        avatar_url=str(data.get("avatar_url") or ""),
    )


class GithubUserAccounts(_GithubClient):
    """The accounts visible to one user's OAuth token (account discovery). Use as `async with`.

    Args:
        api_url: REST base URL.
        token: the user's OAuth access token.
        retry: the retry policy (a failure left after it is a ProviderError; see `retryable`).
    """

    def __init__(self, *, api_url: str, token: str, retry: RetryPolicy | None = None) -> None:
        super().__init__(api_url=api_url, auth=TokenAuthStrategy(token), retry=retry)

    async def viewer(self) -> GithubAccount:
        """The token's own account (GET /user)."""
        data, _ = await self._get("/user")
        return _account(data)

    async def organizations(self) -> list[GithubAccount]:
        """The user's GitHub organizations (GET /user/orgs; needs the `read:org` scope)."""
        return [_account(o) for o in await self._paged("/user/orgs", {})]

    async def installations(self, app_id: str) -> list[AppInstallation]:
        """Installations of App `app_id` the user can access (GET /user/installations); other Apps'
        installations are left out, one without an `app_id` is kept."""
        raw = await self._paged("/user/installations", {}, key="installations")
        return [
            AppInstallation(
                installation_id=int(i["id"]),
                account_login=str(i["account"]["login"]),
                account_id=int(i["account"]["id"]),
            )
            for i in raw
            if i.get("account") and str(i.get("app_id", app_id)) == str(app_id)
        ]

    async def read(self, app_id: str | None) -> UserAccounts:
        """Viewer, organizations and (when `app_id`) installations. Raises ProviderError."""
        viewer = await self.viewer()
        organizations = await self.organizations()
        installations = await self.installations(app_id) if app_id else None
        return UserAccounts(viewer=viewer, organizations=organizations, installations=installations)


def installation_auth(app_id: str, private_key: str, installation_id: int) -> BaseAuthStrategy:
    """GitHub App installation credentials."""
    return AppInstallationAuthStrategy(app_id, private_key, installation_id)


def token_auth(token: str) -> BaseAuthStrategy:
    """A user's OAuth token."""
    return TokenAuthStrategy(token)
