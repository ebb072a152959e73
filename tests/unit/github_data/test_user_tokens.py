"""Which stored OAuth token github-data uses for an organization (what ResolveGithubToken answered
when the organization service held tokens): the named user's own, else the newest usable token of a
user whose last discovery saw the organization's GitHub account; expired tokens and tokens without
the `repo` scope are never used; no usable token is a ProviderError. Tokens are stored only through
SetGithubToken by services (tests/unit/organization/test_github_discovery.py attacks that), sealed
under the credentials key and bound to their user."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa

from services.github_data.domain.accounts import GithubAccount
from services.github_data.domain.models import Connection
from services.github_data.domain.ports import ProviderError
from services.github_data.store import queries
from services.github_data.store import user_accounts as store
from services.github_data.store.tables import user_tokens
from services.github_data.usecases.user_accounts import StoredTokens
from services.platform import clock
from services.platform.secrets import SecretBox
from services.platform.settings import Settings
from tests.helpers.mesh import running

ACME = GithubAccount("acme", 77)
OTHER = GithubAccount("other", 88)


async def test_the_users_own_token_or_the_newest_usable_one_that_sees_the_account(settings: Settings) -> None:
    async with running(settings, ["github_data"]) as mesh:
        db = mesh.hosts["github_data"].db
        assert db is not None
        now = clock.now()
        box = SecretBox(settings.credentials_key.get_secret_value())
        tokens = {  # user: (token, scopes, expires, stored, accounts its discovery saw)
            "1": ("gho_one", ["repo"], None, now - timedelta(minutes=3), [ACME]),
            "2": (
                "gho_two",
                ["read:org", "repo"],
                now + timedelta(hours=1),
                now - timedelta(minutes=2),
                [ACME],
            ),
            "3": ("gho_expired", ["repo"], now - timedelta(seconds=1), now - timedelta(minutes=1), [ACME]),
            "4": ("gho_no_repo_scope", ["read:org"], None, now, [ACME]),
            "5": ("gho_elsewhere", ["repo"], None, now, [OTHER]),
        }
        async with db.transaction() as session:
            await queries.save_connection(
                session,
                connection=Connection(
                    organization="acme",
                    provider="github",
                    account_login="acme",
                    account_id=ACME.account_id,
                    account_type="organization",
                ),
                now=now,
            )
            for user, (token, scopes, expires, stored, seen) in tokens.items():
                await store.put_token(
                    session,
                    box,
                    user_id=user,
                    access_token=token,
                    scopes=scopes,
                    expire_time=expires,
                    now=stored,
                )
                await store.replace_accounts(session, user_id=user, accounts=seen)
        source = StoredTokens(db, box)
        assert await source.token_for("acme", "users/1") == "gho_one"
        assert await source.token_for("acme", "users/5") == "gho_elsewhere"  # a named user: theirs
        assert await source.token_for("acme", "") == "gho_two"  # newer ones are expired or lack `repo`
        for organization, user in (
            ("acme", "users/3"),
            ("acme", "users/4"),
            ("acme", "users/9"),
            ("nope", ""),
        ):
            with pytest.raises(ProviderError):
                await source.token_for(organization, user)


async def test_tokens_are_sealed_at_rest_and_bound_to_their_user(settings: Settings) -> None:
    """The database never holds a token in plaintext; a sealed token copied onto another user's row,
    or read under another credentials key, is not used (and the service says so in its log)."""
    async with running(settings, ["github_data"]) as mesh:
        db = mesh.hosts["github_data"].db
        assert db is not None
        box = SecretBox(settings.credentials_key.get_secret_value())
        now = clock.now()
        async with db.transaction() as session:
            for user, token in (("1", "gho_victims_token"), ("2", "gho_attackers_token")):
                await store.put_token(
                    session, box, user_id=user, access_token=token, scopes=["repo"], expire_time=None, now=now
                )
        async with db.snapshot() as session:
            rows = {
                r.user_id: bytes(r.sealed_token)
                for r in (await session.execute(sa.select(user_tokens))).all()
            }
        assert b"gho_" not in rows["1"] and b"gho_" not in rows["2"]
        data = settings.data_dir / "github_data.sqlite3"
        assert data.exists() and b"gho_victims_token" not in data.read_bytes()

        # The attacker's row gets the victim's sealed token: it does not open as the attacker's.
        async with db.transaction() as session:
            await session.execute(
                sa.update(user_tokens).where(user_tokens.c.user_id == "2").values(sealed_token=rows["1"])
            )
        source = StoredTokens(db, box)
        assert await source.token_for("acme", "users/1") == "gho_victims_token"
        with pytest.raises(ProviderError):
            await source.token_for("acme", "users/2")
        # Another credentials key opens nothing.
        with pytest.raises(ProviderError):
            await StoredTokens(db, SecretBox("another key")).token_for("acme", "users/1")
