"""The one generic handler behind every route in `gateway.api.table.ROUTES`.

match (method, path) → build the request (body, query, path bindings, auth session) → call the RPC
with the caller's signed identity and the capped deadline → proto3 JSON response, or the mapped error.
"""

from __future__ import annotations

import json

import grpc
from google.protobuf.message import Message
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.table import Rpc, find
from gateway.auth.sessions import Principal
from gateway.codec import DecodeError, merge_dict, query_to_dict, set_path, to_json
from gateway.errors import GatewayError, error_response
from gateway.runtime import GatewayRuntime
from services.platform import context as request_context

MAX_BODY_BYTES = 4 * 1024 * 1024


async def handle(request: Request) -> Response:
    """ASGI endpoint for `/v1/{path}` routes of the table."""
    runtime: GatewayRuntime = request.app.state.runtime
    rpc, bindings, path_known = find(runtime.routes, request.method, request.url.path)
    try:
        if rpc is None:
            if path_known:
                raise GatewayError(
                    grpc.StatusCode.UNIMPLEMENTED,
                    f"{request.method} is not allowed here",
                    reason="METHOD_NOT_ALLOWED",
                )
            raise GatewayError(grpc.StatusCode.NOT_FOUND, f"no route {request.url.path}", reason="NO_ROUTE")
        principal = await runtime.principal(request)
        if principal is None and not rpc.public:
            raise GatewayError(grpc.StatusCode.UNAUTHENTICATED, "sign in first", reason="SIGNED_OUT")
        message = await build_request(rpc, request, bindings, principal)
        timeout = runtime.deadline(request)
        with request_context.bound(
            request_id=request_context.request_id(), caller=principal.caller if principal else None
        ):
            response = await runtime.call_for(rpc)(message, timeout=timeout)
    except (GatewayError, grpc.RpcError) as exc:
        return error_response(exc)
    except DecodeError as exc:
        return error_response(
            GatewayError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), reason="BAD_REQUEST_BODY")
        )
    return Response(to_json(response), media_type="application/json")


async def build_request(
    rpc: Rpc, request: Request, bindings: dict[str, str], principal: Principal | None
) -> Message:
    """The request message: body → query → path bindings → auth session (later sources win)."""
    message = rpc.request_class()
    if rpc.body:
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise GatewayError(grpc.StatusCode.RESOURCE_EXHAUSTED, "body too large", reason="BODY_TOO_LARGE")
        if raw.strip():
            try:
                values = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DecodeError(f"body is not JSON: {exc}") from exc
            if not isinstance(values, dict):
                raise DecodeError("body must be a JSON object")
            merge_dict(values, message if rpc.body == "*" else getattr(message, rpc.body))
    query: dict[str, list[str]] = {}
    for key, value in request.query_params.multi_items():
        query.setdefault(key, []).append(value)
    if query:
        merge_dict(query_to_dict(rpc.request_class.DESCRIPTOR, query), message)
    for path, value in bindings.items():
        set_path(message, path, value)
    if rpc.session_field:
        set_path(message, rpc.session_field, principal.auth_session if principal else "")
    return message
