"""Server interceptors, outermost first (grpc-interceptor `AsyncServerInterceptor`):

1. `ErrorMapping`   FoundryError → status + `google.rpc.ErrorInfo` (AIP-193); anything else → INTERNAL,
                    logged once with its traceback. Nothing reaches a client as UNKNOWN.
2. `DrainGuard`     counts in-flight RPCs; once draining, new RPCs get UNAVAILABLE before any service code.
3. `RequestContext` binds `x-request-id` (or a new one) and writes one access-log line + metrics per RPC.
4. `CallerIdentity` verifies the signed caller (services.platform.identity) and binds it.

Streaming handlers are async generators: each interceptor wraps the generator so it sees every message,
mid-stream errors and client cancellation (tooling.md §3 explains why `await method(...)` is wrong).

Per-call cost matters (reads are measured against a bare echo server, bench/read_throughput.py): each
interceptor wraps a method's handler once (`_Interceptor`), not on every call as grpc_interceptor
does, and the unary paths await the handler directly, with no context-manager coroutines.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_interceptor.server import AsyncServerInterceptor
from grpc_status import rpc_status

from services.platform import context as request_context
from services.platform.aio import wait_event
from services.platform.errors import FoundryError, Unauthenticated, Unavailable, from_rpc_error
from services.platform.identity import (
    CALLER_HEADER,
    SIGNATURE_HEADER,
    Caller,
    IdentityError,
    verify_until,
)
from services.platform.logging import get_logger
from services.platform.server import metrics

log = get_logger("foundry.grpc")

# RPCs served to anyone (probes, tooling): no identity needed, and they keep answering while draining.
OPEN_PREFIXES = (
    "/grpc.health.v1.Health/",
    "/grpc.reflection.v1alpha.ServerReflection/",
    "/grpc.reflection.v1.ServerReflection/",
)


def _is_open(method_name: str) -> bool:
    return method_name.startswith(OPEN_PREFIXES)


def _header(context: grpc.aio.ServicerContext[Any, Any], name: str) -> str | None:
    """The text value of invocation metadata `name` (a scan of a few pairs: no dict built per RPC)."""
    for key, value in context.invocation_metadata() or ():
        if key == name and isinstance(value, str):
            return value
    return None


async def _call(
    method: Callable[..., Any], request: Any, context: Any, around: Callable[[Callable[[], Any]], Any]
) -> Any:
    """Run `method` under the async context manager factory `around`, for unary and streaming handlers."""
    result = method(request, context)
    if hasattr(result, "__aiter__"):

        async def stream() -> AsyncIterator[Any]:
            async with around(lambda: None):
                async for message in result:
                    yield message

        return stream()
    async with around(lambda: None):
        return await result


class _Interceptor(AsyncServerInterceptor):
    """An `AsyncServerInterceptor` that wraps each method's handler once and reuses the wrapper while
    the next handler (the servicer's, or the next interceptor's cached wrapper) is the same object."""

    async def intercept_service(self, continuation: Any, handler_call_details: Any) -> Any:
        next_handler = await continuation(handler_call_details)
        if not next_handler:
            return next_handler
        method_name: str = handler_call_details.method
        cache: dict[str, tuple[Any, Any]] = self.__dict__.setdefault("_wrapped", {})
        hit = cache.get(method_name)
        if hit is not None and hit[0] is next_handler:
            return hit[1]
        if next_handler.unary_unary:
            inner = next_handler.unary_unary
            intercept = self.intercept

            async def unary(request: Any, context: Any) -> Any:
                return await intercept(inner, request, context, method_name)

            wrapped = grpc.unary_unary_rpc_method_handler(
                unary,
                request_deserializer=next_handler.request_deserializer,
                response_serializer=next_handler.response_serializer,
            )
        else:

            async def same(_details: Any) -> Any:
                return next_handler

            wrapped = await super().intercept_service(same, handler_call_details)  # type: ignore[no-untyped-call]
        cache[method_name] = (next_handler, wrapped)
        return wrapped


class ErrorMapping(_Interceptor):
    """Map exceptions to precise gRPC statuses with ErrorInfo details."""

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: Any, method_name: str
    ) -> Any:
        try:
            result = method(request, context)
        except Exception as exc:  # a sync failure while creating the call
            await self._abort(exc, context, method_name)
            raise
        if hasattr(result, "__aiter__"):
            return self._stream(result, context, method_name)
        try:
            return await result
        except Exception as exc:
            await self._abort(exc, context, method_name)
            raise

    async def _stream(self, result: AsyncIterator[Any], context: Any, method_name: str) -> AsyncIterator[Any]:
        try:
            async for message in result:
                yield message
        except Exception as exc:
            await self._abort(exc, context, method_name)
            raise

    async def _abort(self, exc: Exception, context: Any, method_name: str) -> None:
        if isinstance(exc, grpc.aio.AbortError) or _already_aborted(exc):
            return
        await context.abort_with_status(rpc_status.to_status(to_status_proto(exc, method_name)))


def _already_aborted(exc: Exception) -> bool:
    return type(exc).__name__ == "AbortError"


def to_status_proto(exc: BaseException, method_name: str = "") -> status_pb2.Status:
    """`google.rpc.Status` for `exc`: FoundryError keeps its code/reason, a peer's gRPC error its class
    (`from_rpc_error`: a peer that is down stays UNAVAILABLE, which callers may retry), a database
    that is unreachable or lost the connection UNAVAILABLE (`_transient_infrastructure`); others
    become INTERNAL, logged with their traceback."""
    if isinstance(exc, grpc.RpcError):
        exc = from_rpc_error(exc, context="peer call failed")
    if infrastructure := _transient_infrastructure(exc):  # logged without a traceback: not a bug here
        reason = infrastructure.reason
        log.warning("rpc_database_error", method=method_name, reason=reason, error=_summary(exc))
        exc = infrastructure
    if isinstance(exc, FoundryError):
        code, message = exc.code, exc.message
        info = error_details_pb2.ErrorInfo(reason=exc.reason, domain=exc.domain, metadata=exc.metadata)
        details = [info]
        if exc.field_violations:
            details.append(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(field=f, description=d)
                        for f, d in exc.field_violations.items()
                    ]
                )
            )
    else:
        log.error("rpc_internal_error", method=method_name, exc_info=exc)
        code, message = grpc.StatusCode.INTERNAL, f"internal error ({type(exc).__name__}); see server logs"
        details = [error_details_pb2.ErrorInfo(reason="INTERNAL", domain="foundry")]
    packed = []
    for detail in details:
        any_msg = any_pb2.Any()
        any_msg.Pack(detail)
        packed.append(any_msg)
    return status_pb2.Status(code=getattr(code_pb2, code.name), message=message, details=packed)


def _summary(exc: BaseException) -> str:
    """`Type: first line of the message` of `exc` and of each error it wraps or was caused by."""
    return " <- ".join(f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}" for e in _chain(exc))


def _mapped(exc: BaseException) -> BaseException:
    """`exc` as the FoundryError it is answered with, or itself when it is not one we recognise."""
    if isinstance(exc, grpc.RpcError):
        exc = from_rpc_error(exc, context="peer call failed")
    return _transient_infrastructure(exc) or exc


def _transient_infrastructure(exc: BaseException) -> FoundryError | None:
    """A database that cannot hand out a connection now (pool exhausted, too many clients, server
    down or restarting) or that lost the connection a call was using: UNAVAILABLE, which clients
    may retry (AIP-194), not INTERNAL.

    Up to the COMMIT nothing of the call was committed. A connection lost *during* COMMIT is
    ambiguous: the server may have committed before it went away. It is UNAVAILABLE all the same,
    the code gRPC clients expect for a lost connection; AIP-194 has them retry only idempotent
    calls (or ones made idempotent by a request id), so a retried non-idempotent write is the
    caller's choice, as it would be for a connection the network dropped."""
    from sqlalchemy import exc as sa_exc  # local: the interceptor module stays importable without a DB

    if isinstance(exc, sa_exc.TimeoutError):
        return Unavailable("database connection pool exhausted; retry", reason="DATABASE_BUSY")
    text = str(exc)
    if isinstance(exc, (sa_exc.OperationalError, sa_exc.InterfaceError, OSError)) and (
        "too many clients" in text or "Connection refused" in text or "connection is closed" in text
    ):
        return Unavailable("database unavailable; retry", reason="DATABASE_UNAVAILABLE")
    if type(exc).__name__ == "TooManyConnectionsError":
        return Unavailable("database has too many clients; retry", reason="DATABASE_BUSY")
    if any(_lost_database(e) for e in _chain(exc)):
        return Unavailable("database unavailable; retry", reason="DATABASE_UNAVAILABLE")
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    """`exc`, the driver error SQLAlchemy wraps (`orig`) and their causes, each once."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or any(e is s for s in seen) or len(seen) > 10:
            continue
        seen.append(e)
        todo += [getattr(e, "orig", None), e.__cause__, e.__context__]
    return seen


# asyncpg's message when a query starts while the protocol is still in PROTOCOL_ERROR_CONSUME (2):
# the server sent an ErrorResponse outside any operation, which it does only with a FATAL error
# before closing the connection (fast shutdown, pg_terminate_backend, idle timeouts), and the
# connection's end has not been read yet.
_UNSOLICITED_FATAL = "another operation (2) is in progress"


def _lost_database(exc: BaseException) -> bool:
    """A server that is down, restarting or shutting down, or a connection it dropped:

    - SQLSTATE class 08 (connection exception, e.g. asyncpg's ConnectionDoesNotExistError "connection
      was closed in the middle of operation") or 57P (57P01 admin shutdown, 57P02 crash shutdown,
      57P03 cannot connect now: "the database system is starting up" / "is shutting down");
    - an error SQLAlchemy's dialect classified as a disconnect (`connection_invalidated`), or the
      driver's "connection is closed";
    - a refused TCP connect, or any socket error or timeout raised inside the driver (asyncpg), which
      is how a crash or restart surfaces while connecting: ConnectionResetError "Connection reset by
      peer" / "Connect call failed", ConnectionError "unexpected connection_lost() call",
      BrokenPipeError, TimeoutError of the connect timeout. The same errors raised by other code
      (not through asyncpg) are not the database's;
    - asyncpg's InternalClientError "cannot switch to state …; another operation (2) is in progress"
      (see `_UNSOLICITED_FATAL`); its other InternalClientErrors (codec, protocol bugs) are not."""
    state = getattr(exc, "sqlstate", None)
    if isinstance(state, str) and (state.startswith("08") or state.startswith("57P")):
        return True
    if getattr(exc, "connection_invalidated", False) is True:
        return True
    name = type(exc).__name__
    if name in ("ConnectionDoesNotExistError", "CannotConnectNowError"):
        return True
    if name == "InterfaceError" and "connection is closed" in str(exc):
        return True
    if name == "InternalClientError" and _UNSOLICITED_FATAL in str(exc):
        return True
    return isinstance(exc, ConnectionRefusedError) or (isinstance(exc, OSError) and _raised_in_driver(exc))


def _raised_in_driver(exc: BaseException) -> bool:
    """Whether `exc` was raised inside asyncpg (a frame of its traceback is asyncpg's)."""
    tb = exc.__traceback__
    while tb is not None:
        if str(tb.tb_frame.f_globals.get("__name__", "")).startswith("asyncpg."):
            return True
        tb = tb.tb_next
    return False


class DrainGuard(_Interceptor):
    """Tracks in-flight RPCs and refuses new ones (UNAVAILABLE) once `start_draining()` was called."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.draining = False
        self.active = 0
        self.open_streams = 0
        self._methods: Counter[str] = Counter()
        self._idle = asyncio.Event()
        self._idle.set()
        # Read at scrape time rather than inc()/dec() per RPC (each takes the metric's lock). The
        # newest guard of a service (a restarted host's) is the one exported.
        _child(metrics.ACTIVE_RPCS, service).set_function(lambda: self.active)

    def start_draining(self) -> None:
        self.draining = True

    def active_methods(self) -> dict[str, int]:
        """In-flight RPCs per full method name (`/pkg.Service/Method`), for drain logs."""
        return {method: n for method, n in sorted(self._methods.items()) if n}

    async def wait_idle(self, timeout: float) -> bool:
        """Wait until no RPC is in flight; False if `timeout` seconds passed first."""
        return await wait_event(self._idle, timeout)

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: Any, method_name: str
    ) -> Any:
        if _is_open(method_name):
            return await _passthrough(method, request, context)
        if self.draining:
            raise Unavailable(f"{self.service} is draining; retry on another replica", reason="DRAINING")
        result = method(request, context)
        if hasattr(result, "__aiter__"):
            return await _call(lambda *_: result, request, context, lambda _: _Active(self, method_name))
        self._enter(method_name)
        try:
            return await result
        finally:
            self._exit(method_name)

    def _enter(self, method_name: str) -> None:
        self.active += 1
        self._methods[method_name] += 1
        self._idle.clear()

    def _exit(self, method_name: str) -> None:
        self.active -= 1
        self._methods[method_name] -= 1
        if not self._methods[method_name]:
            del self._methods[method_name]
        if self.active == 0:
            self._idle.set()


class _Active:
    """One in-flight RPC of a `DrainGuard` (a module-level class: no class built per call)."""

    __slots__ = ("guard", "method")

    def __init__(self, guard: DrainGuard, method_name: str) -> None:
        self.guard, self.method = guard, method_name

    async def __aenter__(self) -> None:
        self.guard._enter(self.method)

    async def __aexit__(self, *exc: object) -> None:
        self.guard._exit(self.method)


_CHILDREN: dict[tuple[int, tuple[str, ...]], Any] = {}


def _child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once per label set (prometheus_client's `labels()` takes a
    lock and builds its key on every call); the same child, so the exported series are unchanged."""
    key = (id(metric), labels)
    child = _CHILDREN.get(key)
    if child is None:
        child = _CHILDREN[key] = metric.labels(*labels)
    return child


async def _passthrough(method: Callable[..., Any], request: Any, context: Any) -> Any:
    result = method(request, context)
    return result if hasattr(result, "__aiter__") else await result


class RequestContext(_Interceptor):
    """Bind the correlation id; log one line and record metrics per RPC (duration, status code)."""

    def __init__(self, service: str) -> None:
        self.service = service

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: Any, method_name: str
    ) -> Any:
        if _is_open(method_name):
            return await _passthrough(method, request, context)
        rid = _header(context, request_context.REQUEST_ID_HEADER) or request_context.new_request_id()
        request_context.bind_task(request_id=rid)
        result = method(request, context)
        if hasattr(result, "__aiter__"):
            observed = _Observed(self.service, method_name, context)
            return await _call(lambda *_: result, request, context, lambda _: observed)
        start = time.perf_counter()
        try:
            response = await result
        except BaseException as exc:
            _observe(self.service, method_name, context, start, exc)
            raise
        _observe(self.service, method_name, context, start, None)
        return response


