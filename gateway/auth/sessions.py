"""Browser sessions: a signed, expiring cookie naming the organization service's auth session, checked
against that service (so sign-out and revocation take effect) with a short cache.

Cookie `foundry_session` = itsdangerous URLSafeTimedSerializer(FOUNDRY_GATEWAY__SESSION_SECRET) of
`{"s": auth session name, "u": user name, "l": login, "a": avatar URL}`; HttpOnly, SameSite=Lax,
Secure when `gateway.cookie_secure`, Max-Age = `gateway.session_ttl_hours`. The signature's timestamp
is checked against the same lifetime, so a stolen cookie stops working when it expires even if the
browser keeps it. Revocation: `GetAuthSession` (cached `CHECK_TTL_SECONDS`) must answer a live session.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import grpc
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from itsdangerous import BadSignature, URLSafeTimedSerializer

from gateway.errors import GatewayError
from services.platform.cache import TtlCache
from services.platform.identity import Caller

SESSION_COOKIE = "foundry_session"
CHECK_TTL_SECONDS = 5.0
Lookup = Callable[[org_pb2.GetAuthSessionRequest], Awaitable[org_pb2.GetAuthSessionResponse]]
_DEAD_CODES = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)


@dataclass(frozen=True, slots=True)
class Principal:
    """A signed-in browser: its auth session and user, as carried by the cookie."""

    auth_session: str  # users/{user}/authSessions/{id}
    user: str  # users/{user}
    login: str
    avatar_url: str = ""

    @property
    def caller(self) -> Caller:
        """The identity the gateway signs into gRPC metadata for this browser's calls."""
        return Caller(
            subject=f"user/{self.user.removeprefix('users/')}", login=self.login, avatar_url=self.avatar_url
        )


class SessionCodec:
    """Encodes and verifies session cookies (signature and age)."""

    def __init__(self, secret: str, ttl_seconds: float) -> None:
        self._serializer = URLSafeTimedSerializer(secret, salt="foundry.session")
        self.ttl_seconds = ttl_seconds

    def encode(self, principal: Principal) -> str:
        return self._serializer.dumps(
            {
                "s": principal.auth_session,
                "u": principal.user,
                "l": principal.login,
                "a": principal.avatar_url,
            }
        )

    def decode(self, raw: str | None) -> Principal | None:
        """The principal of a cookie value, or None when missing, forged or older than the TTL."""
        if not raw:
            return None
        try:
            data = self._serializer.loads(raw, max_age=int(self.ttl_seconds))
            return Principal(
                auth_session=str(data["s"]),
                user=str(data["u"]),
                login=str(data["l"]),
                avatar_url=str(data.get("a", "")),
            )
        except (BadSignature, KeyError, TypeError):
            return None


class SessionChecker:
    """Asks the organization service whether an auth session is still live; caches answers briefly
    (`services/platform/cache.py`).

    `lookup(name)` performs `GetAuthSession`; it raises grpc.RpcError on failure.
    """

    def __init__(self, lookup: Lookup, *, ttl_seconds: float = CHECK_TTL_SECONDS) -> None:
        self._lookup = lookup
        # (auth session, the cookie's user) → live? An answer the service could not give is not kept.
        self._answers: TtlCache[tuple[str, str], bool] = TtlCache(self._ask, ttl_seconds=ttl_seconds)

    async def is_live(self, principal: Principal) -> bool:
        """True if the session exists, is not expired or revoked, and belongs to the cookie's user.

        Raises GatewayError(UNAVAILABLE) when the organization service cannot answer.
        """
        return await self._answers.get((principal.auth_session, principal.user))

    async def _ask(self, key: tuple[str, str]) -> bool:
        auth_session, user = key
        try:
            response = await self._lookup(org_pb2.GetAuthSessionRequest(name=auth_session))
        except grpc.RpcError as exc:
            if exc.code() not in _DEAD_CODES:
                raise GatewayError(
                    grpc.StatusCode.UNAVAILABLE,
                    "cannot check the session now",
                    reason="SESSION_CHECK_UNAVAILABLE",
                ) from exc
            return False
        return not response.auth_session.HasField("revoke_time") and (
            not response.user.name or response.user.name == user
        )

    def forget(self, auth_session: str) -> None:
        """Drop the cached answer (after sign-out on this replica)."""
        self._answers.forget_where(lambda key: key[0] == auth_session)
