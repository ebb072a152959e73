"""Run an ASGI app with uvicorn inside our event loop, leaving signal handling to the process runner."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:  # the process runner owns SIGTERM/SIGINT
        yield


class HttpServer:
    """An ASGI app on host:port. `start()` returns once the socket listens (port 0 picks a free port)."""

    def __init__(
        self,
        app: Any,
        host: str,
        port: int,
        *,
        name: str,
        http: type[asyncio.Protocol] | str = "auto",
        max_header_bytes: int | None = None,
    ) -> None:
        """`http` and `max_header_bytes` are uvicorn's `http` (protocol class) and
        `h11_max_incomplete_event_size` (h11's default, 16 KiB, when None)."""
        self.name = name
        self.host = host
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only; not REUSEPORT
        try:
            self._sock.bind((host, port))  # fails loudly if the port is taken
        except OSError as exc:
            self._sock.close()
            raise RuntimeError(f"{name}: cannot listen on {host}:{port}: {exc.strerror}") from exc
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn.Config(
            app,
            http=http,
            h11_max_incomplete_event_size=max_header_bytes,
            log_config=None,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=5,
        )
        self._server = _Server(config)
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._sock.listen(2048)
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]), name=f"http:{self.name}")
        while not self._server.started:
            if self._task.done():
                await self._task
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
