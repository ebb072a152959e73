"""Gateway users: `GatewayHttpUser` runs the same mix as MeshGrpcUser through the JSON API (dev
sign-in cookie + CSRF header, as the workbench does); `SseUser` holds the browser stream
(`GET /v1/stream`) open and reports each as an `SSE` request: response time = time to the first
`snapshot`, response length = frames received."""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

import gevent
import requests
from locust import HttpUser, between, task
from locust.clients import HttpSession

from load.config import stream_seconds, wait_seconds
from load.users.shared import push_bounded, targets, world

KEEP_TASKS = 2
KEEP_SESSIONS = 3


def sign_in(client: HttpSession, login: str) -> None:
    """Dev sign-in: fetch the CSRF cookie, echo it in X-CSRF-Token, POST /v1/auth/dev/signIn."""
    client.get("/v1/auth/session", name="/v1/auth/session")
    client.headers["X-CSRF-Token"] = client.cookies.get("foundry_csrf") or ""
    response = client.post("/v1/auth/dev/signIn", json={"login": login}, name="/v1/auth/dev/signIn")
    response.raise_for_status()


class GatewayHttpUser(HttpUser):
    """The workbench's request mix over the gateway's JSON API."""

    weight = 3
    wait_time = between(0.05, wait_seconds())
    host = targets().gateway_url

    def on_start(self) -> None:
        self.world = world()
        sign_in(self.client, self.world.login)
        self.my_tasks: deque[str] = deque()
        self.my_sessions: deque[str] = deque()
        self.sent = 0

    def _post(self, path: str, body: dict[str, Any], name: str) -> dict[str, Any] | None:
        response = self.client.post(f"/v1/{path}", json=body, name=name)
        return response.json() if response.ok else None

    @task(5)
    def organization_summary(self) -> None:
        self.client.get(f"/v1/{self.world.organization}/summary", name="/v1/[org]/summary")

    @task(8)
    def get_task(self) -> None:
        name = self.my_tasks[-1] if self.my_tasks and self.sent % 2 else self.world.task
        self.client.get(f"/v1/{name}", name="/v1/[task]")

    @task(1)
    def create_task(self) -> None:
        body = {"task": {"repository": self.world.repository, "prompt": "load test: say hello"}}
        created = self._post(f"{self.world.organization}/tasks", body, "/v1/[org]/tasks")
        if created is not None:
            old = push_bounded(self.my_tasks, created["task"]["name"], KEEP_TASKS)
            if old:
                self._post(f"{old}:archive", {"reason": "load test"}, "/v1/[task]:archive")

    @task(1)
    def create_session(self) -> None:
        created = self._post(
            f"{self.world.task}/sessions", {"session": {"displayName": "load"}}, "/v1/[task]/sessions"
        )
        if created is not None:
            old = push_bounded(self.my_sessions, created["session"]["name"], KEEP_SESSIONS)
            if old:
                self._post(f"{old}:close", {}, "/v1/[session]:close")

    @task(2)
    def send_message(self) -> None:
        self.sent += 1
        self._post(
            f"{self.world.session}:sendMessage",
            {"text": f"load test message {self.sent}"},
            "/v1/[session]:sendMessage",
        )


class SseUser(HttpUser):
    """A browser tab: one SSE stream on the shared task and organization, held for a while."""

    weight = 1
    wait_time = between(0.1, 0.5)
    host = targets().gateway_url

    def on_start(self) -> None:
        self.world = world()
        sign_in(self.client, self.world.login)

    @task
    def stream(self) -> None:
        topics = [f"task:{self.world.task}", f"organization:{self.world.organization}"]
        hold = stream_seconds()
        began = time.perf_counter()
        first: float | None = None
        frames = 0
        exception: BaseException | None = None
        # A plain requests call (same cookies) so the connect is not counted as a second request.
        try:
            with requests.get(
                f"{self.host}/v1/stream",
                params={"topic": topics},
                cookies=self.client.cookies,
                stream=True,
                timeout=(10, hold + 30),
            ) as response:
                response.raise_for_status()
                event = ""
                with gevent.Timeout(hold, False):  # the hold ends the stream, not an error
                    for raw in response.iter_lines(decode_unicode=True):
                        line = raw if isinstance(raw, str) else raw.decode()
                        if line.startswith("event: "):
                            event, frames = line[7:], frames + 1
                            if first is None and event == "snapshot":
                                first = time.perf_counter() - began
                        elif line.startswith("data: ") and event == "error":  # a topic was refused
                            exception = RuntimeError(json.loads(line[6:]).get("message", line))
        except (requests.RequestException, ValueError) as exc:
            exception = exc
        if first is None and exception is None:
            exception = RuntimeError(f"no snapshot within {hold:g} s")
        self.environment.events.request.fire(
            request_type="SSE",
            name="/v1/stream",
            response_time=(first if first is not None else time.perf_counter() - began) * 1000,
            response_length=frames,
            response=None,
            context=None,
            exception=exception,
        )
