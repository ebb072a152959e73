"""A local stand-in of the OpenAI Responses API that speaks its streaming wire format, for running
the real `codex-acp` offline (see ../shared/reference/real-agents-offline.md).

Starlette app served by uvicorn on 127.0.0.1:<free port> inside the test's event loop. `POST
/v1/responses` with `stream: true` is answered with server-sent events (`event:` and `data:` lines,
each `data` a JSON object whose `type` repeats the event name and with a `sequence_number`) as the
API sends them: `response.created`, `response.in_progress`, then per output item
`response.output_item.added`, its deltas (`response.output_text.delta` inside
`response.content_part.added`/`.done` and `response.output_text.done` for a message;
`response.function_call_arguments.delta`/`.done` for a `function_call`;
`response.custom_tool_call_input.delta`/`.done` for a `custom_tool_call`) and
`response.output_item.done`, and last `response.completed` with the whole response and its usage.
Any other request gets 404 (recorded too).

The conversation follows `script`: a request is answered with the step numbered by how many tool
outputs (`function_call_output` and `custom_tool_call_output` items) its `input` holds so far (step 0
before any tool ran); steps are `Call(name, arguments)` (a function tool such as `exec_command`),
`Custom(name, input)` (a freeform tool such as `apply_patch`) or `Text(text)` (which ends the turn).
A `Stall` step holds the stream open after `response.in_progress` until the client goes away (to test
cancel). Every request body is kept in `requests`; `others` keeps the method and path of requests
to any other route (codex-acp 0.16 makes none).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
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
class Call:
    """A function tool call (`function_call`), e.g. `exec_command` with `{"cmd": …}`."""

    name: str
    arguments: dict[str, Any]


@dataclass
class Custom:
    """A freeform tool call (`custom_tool_call`), e.g. `apply_patch` with the patch text as input."""

    name: str
    input: str


@dataclass
class Text:
    text: str


@dataclass
class Stall:
    """Hold the response open (nothing after `response.in_progress`) until the client disconnects."""


Step = Call | Custom | Text | Stall
TOOL_OUTPUTS = ("function_call_output", "custom_tool_call_output")


@dataclass
class ResponsesState:
    script: list[Step] = field(default_factory=list)
    requests: list[dict[str, Any]] = field(default_factory=list)
    others: list[str] = field(default_factory=list)
    stalled: asyncio.Event = field(default_factory=asyncio.Event)


def tool_outputs(body: dict[str, Any]) -> list[dict[str, Any]]:
    """The tool outputs (`function_call_output`, `custom_tool_call_output` items) of a request's input."""
    items = body.get("input")
    if not isinstance(items, list):
        return []
    return [i for i in items if isinstance(i, dict) and i.get("type") in TOOL_OUTPUTS]


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class _Stream:
    """One streamed response: numbers its events and builds the `response` object they carry."""

    def __init__(self, model: str) -> None:
        self._sequence = itertools.count()
        self.response: dict[str, Any] = {
            "id": _id("resp"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "in_progress",
            "error": None,
            "incomplete_details": None,
            "model": model,
            "output": [],
            "parallel_tool_calls": False,
            "tool_choice": "auto",
            "tools": [],
            "usage": None,
        }

    def event(self, kind: str, **data: Any) -> bytes:
        body = {"type": kind, "sequence_number": next(self._sequence), **data}
        return f"event: {kind}\ndata: {json.dumps(body)}\n\n".encode()

    def item(
        self, index: int, item: dict[str, Any], deltas: list[bytes], done: dict[str, Any]
    ) -> list[bytes]:
        """`output_item.added` (the item as it starts), its delta events, `output_item.done`."""
        self.response["output"].append(done)
        return [
            self.event("response.output_item.added", output_index=index, item=item),
            *deltas,
            self.event("response.output_item.done", output_index=index, item=done),
        ]


def _events(stream: _Stream, step: Call | Custom | Text) -> list[bytes]:
    if isinstance(step, Text):
        item_id = _id("msg")
        part = {"type": "output_text", "annotations": [], "text": ""}
        where = {"item_id": item_id, "output_index": 0, "content_index": 0}
        done_part = {**part, "text": step.text}
        message = {
            "id": item_id,
            "type": "message",
            "role": "assistant",
            "status": "in_progress",
            "content": [],
        }
        return stream.item(
            0,
            message,
            [
                stream.event("response.content_part.added", **where, part=part),
                stream.event("response.output_text.delta", **where, delta=step.text, logprobs=[]),
                stream.event("response.output_text.done", **where, text=step.text, logprobs=[]),
                stream.event("response.content_part.done", **where, part=done_part),
            ],
            {**message, "status": "completed", "content": [done_part]},
        )
    call_id = _id("call")
    if isinstance(step, Call):
        item_id, arguments = _id("fc"), json.dumps(step.arguments)
        call = {
            "id": item_id,
            "type": "function_call",
            "status": "in_progress",
            "call_id": call_id,
            "name": step.name,
            "arguments": "",
        }
        where = {"item_id": item_id, "output_index": 0}
        return stream.item(
            0,
            call,
            [
                stream.event("response.function_call_arguments.delta", **where, delta=arguments),
                stream.event("response.function_call_arguments.done", **where, arguments=arguments),
            ],
            {**call, "status": "completed", "arguments": arguments},
        )
    item_id = _id("ctc")
    custom = {
        "id": item_id,
        "type": "custom_tool_call",
        "status": "in_progress",
        "call_id": call_id,
        "name": step.name,
        "input": "",
    }
    where = {"item_id": item_id, "output_index": 0}
    return stream.item(
        0,
        custom,
        [
            stream.event("response.custom_tool_call_input.delta", **where, delta=step.input),
            stream.event("response.custom_tool_call_input.done", **where, input=step.input),
        ],
        {**custom, "status": "completed", "input": step.input},
    )


class _Api:
    def __init__(self, state: ResponsesState) -> None:
        self.state = state

    async def any(self, request: Request) -> Response:
        if request.method != "POST" or request.url.path.rstrip("/") != "/v1/responses":
            self.state.others.append(f"{request.method} {request.url.path}")
            return Response(status_code=404)
        body = await request.json()
        self.state.requests.append(body)
        index = len(tool_outputs(body))
        step: Step = self.state.script[index] if index < len(self.state.script) else Text("done")
        return StreamingResponse(
            self._stream(str(body.get("model", "")), step), media_type="text/event-stream"
        )

    async def _stream(self, model: str, step: Step) -> AsyncIterator[bytes]:
        stream = _Stream(model)
        yield stream.event("response.created", response=dict(stream.response))
        yield stream.event("response.in_progress", response=dict(stream.response))
        if isinstance(step, Stall):
            self.state.stalled.set()
            await asyncio.sleep(3600)  # until the client disconnects and the response is cancelled
            return
        for event in _events(stream, step):
            yield event
        stream.response["status"] = "completed"
        stream.response["usage"] = {
            "input_tokens": 20,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 10,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 30,
        }
        yield stream.event("response.completed", response=stream.response)


class ResponsesServer(LoopbackServer):
    """`async with ResponsesServer(state) as server:` → `server.url` is the provider's base URL
    (`…/v1`, the `base_url` of a Codex model provider)."""

    def __init__(self, state: ResponsesState) -> None:
        self.state = state
        api = _Api(state)
        app = Starlette(routes=[Route("/{path:path}", api.any, methods=["GET", "HEAD", "POST"])])
        super().__init__(app, suffix="/v1", force_exit=True)
