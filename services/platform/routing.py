"""Calls for a resource that lives on one replica (a sandbox: its files and agent processes) go to that
replica.

The owner answers every call itself. Any other replica answers FAILED_PRECONDITION with
`google.rpc.ErrorInfo` reason `ON_OTHER_REPLICA` and metadata `replica` = the owner's `host:port`,
before running any code. `ReplicaRoutes` turns that answer into a redirect: it remembers the owner of
the resource and sends the call (and later ones) there, over a channel of its own to that address.
A client that does not route sees the error with a readable message instead of a wrong answer.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.platform.channels import Channels
from services.platform.errors import FailedPrecondition, FoundryError
from services.platform.settings import ServiceName

ON_OTHER_REPLICA = "ON_OTHER_REPLICA"
REPLICA_KEY = "replica"
MAX_REMEMBERED = 10_000  # owners remembered per peer (least recently used forgotten first)

S = TypeVar("S")
T = TypeVar("T")


def on_other_replica(resource: str, owner: str) -> FailedPrecondition:
    """The error a replica answers for `resource` owned by the replica at `owner` (`host:port`)."""
    return FailedPrecondition(
        f"{resource} lives on replica {owner}; call that replica",
        reason=ON_OTHER_REPLICA,
        metadata={REPLICA_KEY: owner},
    )


def owner_of(error: BaseException) -> str | None:
    """The owner's address when `error` is an ON_OTHER_REPLICA answer (as a grpc error, or as the
    FoundryError a mapping channel raises), else None."""
    if isinstance(error, FoundryError):
        if error.code == grpc.StatusCode.FAILED_PRECONDITION and error.reason == ON_OTHER_REPLICA:
            return error.metadata.get(REPLICA_KEY) or None
        return None
    if not isinstance(error, grpc.aio.AioRpcError) or error.code() != grpc.StatusCode.FAILED_PRECONDITION:
        return None
    try:
        status = rpc_status.from_call(error)  # AioRpcError carries the trailers
    except ValueError:  # a status detail that contradicts the call's code: not our answer
        return None
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info) and info.reason == ON_OTHER_REPLICA:
            return info.metadata.get(REPLICA_KEY) or None
    return None


class ReplicaRoutes(Generic[S]):
    """Stubs of `peer` per resource: the owner's when known, else the peer's balanced channel.

    Args:
        peers: this process's channels (the owner channels share their interceptors and options).
        peer: the service whose replicas own resources (e.g. "sandbox").
        stub: the generated stub class, e.g. `SandboxServiceStub`.
        key: the owning resource of a request's resource name (e.g. a process name → its sandbox),
            or None when the name is not owned by a replica (then calls are balanced).
    """

    def __init__(
        self,
        peers: Channels,
        peer: ServiceName,
        stub: Callable[[grpc.aio.Channel], S],
        key: Callable[[str], str | None],
    ) -> None:
        self._peers, self._peer, self._make, self._key = peers, peer, stub, key
        self._balanced = stub(peers.channel(peer))
        self._placing = stub(peers.placement_channel(peer))
        self._stubs: dict[str, S] = {}
        self._owners: OrderedDict[str, str] = OrderedDict()

    def stub(self, name: str, *, placing: bool = False) -> S:
        """The stub for calls on the resource `name` (any name under the owned resource). An owner not
        known yet: the balanced channel, or with `placing` (a call that creates the resource, so the
        replica it lands on owns it) the placement channel (`Channels.placement_channel`)."""
        resource = self._key(name)
        owner = self._owners.get(resource) if resource else None
        if owner is None:
            return self._placing if placing else self._balanced
        self._owners.move_to_end(resource)  # type: ignore[arg-type]
        if owner not in self._stubs:
            self._stubs[owner] = self._make(self._peers.channel_to(owner))
        return self._stubs[owner]

    def remember(self, name: str, owner: str) -> None:
        """Record `owner` (`host:port`; "" = no particular replica) for the resource of `name`, e.g.
        from the `replica` field of a resource just created."""
        resource = self._key(name)
        if resource is None or not owner:
            return
        self._owners[resource] = owner
        self._owners.move_to_end(resource)
        while len(self._owners) > MAX_REMEMBERED:
            self._owners.popitem(last=False)

    def learn(self, name: str, error: BaseException) -> bool:
        """Remember the owner named by an ON_OTHER_REPLICA `error` for `name`; True when it was one."""
        owner = owner_of(error)
        if owner is None or self._key(name) is None:
            return False
        self.remember(name, owner)
        return True

    async def call(self, name: str, invoke: Callable[[S], Awaitable[T]], *, placing: bool = False) -> T:
        """`invoke(stub)` on the owner of `name` (`placing`: see `stub`); an ON_OTHER_REPLICA answer
        is followed once."""
        try:
            return await invoke(self.stub(name, placing=placing))
        except (grpc.RpcError, FoundryError) as exc:
            if not self.learn(name, exc):
                raise
        return await invoke(self.stub(name))


def first_segments(count: int) -> Callable[[str], str | None]:
    """A `key` for ReplicaRoutes: the first `count` segments of a resource name (`a/b/c/d/...` →
    `a/b/c/d` for 4), or None when the name is shorter."""

    def key(name: str) -> str | None:
        parts = name.split("/")
        return "/".join(parts[:count]) if len(parts) >= count and all(parts[:count]) else None

    return key


__all__ = [
    "ON_OTHER_REPLICA",
    "REPLICA_KEY",
    "ReplicaRoutes",
    "first_segments",
    "on_other_replica",
    "owner_of",
]
