"""Users' GitHub OAuth tokens and the discovery of the accounts they can see.

    SetGithubToken (service callers: the gateway at each GitHub sign-in)
        one transaction: store the token, discovery → pending, publish UserAccountsChanged, enqueue
        DiscoverUserAccounts. GitHub is not asked on this path.
    DiscoverUserAccounts (worker, queue `github_data.user_accounts`)
        discovery → running (published), read /user, /user/orgs and (App configured)
        /user/installations with the token, outside any transaction; then in one inbox-deduplicated
        transaction record the accounts the token sees and publish the `done` UserAccountsChanged
        carrying them. A rate limit, 5xx or unreachable GitHub is raised for the Worker's delayed
        retry until the queue's last attempt; then, as for failures retrying cannot fix (no token,
        expired or revoked token), the `error` state is recorded and published.

The organization service consumes `github_data.user_accounts.changed` and is the only writer of
organizations and memberships; this service never calls it. `StoredTokens` is the `TokenSource`
through which syncs, pushes and pull requests use the stored tokens.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from services.github_data.domain.accounts import UserAccounts
from services.github_data.domain.names import DOMAIN
from services.github_data.domain.ports import ProviderError
from services.github_data.providers import GithubUserAccounts, RetryPolicy
from services.github_data.store import queries
from services.github_data.store import user_accounts as store
from services.github_data.usecases.deps import Deps
from services.platform import clock
from services.platform.db import Database
from services.platform.errors import require
from services.platform.logging import get_logger
from services.platform.messaging import HandlerContext
from services.platform.outbox.inbox import was_processed
from services.platform.secrets import SecretBox

log = get_logger(__name__)

# Discovery leaves retries to the queue Worker (its delayed redelivery), not to the HTTP client.
NO_RETRY = RetryPolicy(max_retries=0)


async def set_token(
    deps: Deps,
    *,
    user_id: str,
    access_token: str,
    scopes: Sequence[str],
    expire_time: datetime | None,
) -> None:
    """Store the user's token and queue the discovery of their accounts (one transaction).

    Raises InvalidArgument for an empty token."""
    require(bool(access_token), "access_token", "is required", domain=DOMAIN)
    now = deps.now()
    async with deps.db.transaction() as session:
        await store.put_token(
            session,
            deps.box,
            user_id=user_id,
            access_token=access_token,
            scopes=list(scopes),
            expire_time=expire_time,
            now=now,
        )
        discovery = await store.put_discovery(session, user_id=user_id, state="pending", now=now)
        await deps.events.user_accounts_changed(session, discovery)
        await deps.events.enqueue_discovery(session, user_id)
    log.info("github_token_stored", user=user_id, scopes=list(scopes))


async def discover(deps: Deps, user_id: str, ctx: HandlerContext, *, max_attempts: int) -> None:
    """Run one DiscoverUserAccounts work item (see the module docstring)."""
    async with deps.db.snapshot() as session:  # a redelivery of an applied item asks GitHub nothing
        if await was_processed(session, consumer=ctx.consumer, message_id=ctx.message.message_id):
            return
    await _mark_running(deps, user_id)
    try:
        accounts = await _read(deps, user_id)
    except ProviderError as exc:
        if exc.retryable and ctx.attempt < max_attempts:
            raise
        log.error("github_discovery_failed", user=user_id, error=exc.message, attempt=ctx.attempt)
        async with ctx.transaction() as session:
            discovery = await store.put_discovery(
                session, user_id=user_id, state="error", error_message=exc.message, now=deps.now()
            )
            await deps.events.user_accounts_changed(session, discovery)
        return
    async with ctx.transaction() as session:
        await store.replace_accounts(
            session, user_id=user_id, accounts=[accounts.viewer, *accounts.organizations]
        )
        discovery = await store.put_discovery(session, user_id=user_id, state="done", now=deps.now())
        await deps.events.user_accounts_changed(session, discovery, accounts)
    log.info(
        "github_accounts_discovered",
        user=user_id,
        organizations=[o.login for o in accounts.organizations],
    )


async def _mark_running(deps: Deps, user_id: str) -> None:
    async with deps.db.transaction() as session:
        current = await store.get_discovery(session, user_id=user_id)
        if current is not None and current.state == "running":
            return
        discovery = await store.put_discovery(session, user_id=user_id, state="running", now=deps.now())
        await deps.events.user_accounts_changed(session, discovery)


async def _read(deps: Deps, user_id: str) -> UserAccounts:
    """What the user's token sees. Raises ProviderError (retryable when GitHub may recover)."""
    async with deps.db.snapshot() as session:
        token = await store.get_token(session, deps.box, user_id=user_id)
    if token is None:
        raise ProviderError(f"users/{user_id} has no GitHub token; sign in again")
    if not token.usable(deps.now(), require_repo_scope=False):
        raise ProviderError("the GitHub token expired; sign in again")
    async with GithubUserAccounts(
        api_url=deps.github.api_url, token=token.access_token, retry=NO_RETRY
    ) as gh:
        return await gh.read(deps.github.app_id)


class StoredTokens:
    """`TokenSource` over the stored tokens: the given user's, or (no user) the newest usable token
    of a user whose last discovery saw the organization's GitHub account. Tokens need the `repo`
    scope (sync, clone, push and pull requests all read or write repositories)."""

    def __init__(self, db: Database, box: SecretBox, now: Callable[[], datetime] = clock.now) -> None:
        self._db = db
        self._box = box
        self._now = now

    async def token_for(self, organization: str, user: str) -> str:
        """The access token for `organization` (its id); `user` is `users/{id}` or ''.

        Raises ProviderError when there is none."""
        now = self._now()
        async with self._db.snapshot() as session:
            if user:
                own = await store.get_token(session, self._box, user_id=user.removeprefix("users/"))
                candidates = [own] if own is not None else []
            else:
                connection = await queries.get_connection(session, org=organization)
                account_id = connection.account_id if connection is not None else 0
                candidates = await store.tokens_for_account(session, self._box, account_id=account_id)
        for token in candidates:
            if token.usable(now):
                return token.access_token
        who = user or "any user who can see its GitHub account"
        raise ProviderError(f"no usable GitHub token of {who} for organizations/{organization}")
