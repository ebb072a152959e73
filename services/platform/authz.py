"""Organization membership checks every service runs before serving organization data or a stream.

The gateway is not the only guard: a service asks the organization service (`CheckMembership`)
whether the current caller belongs to an organization, caching answers for a short TTL. Service
callers (background work of another service) are trusted. The organization service itself passes
its own local lookup as `check` instead of a peer call.

The TTL is only the fallback: a process that runs `await membership.listen(broker)` gets a copy of
every `organization.member.changed` / `organization.member.removed` event (`Broker.subscribe_events`,
one per process, so every replica hears each one) and drops the cached answer of that
(organization, user) pair at once, so a removed member is refused within the event's delivery time.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from foundry.organization.v1 import events_pb2 as org_events_pb2
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc

from services.platform import context as request_context
from services.platform.channels import Channels
from services.platform.errors import PermissionDenied, Unauthenticated
from services.platform.logging import get_logger
from services.platform.messaging.broker import Broker, Subscription

log = get_logger(__name__)

MEMBER_CHANGED = "organization.member.changed"
MEMBER_REMOVED = "organization.member.removed"
MemberCheck = Callable[[str, str], Awaitable[bool]]  # (organization name, user name "users/<id>") -> member?


def require_service(operation: str) -> None:
    """Raise PermissionDenied (`SERVICE_ONLY`) unless the caller is a service of the mesh: for calls
    whose inputs reach the host (clone URLs, remotes and tokens) and that only an orchestrating
    service may make, never a user's token."""
    caller = request_context.caller()
    if caller is None:
        raise Unauthenticated("no caller identity", reason="CALLER_IDENTITY_MISSING")
    if not caller.is_service:
        raise PermissionDenied(
            f"{operation} is called by the task service, not by users", reason="SERVICE_ONLY"
        )


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
        # Bumped by every forget: an answer fetched across a forget is not cached (it may predate it).
        self._generation = 0
        self._subscription: Subscription | None = None

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
            generation = self._generation
            member = await self._check(key[0], user)
            hit = (now + self._ttl, member)
            if generation == self._generation:
                self._cache[key] = hit
        if not hit[1]:
            raise PermissionDenied(
                f"{user} is not a member of {key[0]}",
                reason="NOT_A_MEMBER",
                metadata={"organization": key[0]},
            )

    def forget(self, organization: str | None = None) -> None:
        """Drop cached answers (all, or one organization's) after a membership change."""
        self._generation += 1
        if organization is None:
            self._cache.clear()
        else:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != organization}

    def forget_member(self, organization: str, user: str) -> None:
        """Drop the cached answer of one pair (`organizations/<id>`, `users/<id>`)."""
        self._generation += 1
        self._cache.pop((organization, user), None)

    async def on_member_event(self, routing_key: str, body: bytes) -> None:
        """Apply an `organization.member.*` event: forget the (organization, user) pair it names."""
        try:
            if routing_key == MEMBER_CHANGED:
                changed = org_events_pb2.MemberChanged.FromString(body)
                user = changed.member.user or "users/" + changed.name.rsplit("/", 1)[-1]
                self.forget_member(organization_of(changed.name), user)
            elif routing_key == MEMBER_REMOVED:
                removed = org_events_pb2.MemberRemoved.FromString(body)
                self.forget_member(organization_of(removed.name), removed.user)
        except Exception:  # a malformed event: drop everything rather than keep a stale answer
            log.warning("membership_event_malformed", routing_key=routing_key, exc_info=True)
            self.forget()

    async def listen(self, broker: Broker) -> None:
        """Subscribe this process to membership events (idempotent); `stop_listening` ends it."""
        if self._subscription is None:
            self._subscription = await broker.subscribe_events("organization.member.*", self.on_member_event)

    async def stop_listening(self) -> None:
        subscription, self._subscription = self._subscription, None
        if subscription is not None:
            await subscription.cancel()
