"""One browser tab's multiplexed stream: its topics, its position, and the bounded queue of frames
waiting to be written.

Frames arrive already rendered (shared bytes); the connection only adds its `id:` line. The queue is
bounded: a tab that cannot keep up is ended with `end {reason: "lagging", resume_from}` and resumes
from the last frame it really got. The writer sends a `bookmark` after `heartbeat_seconds` of silence
and ends with `rotate` after ~`max_stream_seconds` (jittered 0.9-1.0 so tabs do not reconnect in step).
"""

from __future__ import annotations

import asyncio
import collections
import random
import secrets
from collections.abc import AsyncIterator

from gateway import metrics
from gateway.auth.sessions import Principal
from gateway.stream import frames
from gateway.stream.frames import Frame
from gateway.stream.topics import Topic
from services.platform.aio import wait_event


class Connection:
    """A tab's SSE stream. `deliver` is called by shared upstreams; `frames()` feeds the response."""

    def __init__(
        self,
        principal: Principal,
        *,
        heartbeat_seconds: float = 15.0,
        max_stream_seconds: float = 600.0,
        queue_size: int = 1000,
    ) -> None:
        self.id = secrets.token_urlsafe(12)
        self.principal = principal
        self.topics: dict[str, Topic] = {}
        self.tokens: dict[str, str] = {}
        self.end_reason: str | None = None
        self.last_position = ""
        self._heartbeat = heartbeat_seconds
        self._lifetime = max_stream_seconds * random.uniform(0.9, 1.0)
        self._queue: collections.deque[tuple[bytes | None, str]] = collections.deque()
        self._queue_size = queue_size
        self._wake = asyncio.Event()

    def position(self) -> str:
        """The id of the next frame: every topic with the last token it was handed."""
        return frames.encode_position(self.tokens)

    def deliver(self, label: str, frame: Frame | None, token: str | None, *, drop: bool = False) -> None:
        """Queue `frame` (None: only advance the topic's token). `drop` removes the topic after it."""
        if self.end_reason is not None or label not in self.tokens:
            return
        if drop:
            self.tokens.pop(label, None)
            self.topics.pop(label, None)
        elif token is not None:
            self.tokens[label] = token
        self._enqueue(frame)

    def push(self, frame: Frame, *, position: str | None = None) -> None:
        """Queue a connection-level frame (hello, subscribed, topic errors) at the current position
        (or at `position`: the hello of a resumed stream carries the position it resumes from)."""
        if self.end_reason is None:
            self._enqueue(frame, position)

    def _enqueue(self, frame: Frame | None, position: str | None = None) -> None:
        if len(self._queue) >= self._queue_size:
            self.end("lagging")
            return
        if position is None:
            position = self.position()
        self._queue.append((frames.encode(frame, position) if frame is not None else None, position))
        self._wake.set()

    def end(self, reason: str) -> None:
        """End the stream after the frame being written: `draining`, `rotate`, `lagging`, `signed_out`."""
        if self.end_reason is None:
            self.end_reason = reason
            self._queue.clear()
            self._wake.set()

    async def frames(self) -> AsyncIterator[bytes]:
        """The bytes to write, until an end frame (which is always the last one)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lifetime
        while True:
            while self._queue and self.end_reason is None:
                data, self.last_position = self._queue.popleft()
                if data is not None:
                    yield data
            if self.end_reason is not None:
                metrics.STREAM_ENDS.labels(self.end_reason).inc()
                yield frames.encode(frames.end(self.end_reason, self.last_position), self.last_position)
                return
            self._wake.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                self.end("rotate")
                continue
            if not await wait_event(self._wake, min(self._heartbeat, remaining)):
                if loop.time() < deadline:
                    self.last_position = self.position()
                    yield frames.encode(frames.bookmark(), self.last_position)
