"""The gateway's edge middleware (pure ASGI, outermost): request id, in-flight accounting for the
drain, 414/431 for oversized URLs and header blocks, 503 once draining, CSRF checks, and the CSRF
cookie for browsers that have none yet."""

from __future__ import annotations

import asyncio
import contextlib
import re

import grpc
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.auth import csrf
from gateway.errors import GatewayError, error_response
from gateway.headers import MAX_HEADER_BYTES, header_bytes, headers_too_large
from gateway.runtime import GatewayRuntime
from services.platform import context as request_context
from services.platform.logging import get_logger

_SAFE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_ALWAYS_OPEN = ("/livez", "/readyz")
MAX_URL = 4096  # path + query, bytes: longer gets 414 before anything else looks at it
log = get_logger(__name__)


class EdgeMiddleware:
    """Binds `x-request-id` for the request (logs and upstream metadata carry it) and echoes it."""

    def __init__(self, app: ASGIApp, runtime: GatewayRuntime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        incoming = request.headers.get("x-request-id", "")
        rid = incoming if _SAFE_REQUEST_ID.match(incoming) else request_context.new_request_id()
        new_csrf = None if request.cookies.get(csrf.CSRF_COOKIE) else csrf.new_token()
        secure = "; Secure" if self.runtime.settings.gateway.cookie_secure else ""

        started = False

        async def send_with_headers(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                headers.append("x-request-id", rid)
                if new_csrf is not None:
                    headers.append(
                        "set-cookie", f"{csrf.CSRF_COOKIE}={new_csrf}; Path=/; SameSite=Lax{secure}"
                    )
            await send(message)

        state = self.runtime.state
        state.enter(f"{scope.get('method', '')} {scope['path']}")
        try:
            with request_context.bound(request_id=rid):
                app: ASGIApp = self.app
                try:
                    if (
                        len(scope.get("raw_path") or scope["path"]) + len(scope.get("query_string", b""))
                        > MAX_URL
                    ):
                        raise GatewayError(
                            grpc.StatusCode.INVALID_ARGUMENT,
                            f"URL longer than {MAX_URL} bytes",
                            reason="URL_TOO_LONG",
                            http_status=414,
                        )
                    if header_bytes(scope["headers"]) > MAX_HEADER_BYTES:
                        raise headers_too_large()
                    if state.draining and scope["path"].startswith("/v1/"):
                        raise GatewayError(
                            grpc.StatusCode.UNAVAILABLE, "gateway is draining; retry", reason="DRAINING"
                        )
                    csrf.check(request, self.runtime.settings.gateway.public_url)
                except GatewayError as exc:
                    app = error_response(exc)
                try:
                    await app(scope, receive, send_with_headers)
                except asyncio.CancelledError:
                    if not state.cancelled_by_drain():
                        raise
                    await _answer_cancelled(started, scope, receive, send_with_headers)
                except Exception:
                    # A bug still answers in the API's JSON error shape (never a plain-text 500).
                    log.exception("request_failed", path=scope["path"])
                    if started:
                        raise
                    await error_response(RuntimeError("internal"))(scope, receive, send_with_headers)
        finally:
            state.leave()


async def _answer_cancelled(started: bool, scope: Scope, receive: Receive, send: Send) -> None:
    """The drain cancelled this request at its grace deadline (its upstream call is cancelled with it):
    answer 503 UNAVAILABLE `DRAINING`, which clients retry on another replica, or end a response that
    had already started. Not re-raised: the cancel was ours, and uvicorn would turn it into a 500."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    with contextlib.suppress(Exception):  # the browser may be gone already
        if started:
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            error = GatewayError(
                grpc.StatusCode.UNAVAILABLE,
                "gateway drained before the request finished; retry",
                reason="DRAINING",
            )
            await error_response(error)(scope, receive, send)