class _Observed:
    def __init__(self, service: str, method_name: str, context: Any) -> None:
        self.service, self.method, self.context = service, method_name, context
        self.start = 0.0

    async def __aenter__(self) -> None:
        self.start = time.perf_counter()

    async def __aexit__(self, exc_type: Any, exc: BaseException | None, _tb: Any) -> None:
        _observe(self.service, self.method, self.context, self.start, exc)


def _observe(service: str, method: str, context: Any, start: float, exc: BaseException | None) -> None:
    """Count, time and log one finished RPC (`exc`: what it raised, None when it returned)."""
    elapsed = time.perf_counter() - start
    if exc is None:
        code = "OK"
    elif isinstance(exc, (asyncio.CancelledError, GeneratorExit)):  # client went away mid-stream
        code = "CANCELLED"
    elif _already_aborted(exc if isinstance(exc, Exception) else Exception()):
        code = context.code().name if context.code() else "ABORTED"
    else:  # the code ErrorMapping (outermost) will answer with, not INTERNAL for what it maps
        mapped = _mapped(exc)
        code = mapped.code.name if isinstance(mapped, FoundryError) else "INTERNAL"
    _child(metrics.HANDLED, service, method, code).inc()
    _child(metrics.LATENCY, service, method).observe(elapsed)
    log.info("rpc", service=service, method=method, code=code, duration_ms=round(elapsed * 1000, 2))


