"""What every gateway route needs, built once per app: settings, upstream channels, the route table,
session cookies and checks, the subscription manager and the lifecycle state."""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from google.protobuf.message import Message
from starlette.requests import Request

from gateway import metrics
from gateway.api.table import ROUTES, SERVICES, Rpc
from gateway.auth.github import GithubOAuth
from gateway.auth.sessions import SESSION_COOKIE, Principal, SessionChecker, SessionCodec
from gateway.errors import GatewayError
from services.platform import context as request_context
from services.platform.channels import Channels
from services.platform.routing import ReplicaRoutes, first_segments
from services.platform.settings import ServiceName, Settings

_GRPC_TIMEOUT = re.compile(r"^(\d{1,8})([HMSmun])$")
_UNIT_SECONDS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}
UnaryCall = Callable[..., Awaitable[Any]]


class GatewayState:
    """Lifecycle flags and in-flight counters shared by routes and the drain.

    The edge middleware calls `enter(label)` / `leave()` in the task serving each request, so the drain
    knows those tasks: at the grace deadline `cancel_requests()` cancels them (the middleware answers
    them 503 UNAVAILABLE `DRAINING`, which clients retry), and upstream channels close only after."""

    def __init__(self) -> None:
        self.ready = False
        self.draining = False
        self.active_requests = 0
        self.open_streams = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.drain_started = asyncio.Event()
        self._requests: dict[asyncio.Task[Any], str] = {}  # in-flight request task -> "METHOD /path"
        self._cancelled: set[asyncio.Task[Any]] = set()  # cancelled by the drain deadline

    def enter(self, label: str = "") -> None:
        self.active_requests += 1
        metrics.ACTIVE_REQUESTS.inc()
        self.idle.clear()
        task = asyncio.current_task()
        if task is not None:
            self._requests[task] = label

    def leave(self) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._requests.pop(task, None)
            self._cancelled.discard(task)
        self.active_requests -= 1
        metrics.ACTIVE_REQUESTS.dec()
        if self.active_requests <= 0:
            self.idle.set()

    def active_paths(self) -> dict[str, int]:
        """In-flight requests per `METHOD /path` (SSE streams included), for drain logs."""
        counts: dict[str, int] = {}
        for label in self._requests.values():
            counts[label] = counts.get(label, 0) + 1
        return dict(sorted(counts.items()))

    def cancel_requests(self) -> dict[str, int]:
        """Cancel every in-flight request task (the drain's grace deadline); returns what was cancelled."""
        cancelled = self.active_paths()
        for task in list(self._requests):
            if not task.done():
                self._cancelled.add(task)
                task.cancel()
        return cancelled

    def cancelled_by_drain(self) -> bool:
        """True in a request task that `cancel_requests()` cancelled (not a cancel of any other origin)."""
        return asyncio.current_task() in self._cancelled


class _UnaryCalls:
    """Unary multicallables on one channel, made on first use."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self.channel = channel
        self._calls: dict[str, UnaryCall] = {}

    def unary(self, path: str, response_class: type[Message]) -> UnaryCall:
        if path not in self._calls:
            self._calls[path] = self.channel.unary_unary(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_class.FromString,
            )
        return self._calls[path]


class GatewayRuntime:
    """Shared services of the gateway's routes (one per app)."""

    def __init__(
        self, settings: Settings, upstreams: Channels, state: GatewayState, routes: tuple[Rpc, ...] = ROUTES
    ) -> None:
        self.settings = settings
        self.upstreams = upstreams
        self.state = state
        self.routes = routes
        gw = settings.gateway
        self.cookies = SessionCodec(gw.session_secret.get_secret_value(), gw.session_ttl_hours * 3600)
        self._peers: dict[str, _UnaryCalls] = {}
        self.sandbox_routes = ReplicaRoutes(upstreams, "sandbox", _UnaryCalls, first_segments(4))
        self.github = GithubOAuth(settings)
        self.sessions = SessionChecker(self._get_auth_session)

    async def _get_auth_session(
        self, request: org_pb2.GetAuthSessionRequest
    ) -> org_pb2.GetAuthSessionResponse:
        call = self.unary("organization", "GetAuthSession", org_pb2.GetAuthSessionResponse)
        with request_context.bound(request_id=request_context.request_id(), caller=None):
            response: org_pb2.GetAuthSessionResponse = await call(request)
        return response

    def unary(self, service: ServiceName, method: str, response_class: type[Message]) -> UnaryCall:
        """A cached unary multicallable `/<service>/<method>` on the peer's channel."""
        if service not in self._peers:
            self._peers[service] = _UnaryCalls(self.upstreams.channel(service))
        return self._peers[service].unary(f"/{SERVICES[service].full_name}/{method}", response_class)

    async def call(self, rpc: Rpc, message: Message, *, timeout: float) -> Message:
        """Call `rpc` with `message`; sandbox RPCs go to the replica that owns the sandbox named by the
        request's `name` or `parent` (services.platform.routing)."""
        if rpc.service != "sandbox":
            response: Message = await self.unary(rpc.service, rpc.method, rpc.response_class)(
                message, timeout=timeout
            )
            return response
        path = f"/{SERVICES[rpc.service].full_name}/{rpc.method}"
        name = getattr(message, "name", "") or getattr(message, "parent", "")
        return await self.sandbox_routes.call(
            name if isinstance(name, str) else "",
            lambda calls: calls.unary(path, rpc.response_class)(message, timeout=timeout),
        )

    async def principal(self, request: Request) -> Principal | None:
        """The signed-in browser of `request`, or None (no, forged, expired or revoked session)."""
        principal = self.cookies.decode(request.cookies.get(SESSION_COOKIE))
        if principal is None or not await self.sessions.is_live(principal):
            return None
        return principal

    async def require_principal(self, request: Request) -> Principal:
        """The signed-in browser; GatewayError(UNAUTHENTICATED) otherwise."""
        principal = await self.principal(request)
        if principal is None:
            raise GatewayError(grpc.StatusCode.UNAUTHENTICATED, "sign in first", reason="SIGNED_OUT")
        return principal

    def deadline(self, request: Request) -> float:
        """Seconds for the upstream call: `grpc-timeout` or `X-Request-Timeout` (seconds), else the
        default call timeout; always capped by `gateway.deadline_cap_seconds`."""
        cap = self.settings.gateway.deadline_cap_seconds
        wanted = self.settings.call_timeout_seconds
        raw = request.headers.get("grpc-timeout")
        if raw and (m := _GRPC_TIMEOUT.match(raw.strip())):
            wanted = int(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        elif raw := request.headers.get("x-request-timeout"):
            try:
                wanted = float(raw)
            except ValueError as exc:
                raise GatewayError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "X-Request-Timeout: seconds expected",
                    reason="BAD_TIMEOUT",
                ) from exc
        if not math.isfinite(wanted) or wanted <= 0:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT, "timeout must be a positive number", reason="BAD_TIMEOUT"
            )
        return min(wanted, cap)
