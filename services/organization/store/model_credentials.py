"""Queries of organizations' model API keys (`secret` is always the encrypted token). Keyword-only,
taking a session."""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import Row, delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from services.organization.store.tables import model_credentials
from services.platform.db.upsert import insert


async def upsert(
    session: AsyncSession,
    *,
    org_id: str,
    variable: str,
    secret: bytes,
    update_user: str,
    update_time: dt.datetime,
) -> None:
    values = {"secret": secret, "update_user": update_user, "update_time": update_time}
    stmt = (
        insert(session, model_credentials)
        .values(organization_id=org_id, variable=variable, **values)
        .on_conflict_do_update(
            index_elements=[model_credentials.c.organization_id, model_credentials.c.variable], set_=values
        )
    )
    await session.execute(stmt)


async def remove(session: AsyncSession, *, org_id: str, variable: str) -> bool:
    """Delete one key; False when it was not set."""
    result = await session.execute(
        delete(model_credentials).where(
            model_credentials.c.organization_id == org_id, model_credentials.c.variable == variable
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def list_for(session: AsyncSession, *, org_id: str) -> list[Row[Any]]:
    """The organization's keys (encrypted), by variable."""
    rows = await session.execute(
        select(model_credentials)
        .where(model_credentials.c.organization_id == org_id)
        .order_by(model_credentials.c.variable)
    )
    return list(rows)
