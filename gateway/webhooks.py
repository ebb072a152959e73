"""`POST /v1/webhooks/github`: verify `X-Hub-Signature-256` over the raw body, then hand the delivery
to github_data (`RecordWebhookDelivery`, which stores it and enqueues its handling) and answer 202.

A missing or wrong signature (or no configured secret) is 401 and nothing is recorded. Handling is
asynchronous: GitHub's 10 s delivery timeout never waits on a sync.
"""

from __future__ import annotations

import grpc
from foundry.github_data.v1 import github_data_service_pb2 as gd_pb2
from google.protobuf import timestamp_pb2
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.errors import GatewayError, error_response
from gateway.runtime import GatewayRuntime
from services.platform import clock
from services.platform import context as request_context
from services.platform.webhook_signature import HEADER, verify_signature

MAX_PAYLOAD_BYTES = 25 * 1024 * 1024  # GitHub caps payloads at 25 MB


async def github_webhook(request: Request) -> Response:
    runtime: GatewayRuntime = request.app.state.runtime
    secret = runtime.settings.github.webhook_secret
    body = await request.body()
    try:
        if len(body) > MAX_PAYLOAD_BYTES:
            raise GatewayError(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "payload too large", reason="PAYLOAD_TOO_LARGE"
            )
        if not verify_signature(
            secret.get_secret_value() if secret else "", body, request.headers.get(HEADER)
        ):
            raise GatewayError(
                grpc.StatusCode.UNAUTHENTICATED,
                f"missing or wrong {HEADER}",
                reason="WEBHOOK_SIGNATURE_INVALID",
            )
        delivery_id = request.headers.get("x-github-delivery", "")
        event = request.headers.get("x-github-event", "")
        if not delivery_id or not event:
            raise GatewayError(
                grpc.StatusCode.INVALID_ARGUMENT,
                "X-GitHub-Delivery and X-GitHub-Event are required",
                reason="WEBHOOK_HEADERS_MISSING",
            )
        received = timestamp_pb2.Timestamp()
        received.FromDatetime(clock.now())
        call = runtime.unary("github_data", "RecordWebhookDelivery", gd_pb2.RecordWebhookDeliveryResponse)
        with request_context.bound(request_id=request_context.request_id(), caller=None):
            response = await call(
                gd_pb2.RecordWebhookDeliveryRequest(
                    delivery_id=delivery_id,
                    event=event,
                    payload=body,
                    receive_time=received,
                ),
                timeout=runtime.deadline(request),
            )
    except (GatewayError, grpc.RpcError) as exc:
        return error_response(exc)
    return JSONResponse({"deliveryId": delivery_id, "duplicate": response.duplicate}, status_code=202)
