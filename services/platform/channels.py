"""Outbound gRPC channels to peer services: one cached grpc.aio channel per peer, round-robin over
the peer's addresses (use `dns:///name:port` with a headless Service), automatic retry of UNAVAILABLE
(a draining peer refuses before running any code), a default deadline, and metadata propagation:
`x-request-id` plus the signed caller (the user being served, or this service for background work).

Client-side health checking (gRPC `healthCheckConfig`, grpc.health.v1 `Watch` on the `readiness`
service) takes a replica out of the round-robin the moment its drain begins. Without it, clients keep
sending to the draining replica until its gRPC server stops, and grpc core answers calls that arrive
during `server.stop()` with CANCELLED, which no client may safely retry.
"""

from __future__ import annotations

import json
from typing import Any

import grpc

from services.platform import context as request_context
from services.platform.errors import from_rpc_error
from services.platform.identity import CALLER_HEADER, Caller, sign
from services.platform.server.health import READINESS
from services.platform.settings import ServiceName, Settings

_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": READINESS},
        "methodConfig": [
            {
                "name": [{}],
                "retryPolicy": {
                    "maxAttempts": 5,
                    "initialBackoff": "0.1s",
                    "maxBackoff": "2s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)
# gRPC core spaces reconnect attempts 1 s growing 1.6x up to 120 s, and a channel waiting for its
# next attempt fails every call at once: a peer back from a minute's outage would stay unreachable
# for up to ~40 s more. Capped, it is reached again within ~2 s whatever the outage (one refused
# connect per peer address every 2 s while it is down costs nothing).
RECONNECT_BACKOFF_MAX_MS = 2000
CHANNEL_OPTIONS = [
    ("grpc.service_config", _SERVICE_CONFIG),
    ("grpc.enable_retries", 1),
    ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MAX_MS),
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


def outgoing_metadata(settings: Settings, fallback: Caller, extra: Any = None) -> list[tuple[str, str]]:
    """Metadata for a call made now: request id and the caller from context (else `fallback`).

    Values already in `extra` win: a caller that signs explicitly (e.g. the gateway's shared upstream
    watches, which must run as the gateway whichever browser request opened them) is kept as is.
    """
    md = list(extra or ())
    present = {key for key, _ in md}
    if request_context.REQUEST_ID_HEADER not in present:
        rid = request_context.request_id() or request_context.new_request_id()
        md.append((request_context.REQUEST_ID_HEADER, rid))
    if CALLER_HEADER not in present:
        caller = request_context.caller() or fallback
        md.extend(sign(caller, settings.internal_auth_secret.get_secret_value()))
    return md


class _Sign:
    """Builds call details carrying the request id, the signed caller and a default deadline."""

    def __init__(self, settings: Settings, fallback: Caller, default_timeout: float) -> None:
        self.settings, self.fallback, self.default_timeout = settings, fallback, default_timeout

    def details(self, details: grpc.aio.ClientCallDetails, *, streaming: bool) -> grpc.aio.ClientCallDetails:
        timeout = details.timeout
        if timeout is None and not streaming:
            timeout = self.default_timeout
        return grpc.aio.ClientCallDetails(
            method=details.method,
            timeout=timeout,
            metadata=grpc.aio.Metadata(*outgoing_metadata(self.settings, self.fallback, details.metadata)),
            credentials=details.credentials,
            wait_for_ready=details.wait_for_ready,
        )


# grpc.aio files an interceptor object under ONE call kind only, so unary and streaming need separate objects.
class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, sign: _Sign) -> None:
        self.sign = sign

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.sign.details(details, streaming=False), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, sign: _Sign) -> None:
        self.sign = sign

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self.sign.details(details, streaming=True), request)


class PeerErrors(grpc.aio.UnaryUnaryClientInterceptor):
    """Raises a peer's failed unary call as the same FoundryError (`from_rpc_error`, keeping its
    reason, domain and metadata), so every service maps peer errors here and nowhere else. Server
    failures (UNAVAILABLE, INTERNAL, …) are prefixed with the peer method, e.g. `GetRepository: …`.

    Only on service-to-service channels (`Channels(map_errors=True)`); services make no streaming
    peer calls. The gateway, CLI and tests keep grpc errors: the gateway maps them to HTTP itself."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        call = await continuation(details, request)
        try:
            return await call
        except grpc.RpcError as exc:
            method = details.method.decode() if isinstance(details.method, bytes) else str(details.method)
            raise from_rpc_error(exc, context=method.rsplit("/", 1)[-1]) from exc


def _interceptors(
    settings: Settings, caller: Caller, timeout: float, *, map_errors: bool = False
) -> list[Any]:
    sign = _Sign(settings, caller, timeout)
    # The first interceptor is the outermost: errors are mapped after signing, deadline and retries.
    return [*([PeerErrors()] if map_errors else []), _UnaryUnary(sign), _UnaryStream(sign)]


class Channels:
    """Channels from one process (acting as `caller_service`) to its peers. With `map_errors` (every
    service's host), a peer's failed unary call raises a FoundryError (`PeerErrors`)."""

    def __init__(self, settings: Settings, caller_service: str, *, map_errors: bool = False) -> None:
        self.settings = settings
        self.caller = Caller.service(caller_service)
        self.map_errors = map_errors
        self._channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, peer: ServiceName) -> grpc.aio.Channel:
        """The (lazily created) channel to `peer`."""
        return self._cached(peer, self.settings.target_of(peer))

    def placement_channel(self, peer: ServiceName) -> grpc.aio.Channel:
        """A second balanced channel to `peer`, for calls that choose where a new resource lives
        (services.platform.routing): its round robin advances on those calls alone, so consecutive
        placements go to consecutive replicas whatever else the main channel carries."""
        return self._cached(f"placement:{peer}", self.settings.target_of(peer))

    def channel_to(self, address: str) -> grpc.aio.Channel:
        """The (lazily created) channel to one replica at `address` (`host:port`), e.g. the owner of a
        sandbox (services.platform.routing)."""
        return self._cached(f"address:{address}", address)

    def _cached(self, key: str, target: str) -> grpc.aio.Channel:
        if key not in self._channels:
            self._channels[key] = open_channel(target, self.settings, self.caller, map_errors=self.map_errors)
        return self._channels[key]

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def open_channel(
    target: str,
    settings: Settings,
    caller: Caller,
    *,
    timeout: float | None = None,
    map_errors: bool = False,
) -> grpc.aio.Channel:
    """A channel that always speaks as `caller` (tools, tests and the CLI; services use `Channels`).
    `map_errors`: raise peer errors as FoundryError (`PeerErrors`) instead of grpc.RpcError."""
    return grpc.aio.insecure_channel(
        target,
        options=CHANNEL_OPTIONS,
        interceptors=_interceptors(
            settings, caller, timeout or settings.call_timeout_seconds, map_errors=map_errors
        ),
    )
