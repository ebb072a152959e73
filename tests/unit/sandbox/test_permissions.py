"""Permission requests asked of the user (policy ASK), with the fake agent's `write <path>: <text>`:
the request waits durably in the transcript until AnswerPermissionRequest answers it (allow once →
the file is written; reject → refused), wrong answers change nothing, a cancel answers it
`cancelled`, and a request cut off by a service restart can still be answered (not delivered)."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.sandbox.v1 import agent_session_pb2 as session_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc
from foundry.sandbox.v1 import session_event_pb2 as K
from google.protobuf.json_format import MessageToDict

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.helpers.mesh import running
from tests.unit.sandbox.conftest import sandbox_stub
from tests.unit.sandbox.test_sessions import prompt, start_session, watch_until_turn_ends

ASK = session_pb2.PERMISSION_POLICY_ASK


async def _events(stub: pb_grpc.SandboxServiceAsyncStub, session: str) -> list[K.SessionEvent]:
    return list((await stub.ListSessionEvents(pb.ListSessionEventsRequest(parent=session))).session_events)


async def _asked(stub: pb_grpc.SandboxServiceAsyncStub, session: str, count: int = 1) -> K.SessionEvent:
    """The session's `count`-th PERMISSION_REQUEST event once it is in the log."""

    async def asked() -> K.SessionEvent:
        requests = [
            e for e in await _events(stub, session) if e.kind == K.SESSION_EVENT_KIND_PERMISSION_REQUEST
        ]
        assert len(requests) >= count
        return requests[count - 1]

    return await assert_eventually(asked, timeout=15, interval=0.05)


async def _answer(
    stub: pb_grpc.SandboxServiceAsyncStub,
    session: str,
    request_id: str,
    outcome: session_pb2.PermissionOutcome.ValueType,
) -> session_pb2.PermissionRequest:
    response = await stub.AnswerPermissionRequest(
        pb.AnswerPermissionRequestRequest(
            name=f"{session}/permissionRequests/{request_id}", outcome=outcome, user="users/1001"
        )
    )
    return response.permission_request


async def _checkout_path(stub: pb_grpc.SandboxServiceAsyncStub, session: str) -> Path:
    sandbox = session.split("/sessions/")[0]
    return Path((await stub.GetSandbox(pb.GetSandboxRequest(name=sandbox))).sandbox.checkout.path)


async def test_ask_waits_for_the_answer_then_allow_once_writes_the_file(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin, policy=ASK)
    await prompt(stub, session, "m1", "write hello.txt: hi")
    asked = await _asked(stub, session)
    request_id = str(asked.payload["requestId"])
    assert asked.text == "write hello.txt" and asked.turn == f"{session}/turns/m1"
    options = MessageToDict(asked.payload)["options"]
    assert [o["kind"] for o in options] == ["allow_once", "reject_once"]
    # Nothing happens while it waits: the turn runs, no response, no file.
    agent_session = (await stub.GetAgentSession(pb.GetAgentSessionRequest(name=session))).agent_session
    assert agent_session.current_turn == f"{session}/turns/m1"
    assert agent_session.permission_policy == ASK
    assert not [e for e in await _events(stub, session) if e.kind == K.SESSION_EVENT_KIND_PERMISSION_RESPONSE]
    assert not (await _checkout_path(stub, session) / "hello.txt").exists()

    answered = await _answer(stub, session, request_id, session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE)
    assert answered.state == session_pb2.PERMISSION_REQUEST_STATE_ANSWERED
    assert answered.outcome == session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE
    assert answered.option_id == "allow" and answered.delivered and answered.answered_by == "users/1001"
    assert answered.title == "write hello.txt" and answered.turn == f"{session}/turns/m1"

    _, events = await watch_until_turn_ends(stub, session)
    kinds = [e.kind for e in events]
    assert kinds == [
        K.SESSION_EVENT_KIND_USER_MESSAGE,
        K.SESSION_EVENT_KIND_TOOL_CALL,
        K.SESSION_EVENT_KIND_PERMISSION_REQUEST,
        K.SESSION_EVENT_KIND_PERMISSION_RESPONSE,
        K.SESSION_EVENT_KIND_TOOL_CALL_UPDATE,
        K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK,
        K.SESSION_EVENT_KIND_TURN_COMPLETED,
    ]
    response = events[3]
    assert response.payload["requestId"] == request_id and response.payload["answer"] == "allow_once"
    assert response.payload["user"] == "users/1001" and response.payload["delivered"] is True
    assert events[5].text == "wrote hello.txt"
    assert (await _checkout_path(stub, session) / "hello.txt").read_text() == "hi\n"


