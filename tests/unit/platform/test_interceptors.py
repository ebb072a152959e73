"""The server interceptor chain over a real grpc.aio server on loopback (generic byte handlers, so the
test needs no service contract)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from prometheus_client import REGISTRY

from services.platform import context as request_context
from services.platform.errors import InvalidArgument, NotFound, require
from services.platform.identity import Caller, sign
from services.platform.server.interceptors import CallerIdentity, DrainGuard, ErrorMapping, RequestContext

SECRET = "test-secret"
seen: dict[str, Any] = {}
release = asyncio.Event()


def _unary(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable[bytes, bytes]:
    """A unary method of `channel` without serializers: requests and responses are raw bytes."""
    return channel.unary_unary(method)


def _stream(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryStreamMultiCallable[bytes, bytes]:
    """A server-streaming method of `channel` without serializers: raw bytes."""
    return channel.unary_stream(method)


async def ok(request: bytes, context: Any) -> bytes:
    caller = request_context.caller()
    seen["caller"] = caller.subject if caller else None
    seen["request_id"] = request_context.request_id()
    return b"ok:" + request


async def not_found(request: bytes, context: Any) -> bytes:
    raise NotFound("organizations/acme/tasks/t1 not found", reason="TASK_NOT_FOUND", domain="foundry.task")


async def bad(request: bytes, context: Any) -> bytes:
    require(False, "prompt", "must not be empty")
    return b""


async def crash(request: bytes, context: Any) -> bytes:
    raise RuntimeError("boom")


async def peer_down(request: bytes, context: Any) -> bytes:
    """Calls a peer that is not there (nothing listens on port 1) and lets its error escape."""
    async with grpc.aio.insecure_channel("127.0.0.1:1") as channel:
        return bytes(await _unary(channel, "/test.v1.Peer/Get")(b"", timeout=2))


async def slow(request: bytes, context: Any) -> bytes:
    await release.wait()
    return b"slow-done"


async def stream(request: bytes, context: Any) -> AsyncIterator[bytes]:
    caller = request_context.caller()
    seen["stream"] = (caller.subject if caller else None, request_context.request_id())
    yield b"1"
    yield b"2"
    raise InvalidArgument("gone mid-stream", reason="STREAM_BROKEN")


def _handlers() -> grpc.GenericRpcHandler:
    unary: dict[str, grpc.RpcMethodHandler[bytes, bytes]] = {
        name: grpc.unary_unary_rpc_method_handler(fn)
        for name, fn in {
            "Ok": ok,
            "NotFound": not_found,
            "Bad": bad,
            "Crash": crash,
            "Slow": slow,
            "PeerDown": peer_down,
        }.items()
    }
    unary["Stream"] = grpc.unary_stream_rpc_method_handler(stream)
    return grpc.method_handlers_generic_handler("test.v1.TestService", unary)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, DrainGuard]]:
    guard = DrainGuard("test")
    srv = grpc.aio.server(
        interceptors=[ErrorMapping(), guard, RequestContext("test"), CallerIdentity(SECRET)],
        options=[("grpc.so_reuseport", 0)],
    )
    srv.add_generic_rpc_handlers((_handlers(),))
    port = srv.add_insecure_port("127.0.0.1:0")
    await srv.start()
    yield f"127.0.0.1:{port}", guard
    await srv.stop(None)


def _md(caller: Caller | None = Caller(subject="user/42", login="octo")) -> list[tuple[str, str]]:
    md = [("x-request-id", "req-123")]
    if caller:
        md.extend(sign(caller, SECRET))
    return md


async def _call(target: str, method: str, md: list[tuple[str, str]] | None = None) -> Any:
    async with grpc.aio.insecure_channel(target) as channel:
        return await _unary(channel, f"/test.v1.TestService/{method}")(b"x", metadata=md or _md(), timeout=5)


async def test_caller_and_request_id_reach_the_handler(server: tuple[str, DrainGuard]) -> None:
    assert await _call(server[0], "Ok") == b"ok:x"
    assert seen == {"caller": "user/42", "request_id": "req-123"}


async def test_missing_identity_is_unauthenticated(server: tuple[str, DrainGuard]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server[0], "Ok", md=[("x-request-id", "r")])
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_forged_identity_is_unauthenticated(server: tuple[str, DrainGuard]) -> None:
    md = [(k, v) for k, v in sign(Caller("user/1"), "other-secret")]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server[0], "Ok", md=md)
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "signature" in (err.value.details() or "")


async def test_domain_error_maps_to_status_with_error_info(server: tuple[str, DrainGuard]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server[0], "NotFound")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    status = rpc_status.from_call(err.value)
    info = error_details_pb2.ErrorInfo()
    assert status is not None and status.details[0].Unpack(info)
    assert (info.reason, info.domain) == ("TASK_NOT_FOUND", "foundry.task")


async def test_invalid_argument_names_the_field(server: tuple[str, DrainGuard]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server[0], "Bad")
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    status = rpc_status.from_call(err.value)
    assert status is not None
    bad_request = error_details_pb2.BadRequest()
    assert status.details[1].Unpack(bad_request)
    assert bad_request.field_violations[0].field == "prompt"


async def test_unknown_exception_is_internal_never_unknown(server: tuple[str, DrainGuard]) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server[0], "Crash")
    assert err.value.code() == grpc.StatusCode.INTERNAL
    assert "boom" not in (err.value.details() or "")  # internals are logged, not leaked


async def test_a_peer_that_is_down_is_unavailable_not_internal(server: tuple[str, DrainGuard]) -> None:
    """A peer's failure escaping a handler keeps its class: UNAVAILABLE stays retryable (AIP-194)."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(server[0], "PeerDown")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value.details()
    assert "peer call failed" in (err.value.details() or "")


