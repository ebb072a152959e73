"""gRPC status → HTTP status and the JSON error body, in exactly one place.

Body (the proto3 JSON form of `google.rpc.Status`, plus the code's name)::

    {"code": 5, "status": "NOT_FOUND", "message": "...", "details": [{"@type": "...ErrorInfo", ...}]}

Once a stream has started, a status can no longer become an HTTP code; the stream code turns it into
an `error` or `end` frame instead (see gateway/stream/frames.py).
"""

from __future__ import annotations

from typing import Any

import grpc
from grpc_status import rpc_status
from starlette.responses import Response

from gateway.codec import dumps, to_dict

# google.rpc.Code → HTTP, as in google/rpc/code.proto and grpc-gateway's HTTPStatusFromCode.
HTTP_STATUS: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
    grpc.StatusCode.UNAUTHENTICATED: 401,
}


class GatewayError(Exception):
    """An error the gateway raises itself (bad JSON, no session, bad CSRF token); same body shape."""

    def __init__(
        self, code: grpc.StatusCode, message: str, *, reason: str = "", http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.reason = reason
        self.http_status = http_status  # when HTTP has a more precise status (413, 414) than the code


def error_body(
    code: grpc.StatusCode, message: str, details: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """The JSON error object for a status."""
    return {"code": code.value[0], "status": code.name, "message": message, "details": details or []}


def rpc_error_body(exc: grpc.RpcError) -> tuple[int, dict[str, Any]]:
    """HTTP status and error body of a failed upstream call (rich details kept when present)."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    message = (exc.details() if hasattr(exc, "details") else "") or code.name
    details: list[dict[str, Any]] = []
    try:
        status = rpc_status.from_call(exc)
    except Exception:
        status = None
    if status is not None:
        details = [to_dict(detail) for detail in status.details]
    return HTTP_STATUS.get(code, 500), error_body(code, message, details)


def gateway_error_body(exc: GatewayError) -> tuple[int, dict[str, Any]]:
    details = []
    if exc.reason:
        details.append(
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": exc.reason,
                "domain": "foundry.gateway",
                "metadata": {},
            }
        )
    status = exc.http_status or HTTP_STATUS.get(exc.code, 500)
    return status, error_body(exc.code, exc.message, details)


def json_error(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json", headers=headers)


def error_response(exc: BaseException) -> Response:
    """The HTTP response for an upstream RpcError or a GatewayError."""
    if isinstance(exc, GatewayError):
        return json_error(*gateway_error_body(exc))
    if isinstance(exc, grpc.RpcError):
        return json_error(*rpc_error_body(exc))
    return json_error(500, error_body(grpc.StatusCode.INTERNAL, "internal error"))
