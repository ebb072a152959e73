"""The real `claude-agent-acp` (from npm, `make agents`) driven by the sandbox service, offline, against
a local stand-in of the Anthropic Messages API that speaks its SSE wire format
(tests/helpers/anthropic_server.py). The stand-in is the test double (a service we cannot reach);
the agent binary is the real thing.

Scripted turn: Read README.md, run a Bash command, Write NOTES.md (Bash and Write make the agent ask
`session/request_permission`, answered by the session's policy), then end the turn. Asserted: the
transcript (the user's prompt, the three tool calls, the permission round trips, the agent's text,
`end_turn`), the file in the checkout and in the git state, and a second turn cancelled while the
model "thinks" (ACP `session/cancel` → `cancelled`).

Skipped, saying why, when node or the npm package is missing (`make agents` installs it into .tools).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from foundry.sandbox.v1 import agent_session_pb2 as session_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import session_event_pb2 as K
from google.protobuf import json_format

from services.platform.settings import Settings
from tests.helpers.anthropic_server import AnthropicServer, AnthropicState, Stall, Text, Tool
from tests.helpers.eventually import assert_eventually
from tests.helpers.mesh import running
from tests.unit.sandbox.conftest import prepared_sandbox, sandbox_stub

ROOT = Path(__file__).resolve().parents[3]
CLAUDE = ROOT / ".tools" / "node_modules" / "@zed-industries" / "claude-agent-acp" / "dist" / "index.js"
NODE = shutil.which("node")

pytestmark = pytest.mark.skipif(
    NODE is None or not CLAUDE.is_file(),
    reason=f"the real agent is not installed ({CLAUDE} from `make agents`, and node on PATH)",
)


def _claude_command(url: str, home: Path) -> str:
    """The agent's command line: its model API is the stand-in, its HOME a throwaway directory."""
    env = {
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": "test",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    return " ".join(["env", *(f"{k}={v}" for k, v in env.items()), str(NODE), str(CLAUDE)])


def _payload(event: K.SessionEvent) -> dict[str, Any]:
    return json_format.MessageToDict(event.payload)


async def _events(stub: Any, session: str) -> list[K.SessionEvent]:
    return list((await stub.ListSessionEvents(pb.ListSessionEventsRequest(parent=session))).session_events)


async def test_the_real_claude_agent_reads_runs_writes_asks_permission_and_cancels(
    settings_factory: Callable[..., Settings], origin: Path, tmp_path: Path
) -> None:
    state = AnthropicState()
    home = tmp_path / "agent-home"
    home.mkdir()
    async with AnthropicServer(state) as api:
        agents = {"fake": "foundry-fake-agent", "claude": _claude_command(api.url, home)}
        # The command line carries its own key (the stand-in's): no service variable is needed.
        settings = settings_factory(sandbox={"agents": agents, "provider": "local", "agent_credentials": {}})
        async with running(settings, ["sandbox"]) as mesh, sandbox_stub(mesh) as stub:
            sandbox = await prepared_sandbox(stub, origin)
            checkout = Path(sandbox.checkout.path)
            state.script = [
                Tool("Read", {"file_path": str(checkout / "README.md")}),
                Tool("Bash", {"command": "echo marker-from-bash", "description": "Print a marker"}),
                Tool(
                    "Write",
                    {"file_path": str(checkout / "NOTES.md"), "content": "Run the tests with make test.\n"},
                ),
                Text("I added NOTES.md."),
            ]
            started = await stub.StartAgentSession(
                pb.StartAgentSessionRequest(
                    parent=sandbox.name, session_id="c1", agent="agents/claude", model="opus"
                ),
                timeout=90,
            )
            session = started.agent_session.name
            assert started.agent_session.state == session_pb2.AGENT_SESSION_STATE_IDLE, started
            await stub.PromptSession(
                pb.PromptSessionRequest(
                    name=session, turn_id="work", text="Add a NOTES.md", user="users/1001"
                )
            )

            async def turn_ended() -> list[K.SessionEvent]:
                events = await _events(stub, session)
                assert any(e.kind == K.SESSION_EVENT_KIND_TURN_COMPLETED for e in events), len(events)
                return events

            events = await assert_eventually(turn_ended, timeout=120, interval=0.2)
            # The session's model reached the agent (`session/set_config_option`): every turn request
            # to the model API names it (the agent's own default is a Sonnet).
            turn_models = {str(r.get("model")) for r in state.requests if r.get("tools")}
            assert turn_models and all("opus" in model for model in turn_models), turn_models
            kinds = [K.SessionEventKind.Name(e.kind) for e in events]
            users = [e.text for e in events if e.kind == K.SESSION_EVENT_KIND_USER_MESSAGE]
            assert users == ["Add a NOTES.md"], kinds
            assert events[-1].payload["stopReason"] == "end_turn", kinds
            assert not [e for e in events if e.kind == K.SESSION_EVENT_KIND_ERROR], kinds
            tools = [
                str(_payload(e).get("title", "")) for e in events if e.kind == K.SESSION_EVENT_KIND_TOOL_CALL
            ]
            assert len(tools) >= 3, tools
            asked = [e for e in events if e.kind == K.SESSION_EVENT_KIND_PERMISSION_REQUEST]
            answered = [e for e in events if e.kind == K.SESSION_EVENT_KIND_PERMISSION_RESPONSE]
            asked_for = [str(_payload(e).get("toolCall", {}).get("title", "")) for e in asked]
            # Write asks (Claude Code runs a read-only `echo` without asking); every ask is answered.
            assert any("NOTES.md" in t for t in asked_for) and len(answered) == len(asked), (asked_for, kinds)
            assert all(e.text.startswith("allow: ") for e in answered), [e.text for e in answered]
            said = "".join(e.text for e in events if e.kind == K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK)
            assert "I added NOTES.md." in said, said
            assert (checkout / "NOTES.md").read_text() == "Run the tests with make test.\n"
            bash_results = [
                r for r in state.requests if "marker-from-bash" in str(r.get("messages", [])[-1:])
            ]
            assert bash_results, "the Bash tool's output never reached the model"
            git_state = (
                await stub.RefreshGitState(pb.RefreshGitStateRequest(name=f"{sandbox.name}/gitState"))
            ).git_state
            assert "NOTES.md" in [f.path for f in git_state.file_changes], git_state

            # Cancel while the model "thinks": the stand-in holds its answer open.
            state.script = [Stall()] * 10  # steps are numbered by tool results so far: 3 from the last turn
            state.stalled.clear()
            await stub.PromptSession(
                pb.PromptSessionRequest(
                    name=session, turn_id="stop-me", text="Think forever", user="users/1001"
                )
            )
            await asyncio.wait_for(state.stalled.wait(), 60)
            await stub.CancelTurn(pb.CancelTurnRequest(name=f"{session}/turns/stop-me"))

            async def cancelled() -> None:
                events = await _events(stub, session)
                ends = [
                    _payload(e).get("stopReason")
                    for e in events
                    if e.kind == K.SESSION_EVENT_KIND_TURN_COMPLETED
                ]
                assert ends == ["end_turn", "cancelled"], ends

            await assert_eventually(cancelled, timeout=60, interval=0.2)


async def test_the_real_claude_agent_waits_for_the_user_under_policy_ask(
    settings_factory: Callable[..., Settings], origin: Path, tmp_path: Path
) -> None:
    """Policy ASK with the real agent: its Write waits until AnswerPermissionRequest answers; allow
    once writes the file, reject (next turn) leaves it unwritten and the model hears the refusal."""
    state = AnthropicState()
    home = tmp_path / "agent-home"
    home.mkdir()
    async with AnthropicServer(state) as api:
        agents = {"fake": "foundry-fake-agent", "claude": _claude_command(api.url, home)}
        settings = settings_factory(sandbox={"agents": agents, "provider": "local", "agent_credentials": {}})
        async with running(settings, ["sandbox"]) as mesh, sandbox_stub(mesh) as stub:
            sandbox = await prepared_sandbox(stub, origin)
            checkout = Path(sandbox.checkout.path)
            state.script = [
                Tool("Write", {"file_path": str(checkout / "NOTES.md"), "content": "asked first\n"}),
                Tool("Write", {"file_path": str(checkout / "SECRET.md"), "content": "never\n"}),
                Text("All done."),
            ]
            started = await stub.StartAgentSession(
                pb.StartAgentSessionRequest(
                    parent=sandbox.name,
                    session_id="c1",
                    agent="agents/claude",
                    permission_policy=session_pb2.PERMISSION_POLICY_ASK,
                ),
                timeout=90,
            )
            session = started.agent_session.name
            await stub.PromptSession(
                pb.PromptSessionRequest(
                    name=session, turn_id="work", text="Write two files", user="users/1001"
                )
            )

            async def asked(count: int) -> dict[str, Any]:
                events = await _events(stub, session)
                requests = [_payload(e) for e in events if e.kind == K.SESSION_EVENT_KIND_PERMISSION_REQUEST]
                assert len(requests) >= count and requests[count - 1].get("requestId"), requests
                return requests[count - 1]

            async def answer(request: dict[str, Any], outcome: Any) -> session_pb2.PermissionRequest:
                response = await stub.AnswerPermissionRequest(
                    pb.AnswerPermissionRequestRequest(
                        name=f"{session}/permissionRequests/{request['requestId']}",
                        outcome=outcome,
                        user="users/1001",
                    )
                )
                return response.permission_request

            first = await assert_eventually(lambda: asked(1), timeout=120, interval=0.2)
            assert "NOTES.md" in str(first["toolCall"].get("title", "")), first
            kinds = {o["kind"] for o in first["options"]}
            assert {"allow_once", "reject_once"} <= kinds, first["options"]
            await asyncio.sleep(0.5)
            assert not (checkout / "NOTES.md").exists()  # it waits for the answer
            allowed = await answer(first, session_pb2.PERMISSION_OUTCOME_ALLOW_ONCE)
            assert allowed.delivered and allowed.option_id

            second = await assert_eventually(lambda: asked(2), timeout=60, interval=0.2)
            assert (checkout / "NOTES.md").read_text() == "asked first\n"
            assert "SECRET.md" in str(second["toolCall"].get("title", "")), second
            rejected = await answer(second, session_pb2.PERMISSION_OUTCOME_REJECT)
            assert rejected.delivered and rejected.option_id

            async def ended() -> list[K.SessionEvent]:
                events = await _events(stub, session)
                assert any(e.kind == K.SESSION_EVENT_KIND_TURN_COMPLETED for e in events)
                return events

            events = await assert_eventually(ended, timeout=60, interval=0.2)
            assert events[-1].payload["stopReason"] == "end_turn"
            answers = [
                _payload(e)["answer"] for e in events if e.kind == K.SESSION_EVENT_KIND_PERMISSION_RESPONSE
            ]
            assert answers == ["allow_once", "reject"], answers
            assert not (checkout / "SECRET.md").exists()