async def test_stream_error_mid_way_keeps_messages_then_maps_status(server: tuple[str, DrainGuard]) -> None:
    got = []
    async with grpc.aio.insecure_channel(server[0]) as channel:
        call = _stream(channel, "/test.v1.TestService/Stream")(b"x", metadata=_md())
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for message in call:
                got.append(message)
    assert got == [b"1", b"2"]
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_streams_pass_identity_request_id_and_metrics_interceptors(
    server: tuple[str, DrainGuard],
) -> None:
    def handled() -> float:
        labels = {"service": "test", "method": "/test.v1.TestService/Stream", "code": "INVALID_ARGUMENT"}
        return REGISTRY.get_sample_value("foundry_grpc_server_handled_total", labels) or 0.0

    before = handled()
    async with grpc.aio.insecure_channel(server[0]) as channel:
        with pytest.raises(grpc.aio.AioRpcError):
            _ = [m async for m in _stream(channel, "/test.v1.TestService/Stream")(b"x", metadata=_md())]
        unsigned = _stream(channel, "/test.v1.TestService/Stream")(b"x", metadata=[("x-request-id", "r")])
        with pytest.raises(grpc.aio.AioRpcError) as err:
            _ = [m async for m in unsigned]
    assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert seen["stream"] == ("user/42", "req-123")
    assert handled() == before + 1


async def test_draining_refuses_new_rpcs_but_lets_in_flight_finish(server: tuple[str, DrainGuard]) -> None:
    target, guard = server
    release.clear()
    in_flight = asyncio.create_task(_call(target, "Slow"))
    while guard.active == 0:  # noqa: ASYNC110 - the guard exposes a count, not an event
        await asyncio.sleep(0.01)
    active = {"service": "test"}  # the exported gauge follows the guard's count
    assert REGISTRY.get_sample_value("foundry_grpc_server_active_rpcs", active) == 1
    guard.start_draining()
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _call(target, "Ok")
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert not await guard.wait_idle(0.05)
    release.set()
    assert await in_flight == b"slow-done"
    assert await guard.wait_idle(1.0)
    assert REGISTRY.get_sample_value("foundry_grpc_server_active_rpcs", active) == 0


def test_verified_callers_are_reused_until_their_token_expires(monkeypatch: pytest.MonkeyPatch) -> None:
    """CallerIdentity remembers a verified (token, signature) pair: the same headers again skip the
    HMAC, yet expiry is still checked on every call, and another signature for the same token (a
    forgery) is verified, and refused, on its own."""
    import time as time_module

    from services.platform.errors import Unauthenticated

    identity = CallerIdentity(SECRET)
    (_, token), (_, signature) = sign(Caller(subject="user/7", login="ann"), SECRET, ttl_seconds=60)
    first = identity.caller(token, signature)
    assert first.subject == "user/7"
    assert identity.caller(token, signature) is first  # reused
    with pytest.raises(Unauthenticated):
        identity.caller(token, "0" * len(signature))
    later = time_module.time() + 120
    monkeypatch.setattr(time_module, "time", lambda: later)
    with pytest.raises(Unauthenticated, match="expired"):
        identity.caller(token, signature)