class CallerIdentity(_Interceptor):
    """Require a valid signed caller identity on every service RPC and bind it to the request context.

    A verified (token, signature) pair is remembered until the token expires (at most `MAX_VERIFIED`
    pairs), so a client's repeated calls skip the HMAC and JSON decoding; expiry is still checked on
    every call, and a different signature is a different key."""

    MAX_VERIFIED = 4096

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self._verified: dict[tuple[str, str], tuple[Caller, float]] = {}

    def caller(self, token: str | None, signature: str | None) -> Caller:
        """The verified caller of these headers; raises Unauthenticated."""
        key = (token or "", signature or "")
        hit = self._verified.get(key)
        if hit is not None and hit[1] >= time.time():
            return hit[0]
        try:
            caller, expires = verify_until(token, signature, self.secret)
        except IdentityError as exc:
            raise Unauthenticated(str(exc), reason="CALLER_IDENTITY_INVALID") from exc
        if len(self._verified) >= self.MAX_VERIFIED:
            self._verified.clear()
        self._verified[key] = (caller, expires)
        return caller

    async def intercept(
        self, method: Callable[..., Any], request: Any, context: Any, method_name: str
    ) -> Any:
        if _is_open(method_name):
            return await _passthrough(method, request, context)
        caller = self.caller(_header(context, CALLER_HEADER), _header(context, SIGNATURE_HEADER))
        request_context.bind_task(caller=caller)
        result = method(request, context)
        return result if hasattr(result, "__aiter__") else await result
