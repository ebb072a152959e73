"""Organization membership checks every service runs before serving organization data or a stream.

The gateway is not the only guard: a service asks the organization service (`CheckMembership`)
whether the current caller belongs to an organization, caching answers for a short TTL. Service
callers (background work of another service) are trusted. The organization service itself passes
its own local lookup as `check` instead of a peer call.

The TTL is only the fallback: a process that runs `await membership.listen(broker)` gets a copy of
every `organization.member.changed` / `organization.member.removed` event (`Broker.subscribe_events`,
one per process, so every replica hears each one) and drops the cached answer of that
(organization, user) pair at once, so a removed member is refused within the event's delivery time
(`services/platform/cache.py` has the cache's rules).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from foundry.organization.v1 import events_pb2 as org_events_pb2
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc

from services.platform import context as request_context
from services.platform.cache import TtlCache
from services.platform.channels import Channels
from services.platform.errors import PermissionDenied, Unauthenticated
from services.platform.messaging.broker import Broker

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
        async def fetch(key: tuple[str, str]) -> bool:
            return await check(*key)

        # (organization, user) → member? Negative answers are cached too: a stranger asks once per TTL.
        self._answers: TtlCache[tuple[str, str], bool] = TtlCache(
            fetch, ttl_seconds=ttl_seconds, events="organization.member.*", invalidate=_member_keys
        )

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
        if not await self._answers.get(key):
            raise PermissionDenied(
                f"{user} is not a member of {key[0]}",
                reason="NOT_A_MEMBER",
                metadata={"organization": key[0]},
            )

    def forget(self, organization: str | None = None) -> None:
        """Drop cached answers (all, or one organization's) after a membership change."""
        if organization is None:
            self._answers.forget()
        else:
            self._answers.forget_where(lambda key: key[0] == organization)

    def forget_member(self, organization: str, user: str) -> None:
        """Drop the cached answer of one pair (`organizations/<id>`, `users/<id>`)."""
        self._answers.forget((organization, user))

    async def on_member_event(self, routing_key: str, body: bytes) -> None:
        """Apply an `organization.member.*` event: forget the (organization, user) pair it names."""
        await self._answers.on_event(routing_key, body)

    async def listen(self, broker: Broker) -> None:
        """Subscribe this process to membership events (idempotent); `stop_listening` ends it."""
        await self._answers.listen(broker)

    async def stop_listening(self) -> None:
        await self._answers.stop_listening()


def _member_keys(routing_key: str, body: bytes) -> list[tuple[str, str]] | None:
    """The (organization, user) pair an `organization.member.*` event names; [] for other events."""
    if routing_key == MEMBER_CHANGED:
        changed = org_events_pb2.MemberChanged.FromString(body)
        user = changed.member.user or "users/" + changed.name.rsplit("/", 1)[-1]
        return [(organization_of(changed.name), user)]
    if routing_key == MEMBER_REMOVED:
        removed = org_events_pb2.MemberRemoved.FromString(body)
        return [(organization_of(removed.name), removed.user)]
    return []
