"""A user's first state of a session written by several transactions at once, on PostgreSQL (two
messages sent together, or a message while the page marks the session read): every write succeeds
(an upsert), where a read-then-insert failed on pk_user_session_states and answered INTERNAL
(seen in CI, tests/e2e/test_kill_sandbox.py, 2026-12-07)."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from services.task.domain.models import UserSessionState
from services.task.store import queries
from services.task.store.tables import metadata, user_session_states
from tests.helpers.infra import pg_tables

pytestmark = pytest.mark.integration
WRITERS = 8


async def test_concurrent_first_writes_of_a_users_session_state_all_succeed() -> None:
    async with pg_tables(metadata) as db:
        gate = asyncio.Barrier(WRITERS)

        async def write(n: int) -> None:
            async with db.transaction() as session:
                await gate.wait()  # every transaction open, none has written yet
                await queries.put_user_session_state(
                    session, task_id="t1", state=UserSessionState("s1", "alice", draft_text=f"draft {n}")
                )

        await asyncio.gather(*(write(n) for n in range(WRITERS)))
        async with db.transaction() as session:
            rows = (await session.execute(select(user_session_states))).all()
        assert len(rows) == 1 and rows[0].draft_text.startswith("draft "), rows
