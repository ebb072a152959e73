"""Users' GitHub OAuth tokens, their account discoveries and the accounts each token sees
(`tables.user_tokens`, `user_discoveries`, `user_accounts`). Keyword-only functions taking a session.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.github_data.domain.accounts import Discovery, DiscoveryState, GithubAccount, UserToken
from services.github_data.store.tables import user_accounts, user_discoveries, user_tokens
from services.platform.db.upsert import insert as upsert_insert
from services.platform.logging import get_logger
from services.platform.secrets import SecretBox, SecretUnreadable

log = get_logger(__name__)


def _token(row: Any, box: SecretBox) -> UserToken | None:
    """The row's token, opened; None (logged, never the value) when it does not open: sealed under
    another credentials key, or copied from another user's row."""
    try:
        access_token = box.open(row.sealed_token, row.user_id)
    except SecretUnreadable as exc:
        log.warning("github_token_unreadable", user=row.user_id, why=str(exc))
        return None
    return UserToken(
        user_id=row.user_id,
        access_token=access_token,
        scopes=tuple(row.scopes or ()),
        expire_time=row.expire_time,
        update_time=row.update_time,
    )


async def put_token(
    session: AsyncSession,
    box: SecretBox,
    *,
    user_id: str,
    access_token: str,
    scopes: Sequence[str],
    expire_time: datetime | None,
    now: datetime,
) -> None:
    """Insert or replace the user's token (sealed with `box`, bound to the user)."""
    values = {
        "sealed_token": box.seal(access_token, user_id),
        "scopes": list(scopes),
        "expire_time": expire_time,
        "update_time": now,
    }
    exists = await session.scalar(select(user_tokens.c.user_id).where(user_tokens.c.user_id == user_id))
    if exists is None:
        await session.execute(insert(user_tokens).values(user_id=user_id, **values))
    else:
        await session.execute(update(user_tokens).where(user_tokens.c.user_id == user_id).values(**values))


async def get_token(session: AsyncSession, box: SecretBox, *, user_id: str) -> UserToken | None:
    """The user's token, or None (none stored, or it does not open)."""
    row = (await session.execute(select(user_tokens).where(user_tokens.c.user_id == user_id))).first()
    return _token(row, box) if row else None


async def tokens_for_account(session: AsyncSession, box: SecretBox, *, account_id: int) -> list[UserToken]:
    """Tokens of the users whose last discovery saw GitHub account `account_id`, newest first."""
    rows = await session.execute(
        select(user_tokens)
        .join(user_accounts, user_accounts.c.user_id == user_tokens.c.user_id)
        .where(user_accounts.c.account_id == account_id)
        .order_by(user_tokens.c.update_time.desc())
    )
    return [t for t in (_token(r, box) for r in rows) if t is not None]


def _discovery(row: Any) -> Discovery:
    return Discovery(
        user_id=row.user_id,
        state=row.state,
        version=int(row.version),
        update_time=row.update_time,
        error_message=row.error_message or "",
        last_success_time=row.last_success_time,
    )


async def get_discovery(session: AsyncSession, *, user_id: str) -> Discovery | None:
    row = (
        await session.execute(select(user_discoveries).where(user_discoveries.c.user_id == user_id))
    ).first()
    return _discovery(row) if row else None


async def put_discovery(
    session: AsyncSession, *, user_id: str, state: DiscoveryState, error_message: str = "", now: datetime
) -> Discovery:
    """Move the user's discovery to `state` with the next version; `done` also records the success
    time. Returns it as stored."""
    values: dict[str, Any] = {"state": state, "error_message": error_message, "update_time": now}
    if state == "done":
        values["last_success_time"] = now
    # One upsert: two discoveries of a new user at once both succeed.
    stmt = upsert_insert(session, user_discoveries).values(user_id=user_id, version=1, **values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[user_discoveries.c.user_id],
            set_={**values, "version": user_discoveries.c.version + 1},
        )
    )
    stored = await get_discovery(session, user_id=user_id)
    assert stored is not None
    return stored


async def replace_accounts(session: AsyncSession, *, user_id: str, accounts: Sequence[GithubAccount]) -> None:
    """The accounts the user's token sees are now exactly `accounts`."""
    await session.execute(delete(user_accounts).where(user_accounts.c.user_id == user_id))
    seen: set[int] = set()
    for account in accounts:
        if account.account_id in seen:
            continue
        seen.add(account.account_id)
        await session.execute(
            insert(user_accounts).values(user_id=user_id, account_id=account.account_id, login=account.login)
        )
