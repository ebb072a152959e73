"""`foundry-fake-agent`: an ACP agent that needs no model and no network, for the offline default and tests.

It speaks real ACP over stdio (the `acp` library's agent side) and does real work in the session's
working directory (the checkout). What it does with a prompt's text:

    $ <command>          runs `<command>` with /bin/sh in the cwd: a `tool_call` (kind `execute`),
                         one `agent_message_chunk` and one in-progress `tool_call_update` per output
                         line, then a final `tool_call_update` (`completed`, or `failed` on a non-zero
                         exit) carrying the exit code.
    write <path>: <text> asks permission (`session/request_permission`, allow-once / reject-once),
                         then writes `<text>` plus a newline to `<path>` (relative to the cwd, must
                         stay inside it): a `tool_call` (kind `edit`) and its `tool_call_update` with
                         a diff, then an `agent_message_chunk` `wrote <path>`. A rejection fails the
                         tool call and says so; a `session/cancel` while it waits for the answer
                         fails it and ends the turn `cancelled`.
    recall               one `agent_message_chunk` listing the session's earlier prompts
                         (`recall: <p1> | <p2>`, or `recall: nothing`): what the agent remembers.
    model                one `agent_message_chunk` naming the session's model (`model: standard`).
    anything else        an `agent_thought_chunk`, a `plan`, then the text echoed back in two
                         `agent_message_chunk`s (`echo: `, `<text>`).

`session/cancel` stops a running command (its process group gets SIGTERM) and the turn ends with
stop reason `cancelled`. The process exits 0 when stdin reaches EOF.

Sessions survive the process: each prompt is written to `<cwd>/.git/foundry-fake-agent/<session>.json`
as it arrives (inside `.git`, so it never shows in the checkout's changes), and `session/load`
(capability `loadSession`) reads it back, replays it as `user_message_chunk`s and
`agent_message_chunk`s, and continues the session. `foundry-fake-agent --no-load-session` offers no
`session/load`, like agents that cannot resume.

Models: `session/new` and `session/load` answer with a `model` config option (category `model`,
values `standard` and `fast`, `standard` first), switched with `session/set_config_option`; an
unknown value is refused with invalid params, as a real agent refuses a model it does not offer.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from pathlib import Path
from typing import Any, cast

import acp
from acp import schema

_WRITE_PREFIX = "write "
MODELS = ("standard", "fast")
_STATE_DIR = Path(".git") / "foundry-fake-agent"


class FakeAgent:
    """The agent side of one stdio connection; sessions are kept on disk (see the module doc)."""

    def __init__(self, *, load_session: bool = True) -> None:
        self._conn: Any = None
        self._load = load_session
        self._cwd: dict[str, Path] = {}
        self._cancelled: dict[str, asyncio.Event] = {}
        self._history: dict[str, list[dict[str, str]]] = {}
        self._reply: dict[str, list[str]] = {}  # agent message text of the running prompt
        self._model: dict[str, str] = {}
        self._tool_seq = 0

    def on_connect(self, conn: Any) -> None:
        self._conn = conn

    async def initialize(self, protocol_version: int, **_: Any) -> schema.InitializeResponse:
        return schema.InitializeResponse(
            protocol_version=min(protocol_version, acp.PROTOCOL_VERSION),
            agent_capabilities=schema.AgentCapabilities(load_session=self._load),
            agent_info=schema.Implementation(name="foundry-fake-agent", version="1"),
        )

    async def new_session(self, cwd: str, **_: Any) -> schema.NewSessionResponse:
        session_id = f"fake-{uuid.uuid4().hex[:12]}"
        self._cwd[session_id] = Path(await asyncio.to_thread(os.path.realpath, cwd))
        self._cancelled[session_id] = asyncio.Event()
        self._history[session_id] = []
        return schema.NewSessionResponse(session_id=session_id, config_options=self._options(session_id))

    def _options(self, session_id: str) -> list[Any]:
        """The session's config options: its model choice."""
        current = self._model.setdefault(session_id, MODELS[0])
        return [
            schema.SessionConfigOptionSelect(
                id="model",
                name="Model",
                category="model",
                type="select",
                current_value=current,
                options=[schema.SessionConfigSelectOption(value=v, name=v.capitalize()) for v in MODELS],
            )
        ]

    async def set_config_option(
        self, config_id: str, session_id: str, value: str | bool, **_: Any
    ) -> schema.SetSessionConfigOptionResponse:
        if session_id not in self._cwd:
            raise acp.RequestError.invalid_params({"sessionId": f"unknown session {session_id}"})
        if config_id != "model" or value not in MODELS:
            raise acp.RequestError.invalid_params({config_id: f"no such option value {value!r}"})
        self._model[session_id] = str(value)
        return schema.SetSessionConfigOptionResponse(config_options=self._options(session_id))

    async def load_session(self, cwd: str, session_id: str, **_: Any) -> schema.LoadSessionResponse:
        if not self._load:
            raise acp.RequestError.method_not_found("session/load")
        root = Path(await asyncio.to_thread(os.path.realpath, cwd))
        try:
            history = json.loads((root / _STATE_DIR / f"{session_id}.json").read_text())
        except (OSError, ValueError) as exc:
            raise acp.RequestError.resource_not_found(session_id) from exc
        for entry in history:
            update = (
                acp.update_user_message_text(entry["text"])
                if entry["role"] == "user"
                else acp.update_agent_message_text(entry["text"])
            )
            await self._send(session_id, update)
        self._cwd[session_id], self._history[session_id] = root, history
        self._cancelled[session_id] = asyncio.Event()
        return schema.LoadSessionResponse(config_options=self._options(session_id))

    def _remember(self, session_id: str, role: str, text: str) -> None:
        """Append to the session's history and write it where `session/load` finds it (when the cwd
        is a checkout with a `.git` directory)."""
        history = self._history.setdefault(session_id, [])
        if not text:
            return
        history.append({"role": role, "text": text})
        folder = self._cwd[session_id] / _STATE_DIR
        if folder.parent.is_dir():
            folder.mkdir(exist_ok=True)
            (folder / f"{session_id}.json").write_text(json.dumps(history))

    async def set_session_mode(
        self, session_id: str, mode_id: str, **_: Any
    ) -> schema.SetSessionModeResponse:
        return schema.SetSessionModeResponse()

    async def cancel(self, session_id: str, **_: Any) -> None:
        event = self._cancelled.get(session_id)
        if event is not None:
            event.set()

    async def prompt(self, session_id: str, prompt: list[Any], **_: Any) -> schema.PromptResponse:
        if session_id not in self._cwd:
            raise acp.RequestError.invalid_params({"sessionId": f"unknown session {session_id}"})
        cancelled = self._cancelled[session_id]
        cancelled.clear()
        text = "".join(getattr(block, "text", "") for block in prompt).strip()
        first_line = text.splitlines()[0] if text else ""
        earlier = [e["text"] for e in self._history.get(session_id, []) if e["role"] == "user"]
        self._remember(session_id, "user", text)
        self._reply[session_id] = []
        stop: schema.StopReason = "end_turn"
        try:
            if text == "model":
                await self._send(
                    session_id, acp.update_agent_message_text(f"model: {self._model[session_id]}")
                )
            elif text == "recall":
                await self._send(
                    session_id, acp.update_agent_message_text(f"recall: {' | '.join(earlier) or 'nothing'}")
                )
            elif first_line.startswith("$ "):
                stop = await self._run_command(session_id, text[2:].strip(), cancelled)
            elif first_line.startswith(_WRITE_PREFIX) and ":" in first_line:
                stop = await self._write_file(session_id, text[len(_WRITE_PREFIX) :])
            else:
                stop = await self._echo(session_id, text)
        finally:
            self._remember(session_id, "agent", "".join(self._reply.pop(session_id, [])))
        return schema.PromptResponse(stop_reason=stop)

    # -- behaviours -------------------------------------------------------------------------------

    async def _send(self, session_id: str, update: Any) -> None:
        if isinstance(update, schema.AgentMessageChunk) and session_id in self._reply:
            self._reply[session_id].append(getattr(update.content, "text", ""))
        await self._conn.session_update(session_id=session_id, update=update)

    def _next_tool_id(self) -> str:
        self._tool_seq += 1
        return f"tc-{self._tool_seq}"

    async def _echo(self, session_id: str, text: str) -> schema.StopReason:
        await self._send(session_id, acp.update_agent_thought_text(f"thinking about: {text}"))
        await self._send(
            session_id,
            acp.update_plan([acp.plan_entry("answer the prompt", priority="high", status="in_progress")]),
        )
        await self._send(session_id, acp.update_agent_message_text("echo: "))
        await self._send(session_id, acp.update_agent_message_text(text))
        return "end_turn"

    async def _run_command(
        self, session_id: str, command: str, cancelled: asyncio.Event
    ) -> schema.StopReason:
        tool_id = self._next_tool_id()
        await self._send(
            session_id,
            acp.start_tool_call(
                tool_id,
                f"run {command}",
                kind="execute",
                status="in_progress",
                raw_input={"command": command},
            ),
        )
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh",
            "-c",
            command,
            cwd=self._cwd[session_id],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        waiter = asyncio.create_task(cancelled.wait())
        try:
            while True:
                reader = asyncio.create_task(proc.stdout.readline())
                done, _ = await asyncio.wait({reader, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if waiter in done:
                    reader.cancel()
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGTERM)
                    await proc.wait()
                    await self._send(
                        session_id,
                        acp.update_tool_call(tool_id, status="failed", raw_output={"cancelled": True}),
                    )
                    return "cancelled"
                line = reader.result()
                if not line:
                    break
                chunk = line.decode(errors="replace")
                await self._send(session_id, acp.update_agent_message_text(chunk))
                await self._send(
                    session_id,
                    acp.update_tool_call(
                        tool_id, status="in_progress", content=[acp.tool_content(acp.text_block(chunk))]
                    ),
                )
        finally:
            waiter.cancel()
        code = await proc.wait()
        await self._send(
            session_id,
            acp.update_tool_call(
                tool_id, status="completed" if code == 0 else "failed", raw_output={"exitCode": code}
            ),
        )
        return "end_turn"

    async def _write_file(self, session_id: str, instruction: str) -> schema.StopReason:
        raw_path, _, content = instruction.partition(":")
        content = content[1:] if content.startswith(" ") else content
        cwd = self._cwd[session_id]
        target = (cwd / raw_path.strip()).resolve()
        tool_id = self._next_tool_id()
        if not target.is_relative_to(cwd) or target == cwd:
            await self._send(
                session_id,
                acp.update_agent_message_text(f"refused: {raw_path.strip()} is outside the checkout"),
            )
            return "end_turn"
        rel = str(target.relative_to(cwd))
        new_text = content if content.endswith("\n") else content + "\n"
        old_text = target.read_text() if target.is_file() else None
        await self._send(session_id, acp.start_edit_tool_call(tool_id, f"write {rel}", str(target), new_text))
        decision = await self._conn.request_permission(
            session_id=session_id,
            tool_call=schema.ToolCallUpdate(tool_call_id=tool_id, title=f"write {rel}", kind="edit"),
            options=[
                schema.PermissionOption(option_id="allow", name="Allow", kind="allow_once"),
                schema.PermissionOption(option_id="reject", name="Reject", kind="reject_once"),
            ],
        )
        outcome = decision.outcome
        if self._cancelled[session_id].is_set():  # session/cancel while it waited: answered `cancelled`
            await self._send(session_id, acp.update_tool_call(tool_id, status="failed"))
            return "cancelled"
        if getattr(outcome, "option_id", None) != "allow":
            await self._send(session_id, acp.update_tool_call(tool_id, status="failed"))
            await self._send(
                session_id, acp.update_agent_message_text(f"permission to write {rel} was refused")
            )
            return "end_turn"
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(new_text)
        await self._send(
            session_id,
            acp.update_tool_call(
                tool_id, status="completed", content=[acp.tool_diff_content(str(target), new_text, old_text)]
            ),
        )
        await self._send(session_id, acp.update_agent_message_text(f"wrote {rel}"))
        return "end_turn"


def main(argv: list[str] | None = None) -> int:
    """Serve ACP on stdin/stdout until stdin reaches EOF; returns the exit status (0)."""
    parser = argparse.ArgumentParser(prog="foundry-fake-agent", description="An offline ACP agent.")
    parser.add_argument(
        "--no-load-session", action="store_true", help="offer no session/load (sessions cannot resume)"
    )
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt, BrokenPipeError):
        asyncio.run(acp.run_agent(cast(acp.Agent, FakeAgent(load_session=not args.no_load_session))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
