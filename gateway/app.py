"""Gateway application factory and its process component.

`create_app(settings, upstreams, state)` builds the Starlette app: the JSON API (route table), auth,
the multiplexed browser stream, GitHub webhooks, the OpenAPI document and the workbench's static
files. `GatewayComponent` runs it under uvicorn with the same lifecycle as a service host
(ready → draining → idle → closed).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import grpc
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gateway.api import dispatch
from gateway.api.openapi import document
from gateway.auth import routes as auth_routes
from gateway.auth.sessions import Principal
from gateway.errors import error_body, json_error
from gateway.headers import MAX_HEADER_BYTES, H11Protocol
from gateway.middleware import EdgeMiddleware
from gateway.runtime import GatewayRuntime, GatewayState
from gateway.stream import routes as stream_routes
from gateway.stream.manager import SubscriptionManager
from gateway.stream.topics import Topic
from gateway.webhooks import github_webhook
from services.platform import context as request_context
from services.platform.aio import wait_event
from services.platform.authz import Membership
from services.platform.channels import Channels, outgoing_metadata
from services.platform.logging import get_logger
from services.platform.server.http import HttpServer
from services.platform.settings import Settings

STATIC_DIR = Path(__file__).parent / "static"
log = get_logger("foundry.gateway")
__all__ = ["GatewayComponent", "GatewayState", "create_app"]


def _upstream_opener(upstreams: Channels) -> Any:
    """Opens a topic's Watch. Metadata is passed explicitly: grpc.aio registers a client interceptor
    for one call type only, so `Channels`' propagation does not reach server-streaming calls."""
    calls: dict[str, Any] = {}

    def open_stream(topic: Topic, resume_token: str) -> Any:
        spec = topic.spec
        if spec.grpc_path not in calls:
            calls[spec.grpc_path] = upstreams.channel(spec.service).unary_stream(
                spec.grpc_path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=spec.response_class().FromString,
            )
        metadata = outgoing_metadata(upstreams.settings, upstreams.caller)
        return calls[spec.grpc_path](topic.request(resume_token), metadata=metadata)

    return open_stream


async def _http_error(request: Request, exc: Exception) -> Response:
    """Starlette's own 404/405 (a path no route matches, e.g. with a newline in it) in the API's JSON
    error shape for /v1; the static files keep their plain pages."""
    assert isinstance(exc, HTTPException)
    if not request.url.path.startswith("/v1/"):
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code, headers=exc.headers)
    code = grpc.StatusCode.NOT_FOUND if exc.status_code == 404 else grpc.StatusCode.INVALID_ARGUMENT
    return json_error(exc.status_code, error_body(code, f"{request.method} {request.url.path}: {exc.detail}"))


