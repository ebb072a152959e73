"""gRPC under locust: a gevent-friendly sync channel whose unary calls fire locust request events
and carry a signed caller identity (the pattern of locust's examples/grpc/grpc_user.py).

`grpc.experimental.gevent.init_gevent()` must run before the first channel exists; the locustfile
does it at import. Streams are not timed here: a stream user drains its own call and reports it
(calling `.result()` on a streaming call deadlocks under gevent).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import grpc
from grpc_interceptor import ClientCallDetails, ClientInterceptor
from locust.env import Environment

from services.platform.identity import Caller, sign

_REFRESH_SECONDS = 60.0  # signed identities live 300 s; re-sign well before


class SignedCaller(ClientInterceptor):
    """Adds the HMAC-signed `x-foundry-caller` metadata of `caller` to every call."""

    def __init__(self, caller: Caller, secret: str) -> None:
        self.caller, self.secret = caller, secret
        self._metadata: tuple[tuple[str, str], ...] = ()
        self._signed_at = 0.0

    def metadata(self) -> tuple[tuple[str, str], ...]:
        now = time.monotonic()
        if now - self._signed_at > _REFRESH_SECONDS:
            self._metadata, self._signed_at = sign(self.caller, self.secret), now
        return self._metadata

    def intercept(self, method: Callable[..., Any], request_or_iterator: Any, call_details: Any) -> Any:
        details = ClientCallDetails(
            method=call_details.method,
            timeout=call_details.timeout,
            metadata=[*(call_details.metadata or ()), *self.metadata()],
            credentials=call_details.credentials,
            wait_for_ready=call_details.wait_for_ready,
            compression=call_details.compression,
        )
        return method(request_or_iterator, details)


class LocustInterceptor(ClientInterceptor):
    """Fires one locust `request` event per unary call: type `grpc`, name `Service/Method`."""

    def __init__(self, environment: Environment) -> None:
        self.environment = environment

    def intercept(self, method: Callable[..., Any], request_or_iterator: Any, call_details: Any) -> Any:
        began = time.perf_counter()
        response = method(request_or_iterator, call_details)
        if hasattr(response, "__next__"):  # a server stream: its user reports it
            return response
        exception: BaseException | None = None
        length = 0
        try:
            length = response.result().ByteSize()
        except grpc.RpcError as exc:
            exception = exc
        self.environment.events.request.fire(  # type: ignore[no-untyped-call]
            request_type="grpc",
            name=call_details.method.rsplit(".", 1)[-1],  # "TaskService/GetTask"
            response_time=(time.perf_counter() - began) * 1000,
            response_length=length,
            response=response,
            context=None,
            exception=exception,
        )
        return response


def open_channel(target: str, environment: Environment, caller: Caller, secret: str) -> grpc.Channel:
    """A sync channel to `target` that signs as `caller` and reports unary calls to locust."""
    channel = grpc.insecure_channel(target)
    return grpc.intercept_channel(channel, SignedCaller(caller, secret), LocustInterceptor(environment))
