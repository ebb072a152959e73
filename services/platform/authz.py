"""Organization membership checks every service runs before serving organization data or a stream.

The gateway is not the only guard: a service asks the organization service (`CheckMembership`)
whether the current caller belongs to an organization, caching answers for a short TTL. Service
callers (background work of another service) are trusted. The organization service itself passes
its own local lookup as `check` instead of a peer call.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc

from services.platform import context as request_context
from services.platform.channels import Channels
from services.platform.errors import PermissionDenied, Unauthenticated

MemberCheck = Callable[[str, str], Awaitable[bool]]  # (organization name, user name "users/<id>") -> member?


def organization_of(name: str) -> str:
    """`organizations/acme/tasks/t1` → `organizations/acme` (InvalidArgument-free: callers validate names)."""
    parts = name.split("/")
    return "/".join(parts[:2]) if len(parts) >= 2 and parts[0] == "organizations" else name


class Membership:
    """`await membership.require(org_name)` raises PermissionDenied unless the caller is a member."""

    def __init__(self, check: MemberCheck, *, ttl_seconds: float = 10.0) -> None:
        self._check = check
        self._ttl = ttl_seconds
        self._cache: dict[tuple[str, str], tuple[float, bool]] = {}

    @classmethod
    def via_peer(cls, peers: Channels, *, ttl_seconds: float = 10.0) -> Membership:
        stub = org_grpc.OrganizationServiceStub(peers.channel("organization"))

        async def check(organization: str, user: str) -> bool:
            response = await stub.CheckMembership(
                org_pb2.CheckMembershipRequest(organization=organization, user=user)
            )
            return bool(response.member)

        return cls(check, ttl_seconds=ttl_seconds)

    async def require(self, organization: str) -> None:
        """Raise unless the current caller may read and act on `organization` (`organizations/<id>`)."""
        caller = request_context.caller()
        if caller is None:
            raise Unauthenticated("no caller identity", reason="CALLER_IDENTITY_MISSING")
        if caller.is_service:
            return
        user = f"users/{caller.user_id}"
        key = (organization_of(organization), user)
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is None or hit[0] < now:
            member = await self._check(key[0], user)
            self._cache[key] = (now + self._ttl, member)
            hit = self._cache[key]
        if not hit[1]:
            raise PermissionDenied(
                f"{user} is not a member of {key[0]}",
                reason="NOT_A_MEMBER",
                metadata={"organization": key[0]},
            )

    def forget(self, organization: str | None = None) -> None:
        """Drop cached answers (all, or one organization's) after a membership change."""
        if organization is None:
            self._cache.clear()
        else:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != organization}