def create_app(
    settings: Settings, upstreams: Channels, state: GatewayState, **manager_options: Any
) -> Starlette:
    """The gateway ASGI app. `manager_options` tune the SubscriptionManager (tests shorten timers)."""
    runtime = GatewayRuntime(settings, upstreams, state)
    membership = Membership.via_peer(upstreams, ttl_seconds=10.0)

    async def authorize(principal: Principal, organization: str) -> None:
        with request_context.bound(request_id=request_context.request_id(), caller=principal.caller):
            await membership.require(organization)

    options: dict[str, Any] = {"linger_seconds": settings.gateway.upstream_linger_seconds} | manager_options
    manager = SubscriptionManager(_upstream_opener(upstreams), authorize, **options)
    openapi = document(runtime.routes)

    async def livez(_: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    async def readyz(_: Request) -> JSONResponse:
        ok = state.ready and not state.draining
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    async def openapi_json(_: Request) -> JSONResponse:
        return JSONResponse(openapi)

    routes = [
        Route("/livez", livez),
        Route("/readyz", readyz),
        Route("/v1/openapi.json", openapi_json),
        Route("/v1/auth/session", auth_routes.session),
        Route("/v1/auth/dev/signIn", auth_routes.dev_sign_in, methods=["POST"]),
        Route("/v1/auth/github/start", auth_routes.github_start),
        Route("/v1/auth/github/callback", auth_routes.github_callback),
        Route("/v1/auth/signOut", auth_routes.sign_out, methods=["POST"]),
        Route("/v1/auth/token", auth_routes.token, methods=["POST"]),
        Route("/v1/stream", stream_routes.open_stream),
        Route("/v1/streams/{stream}:{verb}", stream_routes.change_topics, methods=["POST"]),
        Route("/v1/webhooks/github", github_webhook, methods=["POST"]),
        Route("/v1/{path:path}", dispatch.handle, methods=["GET", "POST", "PATCH", "PUT", "DELETE"]),
        Mount("/", app=StaticFiles(directory=STATIC_DIR, html=True), name="static"),
    ]
    app = Starlette(
        routes=routes,
        middleware=[Middleware(EdgeMiddleware, runtime=runtime)],
        exception_handlers={HTTPException: _http_error},
    )
    app.state.settings = settings
    app.state.upstreams = upstreams
    app.state.gateway = state
    app.state.runtime = runtime
    app.state.manager = manager
    return app


class GatewayComponent:
    """The gateway as a drainable process component."""

    name = "gateway"

    def __init__(self, settings: Settings, *, port: int | None = None, **manager_options: Any) -> None:
        self.settings = settings
        self.state = GatewayState()
        self.upstreams = Channels(settings, "gateway")
        self.app = create_app(settings, self.upstreams, self.state, **manager_options)
        self.manager: SubscriptionManager = self.app.state.manager
        self.http = HttpServer(
            self.app,
            settings.bind_host,
            settings.gateway_port if port is None else port,
            name="gateway",
            http=H11Protocol,
            max_header_bytes=MAX_HEADER_BYTES,
        )
        self.port = self.http.port

    @property
    def ready(self) -> bool:
        return self.state.ready

    @ready.setter
    def ready(self, value: bool) -> None:
        self.state.ready = value

    async def start(self) -> int:
        await self.http.start()
        self.state.ready = True
        return self.http.port

    def snapshot(self) -> dict[str, Any]:
        return {
            "service": "gateway",
            "active_rpcs": self.state.active_requests - self.state.open_streams,
            "open_streams": self.state.open_streams,
            "upstream_streams": len(self.manager.upstreams),
            "active_request_paths": self.state.active_paths(),
        }

    async def stop_accepting(self) -> None:
        """Refuse new requests (503 `DRAINING`, readiness 503); open streams keep running."""
        self.state.draining = True

    async def begin_drain(self, deadline: float | None = None) -> None:
        """Refuse new requests; end every browser stream with `end {reason: "draining"}`."""
        self.state.draining = True
        self.manager.drain()

    async def wait_idle(self, timeout: float) -> dict[str, bool]:
        """The services' rule (README "Shutdown"): in-flight requests get `timeout` seconds (what is left
        until the drain's deadline); then they are cancelled (each answers 503 UNAVAILABLE `DRAINING`,
        its upstream call cancelled with it) and get `drain.unwind_seconds` to unwind. close() closes
        the upstream channels only after that."""
        deadline = time.monotonic() + timeout
        if await wait_event(self.state.idle, timeout):
            return {"requests_finished": True}
        cancelled = self.state.cancel_requests()
        log.warning("requests_cancelled_at_deadline", active_request_paths=cancelled)
        await self._unwind(deadline + self.settings.drain.unwind_seconds)
        return {"requests_finished": False}

    async def _unwind(self, until: float) -> None:
        if not await wait_event(self.state.idle, max(0.0, until - time.monotonic())):
            log.warning(
                "requests_still_unwinding",
                active_requests=self.state.active_requests,
                active_request_paths=self.state.active_paths(),
                waited_seconds=self.settings.drain.unwind_seconds,
            )

    async def close(self) -> None:
        if not self.state.idle.is_set():  # close() without wait_idle(): the deadline is now
            self.state.cancel_requests()
            await self._unwind(time.monotonic() + self.settings.drain.unwind_seconds)
        await self.manager.close()
        await self.http.stop()
        await self.upstreams.close()  # no request handler runs any more (or it outlived the unwind)