async def test_reject_refuses_and_wrong_answers_change_nothing(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin, policy=ASK)
    await prompt(stub, session, "m1", "write no.txt: never")
    request_id = str((await _asked(stub, session)).payload["requestId"])
    before = await _events(stub, session)

    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await _answer(stub, session, "nosuchrequest", session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE)
    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
    for bad in (session_pb2.PERMISSION_OUTCOME_UNSPECIFIED, session_pb2.PERMISSION_OUTCOME_CANCELLED, 99):
        with pytest.raises(grpc.aio.AioRpcError) as invalid:
            await _answer(stub, session, request_id, bad)  # type: ignore[arg-type]
        assert invalid.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await _events(stub, session) == before  # nothing recorded, the agent still waits

    rejected = await _answer(stub, session, request_id, session_pb2.PERMISSION_OUTCOME_REJECT)
    assert rejected.option_id == "reject" and rejected.state == session_pb2.PERMISSION_REQUEST_STATE_ANSWERED
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await _answer(stub, session, request_id, session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE)
    assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "already answered" in str(twice.value.details())

    _, events = await watch_until_turn_ends(stub, session)
    texts = [e.text for e in events if e.kind == K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK]
    assert texts == ["permission to write no.txt was refused"]
    assert len([e for e in events if e.kind == K.SESSION_EVENT_KIND_PERMISSION_RESPONSE]) == 1
    assert not (await _checkout_path(stub, session) / "no.txt").exists()


async def test_cancelling_the_turn_answers_its_request_cancelled(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin, policy=ASK)
    await prompt(stub, session, "m1", "write never.txt: no")
    request_id = str((await _asked(stub, session)).payload["requestId"])
    await stub.CancelTurn(pb.CancelTurnRequest(name=f"{session}/turns/m1"))

    _, events = await watch_until_turn_ends(stub, session)
    response = next(e for e in events if e.kind == K.SESSION_EVENT_KIND_PERMISSION_RESPONSE)
    assert response.payload["requestId"] == request_id and response.payload["answer"] == "cancelled"
    assert response.payload["outcome"] == {"outcome": "cancelled"}
    assert events[-1].payload["stopReason"] == "cancelled"
    with pytest.raises(grpc.aio.AioRpcError) as late:
        await _answer(stub, session, request_id, session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE)
    assert late.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not (await _checkout_path(stub, session) / "never.txt").exists()


async def test_a_request_cut_off_by_a_restart_stays_pending_and_is_answered_not_delivered(
    settings_factory: Callable[..., Settings], origin: Path
) -> None:
    settings = settings_factory()
    async with running(settings, ["sandbox"]) as first, sandbox_stub(first) as stub:
        session = await start_session(stub, origin, policy=ASK)
        await prompt(stub, session, "m1", "write late.txt: later")
        request_id = str((await _asked(stub, session)).payload["requestId"])
    async with running(settings, ["sandbox"]) as second, sandbox_stub(second) as stub:

        async def interrupted() -> None:
            ends = [e for e in await _events(stub, session) if e.kind == K.SESSION_EVENT_KIND_TURN_COMPLETED]
            assert [e.payload["state"] for e in ends] == ["interrupted"]

        await assert_eventually(interrupted, timeout=20)
        answered = await _answer(stub, session, request_id, session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE)
        assert answered.state == session_pb2.PERMISSION_REQUEST_STATE_ANSWERED and not answered.delivered
        response = [
            e for e in await _events(stub, session) if e.kind == K.SESSION_EVENT_KIND_PERMISSION_RESPONSE
        ]
        assert [(r.payload["requestId"], r.payload["delivered"]) for r in response] == [(request_id, False)]
        with pytest.raises(grpc.aio.AioRpcError) as twice:
            await _answer(stub, session, request_id, session_pb2.PERMISSION_OUTCOME_REJECT)
        assert twice.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_request_whose_agent_died_is_answered_not_delivered(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin, policy=ASK)
    sandbox = session.split("/sessions/")[0]
    await prompt(stub, session, "m1", "write gone.txt: never")
    request_id = str((await _asked(stub, session)).payload["requestId"])
    agent = (await stub.StartAgent(pb.StartAgentRequest(parent=sandbox))).agent_connection
    os.killpg(agent.pid, signal.SIGKILL)
    _, events = await watch_until_turn_ends(stub, session)
    assert "killed by signal 9" in next(e.text for e in events if e.kind == K.SESSION_EVENT_KIND_ERROR)

    answered = await _answer(stub, session, request_id, session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE)
    assert answered.state == session_pb2.PERMISSION_REQUEST_STATE_ANSWERED and not answered.delivered
    assert not (await _checkout_path(stub, session) / "gone.txt").exists()
