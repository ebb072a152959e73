"""The admin HTTP port of every process (FOUNDRY_METRICS_PORT, default 9464):

GET  /metrics   Prometheus exposition
GET  /livez     200 while the process runs (also while draining)
GET  /readyz    200 when ready; 503 before start, from the moment the drain begins, and while the
                message broker connection is lost after start-up (`reason` says which)
POST /drain     begin the drain (the preStop hook: `python -m services.platform.prestop drain`)
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route


def admin_app(state: Any, request_drain: Callable[[], Awaitable[None]]) -> Starlette:
    """`state` exposes `.not_ready_reason() -> str` ("" when ready), `.draining: bool` and
    `.snapshot() -> dict` (active counts)."""

    async def livez(_: Request) -> JSONResponse:
        return JSONResponse({"status": "alive", "draining": state.draining})

    async def readyz(_: Request) -> JSONResponse:
        reason = state.not_ready_reason()
        body = {"ready": not reason, **({"reason": reason} if reason else {}), **state.snapshot()}
        return JSONResponse(body, status_code=503 if reason else 200)

    async def drain(_: Request) -> JSONResponse:
        await request_drain()
        return JSONResponse({"draining": True, **state.snapshot()}, status_code=202)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/livez", livez),
            Route("/readyz", readyz),
            Route("/drain", drain, methods=["POST"]),
            Route("/metrics", metrics),
        ]
    )
