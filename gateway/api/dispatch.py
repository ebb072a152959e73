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
            response = await runtime.call(rpc, message, timeout=timeout)
    except (GatewayError, grpc.RpcError) as exc:
        return error_response(exc)
    except DecodeError as exc:
        return error_response(
            GatewayError(grpc.StatusCode.INVALID_ARGUMENT, str(exc), reason="BAD_REQUEST_BODY")
        )
    return Response(to_json(response), media_type="application/json")


def _too_large() -> GatewayError:
    return GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        f"body larger than {MAX_BODY_BYTES} bytes",
        reason="BODY_TOO_LARGE",
        http_status=413,
    )


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) as soon as it exceeds MAX_BODY_BYTES, declared or sent."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise _too_large()
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _too_large()
        chunks.append(chunk)
    return b"".join(chunks)


async def build_request(
    rpc: Rpc, request: Request, bindings: dict[str, str], principal: Principal | None
) -> Message:
    """The request message: body → query → path bindings → auth session (later sources win)."""
    message = rpc.request_class()
    if rpc.body:
        raw = await read_body(request)
        if raw.strip():
            try:
                values = json.loads(raw)
            except (ValueError, RecursionError) as exc:  # bad JSON, bad UTF-8, absurd nesting
                raise DecodeError(f"body is not JSON: {str(exc)[:200]}") from exc
            if not isinstance(values, dict):
                raise DecodeError("body must be a JSON object")
            try:
                merge_dict(values, message if rpc.body == "*" else getattr(message, rpc.body))
            except RecursionError as exc:
                raise DecodeError("body is nested too deeply") from exc
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
