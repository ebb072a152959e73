"""The real `codex-acp` (from npm, `make real-agent`) driven by the sandbox service, offline, against a
local stand-in of the OpenAI Responses API that speaks its SSE wire format
(tests/helpers/openai_responses_server.py). The stand-in is the test double (a service we cannot
reach); the agent binary is the real thing.

It runs under the `bubblewrap` provider, confined as in production: the stand-in is reached through
the sandbox's egress proxy (its `127.0.0.1:<port>` is the only allowlisted host), and Codex's own
sandbox (bubblewrap and seccomp, nested in ours) still confines its commands: in its default mode
(`read-only`) a plain `touch` in the checkout fails with `Read-only file system`. Codex reads its model
provider from `~/.codex/config.toml` (its default CODEX_HOME), written by the agent's command line into
the sandbox's home.

Scripted turn: `exec_command` `cat README.md` (a read: no permission asked), `touch` (refused by
Codex's sandbox, no permission asked), `exec_command` with `sandbox_permissions: require_escalated`
(asks `session/request_permission`), the custom tool `apply_patch` adding NOTES.md (asks), then text
ending the turn. Asserted: the model the session chose reached the model API, the transcript (prompt,
tool calls, both permission round trips answered by the default `allow` policy, the text,
`end_turn`; codex-acp 0.16 sometimes sends no `tool_call` at all for the touch its sandbox refuses at
once, seen outside the mesh too, so that one is optional), the tool outputs the model got back, the
files in the checkout and in the git state, and a second turn cancelled while the model "thinks" (ACP
`session/cancel` → `cancelled`). A second test asks the binary which models it offers (`session/new`
config option of category `model`) and pins the settings' default `agent_models["codex"]` to them.

Skipped, saying why, when the npm package is missing (`make real-agent` installs it into .tools; it
warns and skips it when npm is unreachable), or when bubblewrap cannot run here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import acp
import pytest
from acp import schema
from foundry.sandbox.v1 import agent_session_pb2 as session_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import session_event_pb2 as K
from google.protobuf import json_format

from services.platform.settings import Settings
from services.sandbox.providers import bubblewrap
from tests.helpers.eventually import assert_eventually
from tests.helpers.mesh import running
from tests.helpers.openai_responses_server import (
    Call,
    Custom,
    ResponsesServer,
    ResponsesState,
    Stall,
    Text,
    tool_outputs,
)
from tests.unit.sandbox.conftest import prepared_sandbox, sandbox_stub

ROOT = Path(__file__).resolve().parents[3]
CODEX = ROOT / ".tools" / "node_modules" / "@zed-industries" / "codex-acp-linux-x64" / "bin" / "codex-acp"
# What codex-acp 0.16.0 offers in `session/new` (config option `model`), its default first.
CODEX_MODELS = ["gpt-5.5", "gpt-5.4", "gpt-5.4-mini", "gpt-5.3-codex", "gpt-5.2"]
PATCH = "*** Begin Patch\n*** Add File: NOTES.md\n+Run the tests with make test.\n*** End Patch\n"

pytestmark = pytest.mark.skipif(
    not CODEX.is_file(),
    reason=f"the real agent is not installed ({CODEX} from `make real-agent`; npm was unreachable)",
)


def _config(url: str) -> str:
    """Codex's config.toml: the stand-in as the model provider (the model stays the binary's default)."""
    return "\n".join(
        [
            'model_provider = "stub"',
            "[model_providers.stub]",
            'name = "stub"',
            f'base_url = "{url}"',
            'env_key = "OPENAI_API_KEY"',
            'wire_api = "responses"',
            "",
        ]
    )


def _codex_command(url: str) -> str:
    """The agent's command line: writes ~/.codex/config.toml (Codex's default CODEX_HOME) in the
    sandbox's home, then runs the binary with the stand-in's key, in the sandbox's own environment
    otherwise (TMPDIR=/tmp)."""
    script = (
        'mkdir -p "$HOME/.codex" && printf "%s" "$0" > "$HOME/.codex/config.toml" && '
        f"OPENAI_API_KEY=test exec {shlex.quote(str(CODEX))}"
    )
    return shlex.join(["/bin/sh", "-c", script, _config(url)])


def _payload(event: K.SessionEvent) -> dict[str, Any]:
    return json_format.MessageToDict(event.payload)


async def _events(stub: Any, session: str) -> list[K.SessionEvent]:
    return list((await stub.ListSessionEvents(pb.ListSessionEventsRequest(parent=session))).session_events)


async def test_the_real_codex_agent_reads_runs_edits_asks_permission_and_cancels(
    settings_factory: Callable[..., Settings], origin: Path
) -> None:
    if (why := bubblewrap.available()) is not None:
        pytest.skip(f"bubblewrap cannot confine sandboxes here: {why}")
    state = ResponsesState()
    async with ResponsesServer(state) as api:
        port = api.url.split(":")[2].split("/")[0]
        settings = settings_factory(
            sandbox={
                "agents": {"fake": "foundry-fake-agent", "codex": _codex_command(api.url)},
                "provider": "bubblewrap",
                # The command line carries its own key (the stand-in's): no service variable is needed.
                "agent_credentials": {},
                "egress": "model_apis",
                "egress_allowlist": [f"127.0.0.1:{port}"],
            }
        )
        async with running(settings, ["sandbox"]) as mesh, sandbox_stub(mesh) as stub:
            sandbox = await prepared_sandbox(stub, origin)
            checkout = Path(sandbox.checkout.path)
            state.script = [
                Call("exec_command", {"cmd": "cat README.md"}),
                Call("exec_command", {"cmd": "touch sandboxed.txt"}),
                Call(
                    "exec_command",
                    {
                        "cmd": "echo marker-from-exec | tee exec.log",
                        "sandbox_permissions": "require_escalated",
                        "justification": "Write exec.log?",
                    },
                ),
                Custom("apply_patch", PATCH),
                Text("I added NOTES.md."),
            ]
            started = await stub.StartAgentSession(
                pb.StartAgentSessionRequest(
                    parent=sandbox.name, session_id="x1", agent="agents/codex", model="gpt-5.4"
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
            kinds = [K.SessionEventKind.Name(e.kind) for e in events]
            # The session's model reached the agent (`session/set_config_option`; its default is gpt-5.5).
            assert {r.get("model") for r in state.requests} == {"gpt-5.4"}, [
                r.get("model") for r in state.requests
            ]
            assert all(r.get("stream") is True for r in state.requests)
            assert state.others == [], state.others
            assert [e.text for e in events if e.kind == K.SESSION_EVENT_KIND_USER_MESSAGE] == [
                "Add a NOTES.md"
            ]
            assert events[-1].kind == K.SESSION_EVENT_KIND_TURN_COMPLETED, kinds
            assert events[-1].payload["stopReason"] == "end_turn", kinds
            assert not [e for e in events if e.kind == K.SESSION_EVENT_KIND_ERROR], kinds

            # Tool calls by id, in the order they first appear, each update merged into its call.
            seen: dict[str, dict[str, Any]] = {}
            for e in events:
                if e.kind in (K.SESSION_EVENT_KIND_TOOL_CALL, K.SESSION_EVENT_KIND_TOOL_CALL_UPDATE):
                    update = _payload(e)
                    seen.setdefault(str(update["toolCallId"]), {}).update(update)
            asked = [_payload(e) for e in events if e.kind == K.SESSION_EVENT_KIND_PERMISSION_REQUEST]
            answered = [e for e in events if e.kind == K.SESSION_EVENT_KIND_PERMISSION_RESPONSE]
            # The escalated command and the edit ask; the read and the sandboxed touch do not.
            assert len(asked) == 2, asked
            run, edit = (seen[str(a["toolCall"]["toolCallId"])] for a in asked)
            assert asked[0]["toolCall"]["rawInput"]["reason"] == "Write exec.log?", asked[0]
            assert run["rawInput"]["command"][-1] == "echo marker-from-exec | tee exec.log", run
            # The edit names the checkout as the agent sees it.
            assert (edit["kind"], edit["title"]) == ("edit", "Edit /workspace/NOTES.md"), edit
            assert run["status"] == edit["status"] == "completed", (run, edit)
            read = next(iter(seen.values()))
            assert (read["kind"], read["title"], read["status"]) == ("read", "Read README.md", "completed"), (
                read
            )
            # codex-acp 0.16 does not always announce a command its sandbox refuses at once (the touch
            # then has no event at all); when it does, the call failed. The model got its output anyway.
            touched = [
                c
                for c in seen.values()
                if c.get("rawInput", {}).get("command", [""])[-1] == "touch sandboxed.txt"
            ]
            assert [c["status"] for c in touched] in ([], ["failed"]), touched
            assert len(seen) == 3 + len(touched), list(seen.values())
            for request in asked:
                kinds_offered = sorted(str(o["kind"]) for o in request["options"])
                assert "allow_once" in kinds_offered and "reject_once" in kinds_offered, request["options"]
            assert [e.text for e in answered] == ["allow: approved"] * 2, [e.text for e in answered]
            assert all(
                _payload(e)["outcome"] == {"outcome": "selected", "optionId": "approved"} for e in answered
            )
            # Each answer follows its request.
            order = [
                e.kind
                for e in events
                if e.kind
                in (K.SESSION_EVENT_KIND_PERMISSION_REQUEST, K.SESSION_EVENT_KIND_PERMISSION_RESPONSE)
            ]
            assert (
                order
                == [K.SESSION_EVENT_KIND_PERMISSION_REQUEST, K.SESSION_EVENT_KIND_PERMISSION_RESPONSE] * 2
            )

            said = "".join(e.text for e in events if e.kind == K.SESSION_EVENT_KIND_AGENT_MESSAGE_CHUNK)
            assert said == "I added NOTES.md.", said

            # What the tools gave the model back.
            outputs = [str(o.get("output")) for o in tool_outputs(state.requests[-1])]
            assert len(outputs) == 4, outputs
            assert "# demo" in outputs[0], outputs[0]
            assert "Read-only file system" in outputs[1], outputs[1]  # Codex's own sandbox, inside ours
            assert "marker-from-exec" in outputs[2], outputs[2]
            assert "A NOTES.md" in outputs[3], outputs[3]

            assert (checkout / "NOTES.md").read_text() == "Run the tests with make test.\n"
            assert (checkout / "exec.log").read_text() == "marker-from-exec\n"
            assert not (checkout / "sandboxed.txt").exists()
            git_state = (
                await stub.RefreshGitState(pb.RefreshGitStateRequest(name=f"{sandbox.name}/gitState"))
            ).git_state
            changed = sorted(f.path for f in git_state.file_changes)
            assert changed == ["NOTES.md", "exec.log"], git_state

            # Cancel while the model "thinks": the stand-in holds its answer open.
            state.script = [Stall()] * 10  # steps are numbered by tool outputs so far: 4 from the last turn
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


class _Client:
    async def session_update(self, session_id: str, update: Any, **_: Any) -> None:
        return None

    async def request_permission(self, *_: Any, **__: Any) -> schema.RequestPermissionResponse:
        return schema.RequestPermissionResponse(outcome=schema.DeniedOutcome(outcome="cancelled"))


async def test_codex_offers_the_models_the_settings_list(tmp_path: Path) -> None:
    """codex-acp's `session/new` model option (its default first) is what `agent_models["codex"]`
    defaults to, so ListAgents and the model checks of CreateTask/CreateSession/ChangeModel are truthful."""
    (tmp_path / "codex-home").mkdir()
    (tmp_path / "codex-home" / "config.toml").write_text(_config("http://127.0.0.1:9/v1"))
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "CODEX_HOME": str(tmp_path / "codex-home"),
        "OPENAI_API_KEY": "test",
    }
    process = await asyncio.create_subprocess_exec(
        str(CODEX),
        cwd=tmp_path,
        env=env,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        conn = acp.connect_to_agent(_Client(), process.stdin, process.stdout)  # type: ignore[arg-type]
        await asyncio.wait_for(
            conn.initialize(
                protocol_version=acp.PROTOCOL_VERSION,
                client_info=schema.Implementation(name="test", version="1"),
            ),
            30,
        )
        opened = await asyncio.wait_for(conn.new_session(cwd=str(tmp_path), mcp_servers=[]), 30)
        options = [getattr(o, "root", o) for o in opened.config_options or []]
        model = next(o for o in options if o.category == "model")
        offered = [str(choice.value) for choice in model.options]
        assert [model.current_value, *offered] == [CODEX_MODELS[0], *CODEX_MODELS], (
            model.current_value,
            offered,
        )
        assert Settings().sandbox.agent_models["codex"] == CODEX_MODELS
        await conn.close()
    finally:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()
