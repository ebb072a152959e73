"""A local stand-in of the Anthropic Messages API that speaks its streaming wire format, for running
the real `claude-agent-acp` offline (see ../shared/reference/real-agents-offline.md).

Starlette app served by uvicorn on 127.0.0.1:<free port> inside the test's event loop. `POST
/v1/messages` (any query, e.g. `?beta=true`) with `stream: true` is answered with server-sent events
exactly as the API sends them: `message_start`, then per content block `content_block_start`,
`content_block_delta` (`text_delta`, or `input_json_delta` for a `tool_use` block),
`content_block_stop`, then `message_delta` (`stop_reason` `tool_use` or `end_turn`) and
`message_stop`. Any other request (`HEAD /`, the agent's connectivity check) gets 200.

The conversation follows `script`: a request carrying tools (the agent's main loop) is answered with
the step numbered by how many `tool_result` blocks the request's messages hold so far (step 0 before
any tool ran); steps are `Tool(name, input)` or `Text(text)` (which ends the turn). A `Stall` step
holds the stream open after `message_start` until the client goes away (to test cancel). Requests
without tools (side queries such as a title) get a short text answer. Every request body is kept in
`requests`.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from tests.helpers.loopback_server import LoopbackServer


@dataclass
class Tool:
    name: str
    input: dict[str, Any]


@dataclass
class Text:
    text: str


@dataclass
class Stall:
    """Hold the response open (nothing after `message_start`) until the client disconnects."""


Step = Tool | Text | Stall


@dataclass
class AnthropicState:
    script: list[Step] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    stalled: asyncio.Event = field(default_factory=asyncio.Event)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def tool_results(body: dict[str, Any]) -> int:
    """How many `tool_result` blocks the request's messages hold."""
    count = 0
    for message in body.get("messages", []):
        content = message.get("content")
        if isinstance(content, list):
            count += sum(
                1 for block in content if isinstance(block, dict) and block.get("type") == "tool_result"
            )
    return count


class _Api:
    def __init__(self, state: AnthropicState) -> None:
        self.state = state

    async def any(self, request: Request) -> Response:
        if request.method != "POST" or not request.url.path.startswith("/v1/messages"):
            return Response(status_code=200)
        body = await request.json()
        self.state.requests.append(body)
        model = str(body.get("model", "claude"))
        if body.get("tools"):
            index = tool_results(body)
            step: Step = self.state.script[index] if index < len(self.state.script) else Text("done")
        else:
            step = Text("ok")
        return StreamingResponse(self._stream(model, step), media_type="text/event-stream")

    async def _stream(self, model: str, step: Step) -> AsyncIterator[bytes]:
        message: dict[str, Any] = {
            "id": f"msg_{uuid.uuid4().hex[:20]}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {"input_tokens": 20, "output_tokens": 1},
        }
        yield _sse("message_start", {"type": "message_start", "message": message})
        if isinstance(step, Stall):
            self.state.stalled.set()
            await asyncio.sleep(3600)  # until the client disconnects and the response is cancelled
            return
        if isinstance(step, Tool):
            block = {
                "type": "tool_use",
                "id": f"toolu_{uuid.uuid4().hex[:20]}",
                "name": step.name,
                "input": {},
            }
            delta = {"type": "input_json_delta", "partial_json": json.dumps(step.input)}
            stop = "tool_use"
        else:
            block = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": step.text}
            stop = "end_turn"
        yield _sse("content_block_start", {"type": "content_block_start", "index": 0, "content_block": block})
        yield _sse("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": delta})
        yield _sse("content_block_stop", {"type": "content_block_stop", "index": 0})
        yield _sse(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": 10},
            },
        )
        yield _sse("message_stop", {"type": "message_stop"})


class AnthropicServer(LoopbackServer):
    """`async with AnthropicServer(state) as server:` → `server.url` is the base URL
    (`ANTHROPIC_BASE_URL`)."""

    def __init__(self, state: AnthropicState) -> None:
        self.state = state
        api = _Api(state)
        app = Starlette(routes=[Route("/{path:path}", api.any, methods=["GET", "HEAD", "POST"])])
        super().__init__(app, force_exit=True)
