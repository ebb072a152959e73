"""The organization migration `ef5bc7ed1614` turns the integer-microsecond `*_us` columns into the
platform's timestamp type: an organization database holding µs rows reads back the same instants
(aware UTC, to the microsecond), the audit log keeps its order and an old page token still resumes
where it did, and the downgrade gives back the same integers. On SQLite and on PostgreSQL."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory

from services.organization.store import audit as audit_store
from services.organization.store import tables
from services.platform import clock
from services.platform.db import Database
from services.platform.db.migrations import script_location
from tests.helpers.infra import unique_name

REVISION = "ef5bc7ed1614"
T1 = 1_714_564_800_123_456  # 2024-05-01T12:00:00.123456Z
T2 = 1_714_564_800_000_000  # a whole second
T3 = 1_714_564_800_000_001
T4 = 86_400_000_001  # 1970-01-02T00:00:00.000001Z


def _config(conn: Any) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", script_location("organization"))
    cfg.attributes["connection"] = conn
    return cfg


async def _migrate(db: Database, step: str, revision: str) -> None:
    async with db.engine.begin() as conn:
        await conn.run_sync(lambda c: getattr(command, step)(_config(c), revision))


def _previous() -> str:
    script = ScriptDirectory.from_config(_config(None))
    down = script.get_revision(REVISION).down_revision
    assert isinstance(down, str)
    return down


_ORG = (
    "INSERT INTO organizations (id, kind, display_name, slug, primary_domain, default_model,"
    " auto_import_repositories, provider, github_login, github_account_id, local_root_path, request_id,"
    " create_us, update_us) VALUES ('acme', 2, 'Acme', 'acme', 'acme.example', '', true, 1, '', 0, '',"
    f" NULL, {T1}, {T2})"
)
_USER = (
    "INSERT INTO users (id, identity_provider, login, display_name, email, avatar_url, github_account_id,"
    f" role_label, default_model, create_us, update_us, last_sign_in_us) VALUES ('u1', 1, 'alice', 'Alice',"
    f" '', '', 0, '', '', {T4}, {T1}, {T3})"
)
_SESSIONS = (
    "INSERT INTO auth_sessions (id, user_id, active_organization, user_agent, create_us, expire_us,"
    f" revoke_us) VALUES ('s1', 'u1', '', '', {T1}, {T3}, NULL), ('s2', 'u1', '', '', {T2}, {T3}, {T1})"
)
_MEMBER = (
    "INSERT INTO members (organization_id, user_id, login, display_name, email, avatar_url, role, state,"
    f" create_us, update_us) VALUES ('acme', 'u1', 'alice', 'Alice', '', '', 1, 1, {T2}, {T1})"
)
_REPOSITORY = (
    "INSERT INTO repositories (organization_id, name, full_name, default_branch, listed, own_update_us,"
    f" task_count, latest_activity_us) VALUES ('acme', 'organizations/acme/repositories/r', 'acme/r', 'main',"
    f" true, 0, 0, {T1})"
)
_AUDIT = (
    "INSERT INTO audit_events (id, organization_id, event_id, kind, repository, task, branch, actor, payload,"
    " create_us) VALUES"
    f" (1, 'acme', 'e1', 'k', '', '', '', '', '{{}}', {T2}),"
    f" (2, 'acme', 'e2', 'k', '', '', '', '', '{{}}', {T1}),"
    f" (3, 'acme', 'e3', 'k', '', '', '', '', '{{}}', {T1}),"
    f" (4, 'acme', 'e4', 'k', '', '', '', '', '{{}}', {T3})"
)
_DISCOVERIES = (
    "INSERT INTO github_discoveries (user_id, state, error_message, update_us, synced_us) VALUES"
    f" ('u1', 'synced', '', {T1}, {T3}), ('u2', 'failed', 'gone', {T2}, NULL)"
)
_INSTALLATION = (
    "INSERT INTO github_installations (organization_id, installation_status, installation_id,"
    f" connected_installation_id, update_us) VALUES ('acme', 1, 5, NULL, {T4})"
)
_INTEGERS = {
    "SELECT create_us, update_us FROM organizations": [(T1, T2)],
    "SELECT create_us, update_us, last_sign_in_us FROM users": [(T4, T1, T3)],
    "SELECT create_us, expire_us, revoke_us FROM auth_sessions ORDER BY id": [(T1, T3, None), (T2, T3, T1)],
    "SELECT create_us, update_us FROM members": [(T2, T1)],
    "SELECT own_update_us, latest_activity_us FROM repositories": [(0, T1)],
    "SELECT create_us FROM audit_events ORDER BY id": [(T2,), (T1,), (T1,), (T3,)],
    "SELECT update_us, synced_us FROM github_discoveries ORDER BY user_id": [(T1, T3), (T2, None)],
    "SELECT update_us FROM github_installations": [(T4,)],
}


def at(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


async def _check(db: Database) -> None:
    await _migrate(db, "upgrade", _previous())
    async with db.engine.begin() as conn:
        for statement in (_ORG, _USER, _SESSIONS, _MEMBER, _REPOSITORY, _AUDIT, _DISCOVERIES, _INSTALLATION):
            await conn.execute(sa.text(statement))

    await _migrate(db, "upgrade", REVISION)
    async with db.engine.connect() as conn:

        async def rows(table: sa.Table, *columns: str, order: str = "") -> list[tuple[Any, ...]]:
            query = sa.select(*(table.c[c] for c in columns))
            if order:
                query = query.order_by(table.c[order])
            return [tuple(r) for r in await conn.execute(query)]

        assert await rows(tables.organizations, "create_time", "update_time") == [(at(T1), at(T2))]
        assert await rows(tables.users, "create_time", "update_time", "last_sign_in_time") == [
            (at(T4), at(T1), at(T3))
        ]
        assert await rows(tables.auth_sessions, "create_time", "expire_time", "revoke_time", order="id") == [
            (at(T1), at(T3), None),
            (at(T2), at(T3), at(T1)),
        ]
        assert await rows(tables.members, "create_time", "update_time") == [(at(T2), at(T1))]
        assert await rows(tables.repositories, "own_update_time", "latest_activity_time") == [
            (clock.EPOCH, at(T1))
        ]
        created = await rows(tables.audit_events, "create_time", order="id")
        assert created == [(at(T2),), (at(T1),), (at(T1),), (at(T3),)]
        for (value,) in created:
            assert value.tzinfo is not None and value.utcoffset() == dt.timedelta(0)
        assert [clock.to_us(v) for (v,) in created] == [T2, T1, T1, T3]
        assert await rows(tables.github_discoveries, "update_time", "synced_time", order="user_id") == [
            (at(T1), at(T3)),
            (at(T2), None),
        ]
        assert await rows(tables.github_installations, "update_time") == [(at(T4),)]

    # Newest first by (time, id); a page token minted before the migration ("{µs}.{id}" of event 3)
    # resumes with event 2 (same instant, lower id), then the older ones.
    async with db.snapshot() as session:
        listed = await audit_store.list_events(
            session, org_id="acme", repository="", branch="", task="", before=None, limit=10
        )
        assert [r.event_id for r in listed] == ["e3", "e2", "e4", "e1"]
        after = await audit_store.list_events(
            session, org_id="acme", repository="", branch="", task="", before=(clock.from_us(T1), 3), limit=10
        )
        assert [r.event_id for r in after] == ["e2", "e4", "e1"]

    await _migrate(db, "downgrade", _previous())
    async with db.engine.connect() as conn:
        for query, expected in _INTEGERS.items():
            assert [tuple(r) for r in await conn.execute(sa.text(query))] == expected, query


async def test_microsecond_rows_become_the_same_instants_on_sqlite(tmp_path: Path) -> None:
    db = Database(f"sqlite+aiosqlite:///{tmp_path / 'organization.sqlite3'}")
    try:
        await _check(db)
    finally:
        await db.dispose()


@pytest.mark.integration
async def test_microsecond_rows_become_the_same_instants_on_postgres(pg_url: str) -> None:
    db = Database(pg_url, schema=unique_name("organization"))
    try:
        await db.ensure_schema()
        await _check(db)
    finally:
        await db.dispose()
