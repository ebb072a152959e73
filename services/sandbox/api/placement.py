"""Which replica serves a sandbox: the one that created it (recorded on its row as `replica`).

With `sandbox.replica_address` set, `OwnerGuard` answers every call for a sandbox another replica
owns with FAILED_PRECONDITION `ON_OTHER_REPLICA` (metadata `replica`: the owner's address) before any
service code runs; callers route there (services.platform.routing). Reads served from the database
alone (the sandbox row, sessions, events, cached git state, and the Watch streams, which follow the
shared change log) are answered by any replica; GetProcess and ListProcesses are not (a running
process's output size is the owner's live count).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from grpc_interceptor.server import AsyncServerInterceptor

from services.platform.routing import on_other_replica
from services.sandbox.domain.models import SandboxKey
from services.sandbox.domain.ports import SandboxRecords

SERVICE = "/foundry.sandbox.v1.SandboxService/"
ANY_REPLICA = frozenset(
    {
        "ListAgents",
        "GetSandbox",
        "ListSandboxes",
        "GetAgentSession",
        "ListSessionEvents",
        "WatchSessionEvents",
        "GetGitState",
        "WatchProcesses",
    }
)
_SANDBOX = re.compile(r"^organizations/([^/]+)/sandboxes/([^/]+)")
_ORGANIZATION = re.compile(r"^organizations/([^/]+)$")


def sandbox_of(request: Any) -> SandboxKey | None:
    """The sandbox a request addresses (by `name`, `parent`, or CreateSandbox's parent + sandbox_id);
    None when it names none (validation then answers as usual)."""
    for field in ("name", "parent"):
        value = getattr(request, field, "")
        if isinstance(value, str) and (m := _SANDBOX.match(value)):
            return SandboxKey(m.group(1), m.group(2))
    parent, sandbox_id = getattr(request, "parent", ""), getattr(request, "sandbox_id", "")
    if isinstance(parent, str) and sandbox_id and (m := _ORGANIZATION.match(parent)):
        return SandboxKey(m.group(1), sandbox_id)
    return None


class OwnerGuard(AsyncServerInterceptor):
    """Redirect calls for sandboxes of other replicas (see the module docstring).

    Args:
        records: the sandbox table (owners are read from it and remembered: they never change).
        replica: this replica's address.
    """

    def __init__(self, records: SandboxRecords, replica: str) -> None:
        self.records, self.replica = records, replica
        self._owners: dict[SandboxKey, str] = {}

    async def owner(self, key: SandboxKey) -> str | None:
        """The owning replica's address; None when the sandbox does not exist (yet)."""
        if key not in self._owners:
            sandbox = await self.records.get_sandbox(key)
            if sandbox is None or not sandbox.replica:
                return None  # not cached: a row without an owner may be given one later
            self._owners[key] = sandbox.replica
        return self._owners[key]

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: Any, method_name: str
    ) -> Any:
        if method_name.startswith(SERVICE) and method_name.removeprefix(SERVICE) not in ANY_REPLICA:
            key = sandbox_of(request)
            owner = await self.owner(key) if key is not None else None
            if owner and owner != self.replica:
                raise on_other_replica(key.name if key else "", owner)
        result = method(request, context)
        return result if hasattr(result, "__aiter__") else await result
