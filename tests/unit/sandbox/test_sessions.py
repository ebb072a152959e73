"""Agent sessions over ACP with the project's fake agent: turns, the ordered event log, its Watch
stream, permission policy, and the git state a turn leaves behind."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from foundry.common.v1 import watch_pb2
from foundry.sandbox.v1 import agent_session_pb2 as session_pb2
from foundry.sandbox.v1 import git_state_pb2, session_event_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc
from google.protobuf.struct_pb2 import Struct

from tests.helpers.eventually import assert_eventually
from tests.unit.sandbox.conftest import prepared_sandbox

K = session_event_pb2


async def start_session(
    stub: pb_grpc.SandboxServiceAsyncStub,
    origin: Path,
    *,
    policy: session_pb2.PermissionPolicy.ValueType = session_pb2.PERMISSION_POLICY_UNSPECIFIED,
    session_id: str = "s1",
) -> str:
    sandbox = await prepared_sandbox(stub, origin)
    response = await stub.StartAgentSession(
        pb.StartAgentSessionRequest(parent=sandbox.name, session_id=session_id, permission_policy=policy)
    )
    assert response.agent_session.state == session_pb2.AGENT_SESSION_STATE_IDLE
    assert response.agent_session.acp_session_id.startswith("fake-")
    return str(response.agent_session.name)


async def watch_until_turn_ends(
    stub: pb_grpc.SandboxServiceAsyncStub, session: str, turns: int = 1, resume_token: str = ""
) -> tuple[list[watch_pb2.WatchEvent], list[K.SessionEvent]]:
    """Watch the session's events until `turns` TURN_COMPLETED events were seen; returns (raw watch
    events, the session events in stream order)."""
    raw: list[watch_pb2.WatchEvent] = []
    items: list[K.SessionEvent] = []
    call = stub.WatchSessionEvents(pb.WatchSessionEventsRequest(parent=session, resume_token=resume_token))

    async def read() -> None:
        async for response in call:
            raw.append(response.event)
            for item in response.event.items:
                event = K.SessionEvent()
                assert item.resource.Unpack(event)
                items.append(event)
            if sum(e.kind == K.SESSION_EVENT_KIND_TURN_COMPLETED for e in items) >= turns:
                call.cancel()
                return

    await asyncio.wait_for(read(), 20)
    return raw, items


async def prompt(
    stub: pb_grpc.SandboxServiceAsyncStub, session: str, turn_id: str, text: str
) -> session_pb2.Turn:
    response = await stub.PromptSession(
        pb.PromptSessionRequest(name=session, turn_id=turn_id, text=text, user="users/1001")
    )
    return response.turn


async def test_write_prompt_changes_the_file_and_logs_the_turn_in_order(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin)
    turn = await prompt(stub, session, "m1", "write hello.txt: hi")
    assert turn.state in (session_pb2.TURN_STATE_QUEUED, session_pb2.TURN_STATE_RUNNING)
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
    assert [e.seq for e in events] == list(range(1, 8))
    assert events[0].text == "write hello.txt: hi" and events[0].sender == K.SESSION_EVENT_SENDER_CLIENT
    assert events[5].text == "wrote hello.txt"
    assert events[-1].payload["stopReason"] == "end_turn"
    assert {e.turn for e in events} == {f"{session}/turns/m1"}
    checkout = Path(
        (
            await stub.GetSandbox(pb.GetSandboxRequest(name=session.split("/sessions/")[0]))
        ).sandbox.checkout.path
    )
    assert (checkout / "hello.txt").read_text() == "hi\n"

    ended = await stub.GetAgentSession(pb.GetAgentSessionRequest(name=session))
    assert ended.agent_session.state == session_pb2.AGENT_SESSION_STATE_IDLE
    assert ended.agent_session.last_event_seq == 7 and ended.agent_session.current_turn == ""
    listed = await stub.ListSessionEvents(pb.ListSessionEventsRequest(parent=session, after_seq=5))
    assert [e.seq for e in listed.session_events] == [6, 7]


async def test_git_state_after_a_turn_shows_the_added_file_and_revert_removes_it(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin)
    sandbox = session.split("/sessions/")[0]
    await prompt(stub, session, "m1", "write hello.txt: hi")
    await watch_until_turn_ends(stub, session)

    async def refreshed() -> git_state_pb2.GitState:
        state = (await stub.GetGitState(pb.GetGitStateRequest(name=f"{sandbox}/gitState"))).git_state
        assert [c.path for c in state.file_changes] == ["hello.txt"]
        return state

    state = await assert_eventually(refreshed)
    change = state.file_changes[0]
    assert (change.type, change.added_lines, change.removed_lines) == (
        git_state_pb2.FILE_CHANGE_TYPE_ADDED,
        1,
        0,
    )
    assert state.branch == "feat/new-work"
    assert "+hi" in state.diffs[0].unified_diff and state.diffs[0].path == "hello.txt"
    tree = {(e.path, e.type) for e in state.file_tree}
    assert ("hello.txt", git_state_pb2.FILE_TREE_ENTRY_TYPE_FILE) in tree
    assert ("src", git_state_pb2.FILE_TREE_ENTRY_TYPE_DIRECTORY) in tree

    reverted = (await stub.RevertFile(pb.RevertFileRequest(name=sandbox, path="hello.txt"))).git_state
    assert list(reverted.file_changes) == []
    checkout = Path((await stub.GetSandbox(pb.GetSandboxRequest(name=sandbox))).sandbox.checkout.path)
    assert not (checkout / "hello.txt").exists()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.RevertFile(pb.RevertFileRequest(name=sandbox, path="hello.txt"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_git_state_reports_a_modified_tracked_file_with_counts(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin)
    sandbox = session.split("/sessions/")[0]
    await prompt(stub, session, "m1", "$ printf 'changed\\n' > README.md && rm src/app.py")
    await watch_until_turn_ends(stub, session)
    state = (await stub.RefreshGitState(pb.RefreshGitStateRequest(name=f"{sandbox}/gitState"))).git_state
    changes = {c.path: (c.type, c.added_lines, c.removed_lines) for c in state.file_changes}
    assert changes == {
        "README.md": (git_state_pb2.FILE_CHANGE_TYPE_MODIFIED, 1, 2),
        "src/app.py": (git_state_pb2.FILE_CHANGE_TYPE_DELETED, 0, 1),
    }
    assert "src/app.py" not in {e.path for e in state.file_tree}
    reverted = (await stub.RevertFile(pb.RevertFileRequest(name=sandbox, path="README.md"))).git_state
    assert [c.path for c in reverted.file_changes] == ["src/app.py"]


async def test_git_state_diffs_against_the_base_so_a_commit_by_the_agent_stays_in_review(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    """The agent commits one change and leaves another uncommitted: both are in the diff against the
    merge-base with main, computed in the background after the turn; revert undoes the committed one."""
    session = await start_session(stub, origin)
    sandbox = session.split("/sessions/")[0]
    await prompt(
        stub,
        session,
        "m1",
        "$ printf 'committed line\\n' >> README.md && git add README.md"
        " && git -c user.name=agent -c user.email=agent@example.com commit -q -m 'agent commit'"
        " && printf 'uncommitted\\n' >> src/app.py && printf 'new\\n' > notes.txt",
    )
    await watch_until_turn_ends(stub, session)

    async def refreshed() -> git_state_pb2.GitState:
        state = (await stub.GetGitState(pb.GetGitStateRequest(name=f"{sandbox}/gitState"))).git_state
        assert [c.path for c in state.file_changes] == ["README.md", "notes.txt", "src/app.py"]
        return state

    state = await assert_eventually(refreshed)
    assert state.base_branch == "main" and state.base_commit and state.base_commit != state.head_commit
    changes = {c.path: (c.type, c.added_lines, c.removed_lines) for c in state.file_changes}
    assert changes == {
        "README.md": (git_state_pb2.FILE_CHANGE_TYPE_MODIFIED, 1, 0),
        "notes.txt": (git_state_pb2.FILE_CHANGE_TYPE_ADDED, 1, 0),
        "src/app.py": (git_state_pb2.FILE_CHANGE_TYPE_MODIFIED, 1, 0),
    }
    diffs = {d.path: d.unified_diff for d in state.diffs}
    assert "+committed line" in diffs["README.md"] and "+uncommitted" in diffs["src/app.py"]

    reverted = (await stub.RevertFile(pb.RevertFileRequest(name=sandbox, path="README.md"))).git_state
    assert [c.path for c in reverted.file_changes] == ["notes.txt", "src/app.py"]
    checkout = Path((await stub.GetSandbox(pb.GetSandboxRequest(name=sandbox))).sandbox.checkout.path)
    assert (checkout / "README.md").read_text() == "# demo\nline two\n"


async def test_git_state_of_an_existing_branch_is_measured_against_the_default_branch(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    """A task on a branch the remote already has names no base: its commits are still in review."""
    sandbox = await prepared_sandbox(stub, origin, branch="feature/existing")
    state = (await stub.RefreshGitState(pb.RefreshGitStateRequest(name=f"{sandbox.name}/gitState"))).git_state
    assert state.base_branch == "main" and state.base_commit != state.head_commit
    assert [(c.path, c.type) for c in state.file_changes] == [
        ("feature.txt", git_state_pb2.FILE_CHANGE_TYPE_ADDED)
    ]


async def test_watch_sends_the_log_as_snapshot_then_live_events(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin)
    await prompt(stub, session, "m1", "hello there")
    raw, first = await watch_until_turn_ends(stub, session)
    assert raw[0].kind in (watch_pb2.WATCH_EVENT_KIND_SNAPSHOT, watch_pb2.WATCH_EVENT_KIND_UPSERT)
    assert [e.kind for e in first] == [
        K.SESSION_EVENT_KIND_USER_MESSAGE,
        K.SESSION_EVENT_KIND_AGENT_THOUGHT_CHUNK,
        K.SESSION_EVENT_KIND_PLAN,
        K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK,
        K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK,
        K.SESSION_EVENT_KIND_TURN_COMPLETED,
    ]
    assert (
        "".join(e.text for e in first if e.kind == K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK)
        == "echo: hello there"
    )

    # A new watcher gets the whole log as the snapshot, then the next turn live.
    call = stub.WatchSessionEvents(pb.WatchSessionEventsRequest(parent=session))
    stream: AsyncIterator[Any] = call.__aiter__()
    snapshot: list[K.SessionEvent] = []
    while True:
        event = (await asyncio.wait_for(stream.__anext__(), 10)).event
        if event.kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT_END:
            break
        assert event.kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT
        for item in event.items:
            e = K.SessionEvent()
            item.resource.Unpack(e)
            snapshot.append(e)
    assert [e.seq for e in snapshot] == [1, 2, 3, 4, 5, 6]
    await prompt(stub, session, "m2", "second")
    live: list[K.SessionEvent] = []
    while not live or live[-1].kind != K.SESSION_EVENT_KIND_TURN_COMPLETED:
        event = (await asyncio.wait_for(stream.__anext__(), 10)).event
        if event.kind == watch_pb2.WATCH_EVENT_KIND_UPSERT:
            e = K.SessionEvent()
            event.items[0].resource.Unpack(e)
            live.append(e)
    call.cancel()
    assert [e.seq for e in live] == [7, 8, 9, 10, 11, 12]
    assert live[0].text == "second" and live[0].turn == f"{session}/turns/m2"


async def test_prompts_queue_and_run_one_at_a_time_in_order(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin)
    await prompt(stub, session, "a", "$ sleep 2; echo first")  # b is prompted while a runs
    await prompt(stub, session, "b", "$ echo second")
    repeated = await prompt(stub, session, "a", "ignored: same turn id")
    assert repeated.name == f"{session}/turns/a"
    _, events = await watch_until_turn_ends(stub, session, turns=2)
    queued = [e for e in events if e.kind == K.SESSION_EVENT_KIND_MESSAGE_QUEUED]
    assert [(e.turn.rsplit("/", 1)[1], e.text) for e in queued] == [("b", "$ echo second")]
    by_turn = [e.turn.rsplit("/", 1)[1] for e in events if e.kind != K.SESSION_EVENT_KIND_MESSAGE_QUEUED]
    first_b = by_turn.index("b")
    assert set(by_turn[:first_b]) == {"a"} and set(by_turn[first_b:]) == {"b"}, by_turn
    texts = "".join(e.text for e in events if e.kind == K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK)
    assert texts == "first\nsecond\n"
    assert sum(e.kind == K.SESSION_EVENT_KIND_USER_MESSAGE for e in events) == 2


async def test_reject_policy_refuses_the_edit(stub: pb_grpc.SandboxServiceAsyncStub, origin: Path) -> None:
    session = await start_session(stub, origin, policy=session_pb2.PERMISSION_POLICY_REJECT)
    await prompt(stub, session, "m1", "write hello.txt: hi")
    _, events = await watch_until_turn_ends(stub, session)
    response = next(e for e in events if e.kind == K.SESSION_EVENT_KIND_PERMISSION_RESPONSE)
    assert cast(Struct, response.payload["outcome"])["optionId"] == "reject"
    assert events[-2].text == "permission to write hello.txt was refused"
    sandbox = (await stub.GetSandbox(pb.GetSandboxRequest(name=session.split("/sessions/")[0]))).sandbox
    assert not (Path(sandbox.checkout.path) / "hello.txt").exists()


async def test_start_agent_session_is_idempotent_by_session_id(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin)
    again = await stub.StartAgentSession(
        pb.StartAgentSessionRequest(parent=session.split("/sessions/")[0], session_id="s1")
    )
    first = await stub.GetAgentSession(pb.GetAgentSessionRequest(name=session))
    assert again.agent_session.acp_session_id == first.agent_session.acp_session_id


async def test_an_agent_that_is_not_installed_fails_the_session_with_a_readable_message(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = await prepared_sandbox(stub, origin)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.StartAgentSession(
            pb.StartAgentSessionRequest(parent=sandbox.name, session_id="s1", agent="agents/codex")
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "codex-acp" in (caught.value.details() or "") and "not installed" in (caught.value.details() or "")
    session = await stub.GetAgentSession(pb.GetAgentSessionRequest(name=f"{sandbox.name}/sessions/s1"))
    assert session.agent_session.state == session_pb2.AGENT_SESSION_STATE_ERROR
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await prompt(stub, session.agent_session.name, "m1", "hello")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_unknown_agent_is_not_found(stub: pb_grpc.SandboxServiceAsyncStub, origin: Path) -> None:
    sandbox = await prepared_sandbox(stub, origin)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.StartAgent(pb.StartAgentRequest(parent=sandbox.name, agent="agents/nobody"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_cancel_turn_stops_a_running_command(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin)
    await prompt(stub, session, "long", "$ echo started; sleep 30")

    async def running() -> None:
        turn = (await stub.GetAgentSession(pb.GetAgentSessionRequest(name=session))).agent_session
        assert turn.current_turn == f"{session}/turns/long"
        events = await stub.ListSessionEvents(pb.ListSessionEventsRequest(parent=session))
        assert any(e.text == "started\n" for e in events.session_events)

    await assert_eventually(running)
    await stub.CancelTurn(pb.CancelTurnRequest(name=f"{session}/turns/long"))
    _, events = await watch_until_turn_ends(stub, session)
    assert events[-1].payload["stopReason"] == "cancelled"


async def test_messages_sent_during_a_turn_show_queued_in_order_and_a_cancelled_one_says_it_was_not_sent(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    session = await start_session(stub, origin)
    # An idle session runs a prompt at once: nothing is shown as queued.
    await prompt(stub, session, "hello", "hello")
    await watch_until_turn_ends(stub, session)
    await prompt(stub, session, "long", "$ echo started; sleep 30")

    async def running() -> None:
        events = await stub.ListSessionEvents(pb.ListSessionEventsRequest(parent=session))
        assert any(e.text == "started\n" for e in events.session_events)

    await assert_eventually(running)
    for turn_id, text in (("b", "$ echo second"), ("c", "third"), ("d", "fourth")):
        assert (await prompt(stub, session, turn_id, text)).state == session_pb2.TURN_STATE_QUEUED
    listed = (await stub.ListSessionEvents(pb.ListSessionEventsRequest(parent=session))).session_events
    queued = [e for e in listed if e.kind == K.SESSION_EVENT_KIND_MESSAGE_QUEUED]
    assert [(e.turn.rsplit("/", 1)[1], e.text, e.payload["ahead"]) for e in queued] == [
        ("b", "$ echo second", 1),
        ("c", "third", 2),
        ("d", "fourth", 3),
    ]
    assert all(e.payload["user"] == "users/1001" for e in queued)

    cancelled = (await stub.CancelTurn(pb.CancelTurnRequest(name=f"{session}/turns/c"))).turn
    assert cancelled.state == session_pb2.TURN_STATE_CANCELLED
    await stub.CancelTurn(pb.CancelTurnRequest(name=f"{session}/turns/long"))
    _, events = await watch_until_turn_ends(stub, session, turns=4)  # hello, long, b, d

    def of(turn_id: str, kind: int) -> list[str]:
        return [e.text for e in events if e.turn.endswith(f"/turns/{turn_id}") and e.kind == kind]

    assert of("c", K.SESSION_EVENT_KIND_NOTICE) == ["not sent to the agent: cancelled while queued"]
    assert not of("c", K.SESSION_EVENT_KIND_USER_MESSAGE) and not of("c", K.SESSION_EVENT_KIND_TURN_COMPLETED)
    users = [e.turn.rsplit("/", 1)[1] for e in events if e.kind == K.SESSION_EVENT_KIND_USER_MESSAGE]
    assert users == ["hello", "long", "b", "d"]  # delivered after the running turn, in order
    ends = [e.payload["stopReason"] for e in events if e.kind == K.SESSION_EVENT_KIND_TURN_COMPLETED]
    assert ends == ["end_turn", "cancelled", "end_turn", "end_turn"]
    assert of("b", K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK) == ["second\n"]


async def test_list_agents_pages_and_rejects_bad_page_arguments(
    stub: pb_grpc.SandboxServiceAsyncStub,
) -> None:
    """AIP-158 on ListAgents: every page at most page_size, the default agent first, tokens chain."""
    everything = await stub.ListAgents(pb.ListAgentsRequest())
    names = [a.name for a in everything.agents]
    assert names[0] == "agents/fake" and len(names) == 3 and everything.next_page_token == ""
    seen, token = [], ""
    while True:
        page = await stub.ListAgents(pb.ListAgentsRequest(page_size=2, page_token=token))
        assert len(page.agents) <= 2
        seen += [a.name for a in page.agents]
        token = page.next_page_token
        if not token:
            break
    assert seen == names
    for bad in (
        pb.ListAgentsRequest(page_size=-1),
        pb.ListAgentsRequest(page_token="not-a-token"),
        pb.ListAgentsRequest(page_token="99"),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await stub.ListAgents(bad)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error.value.details()
