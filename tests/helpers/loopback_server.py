"""An ASGI app served by uvicorn on a free loopback port inside the test's event loop: the base of
the stand-ins for services the tests cannot reach (GitHub, the Anthropic and OpenAI model APIs)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any, Self

import uvicorn


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the test process keeps its own signal handlers
        yield


class LoopbackServer:
    """`async with server:` serves `app`; `server.url` is `http://127.0.0.1:{port}{suffix}`.

    `force_exit`: leaving closes open connections at once (for stand-ins that hold streams open)."""

    def __init__(self, app: Any, *, suffix: str = "", force_exit: bool = False) -> None:
        self._server = _Server(
            uvicorn.Config(
                app, host="127.0.0.1", port=0, log_level="warning", lifespan="off", access_log=False
            )
        )
        self._suffix, self._force_exit = suffix, force_exit
        self._task: asyncio.Task[None] | None = None
        self.url = ""

    async def __aenter__(self) -> Self:
        self._task = asyncio.create_task(self._server.serve())
        while not self._server.started:
            if self._task.done():
                self._task.result()
            await asyncio.sleep(0.01)
        port = self._server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{self._suffix}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.should_exit = True
        self._server.force_exit = self._force_exit
        if self._task is not None:
            await self._task
