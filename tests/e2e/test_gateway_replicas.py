"""Two gateway replicas behind one address (a round-robin TCP balancer, one upstream per new
connection, as a layer-4 load balancer without affinity does): workbench tabs open their stream on
either replica, add topics with `:subscribe` (which may reach the other replica: 404, and the tab
reopens as static/js/stream.js does), resume on either after their connections are cut, and every
tab ends with exactly what a fresh page bootstraps."""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from tests.e2e.test_gateway_mesh import BrowserClient, _ready, embedded_mesh
from tests.helpers import assert_eventually, free_port
from tests.helpers.procs import spawn, stop
from tests.unit.gateway.harness import SseEvent, SseReader, page_state, ready_task

pytestmark = pytest.mark.e2e


class RoundRobin:
    """A TCP balancer on one port: each new connection goes to the next upstream port in turn."""

    def __init__(self, upstreams: list[int]) -> None:
        self.upstreams = upstreams
        self.port = free_port()
        self.connections: Counter[int] = Counter()  # per upstream port
        self._next = 0
        self._pipes: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        port = self.upstreams[self._next % len(self.upstreams)]
        self._next += 1
        self.connections[port] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            writer.close()
            return
        for src, dst in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.create_task(self._pipe(src, dst))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    @staticmethod
    async def _pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        try:
            while data := await src.read(65536):
                dst.write(data)
                await dst.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            dst.close()

    async def cut_all(self) -> None:
        """Reset every open connection (a balancer restart): the tabs reconnect."""
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def close(self) -> None:
        await self.cut_all()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class Tab:
    """One workbench tab's stream, behaving like static/js/stream.js: `listen(topics)` POSTs
    `:subscribe`; on 404 (the stream lives on the other replica) it reopens with `?resume=<last id>`
    and every topic it listens to. A cut connection reconnects with Last-Event-ID, like EventSource."""

    def __init__(self, http: httpx.AsyncClient, topics: list[str]) -> None:
        self.http = http
        self.topics = list(topics)
        self.last_id = ""
        self.stream_id = ""
        self.connections: list[list[SseEvent]] = []
        self.reopened_after_404 = 0
        self._task: asyncio.Task[None] | None = None
        self._response: httpx.Response | None = None
        self._hello = asyncio.Event()

    @property
    def events(self) -> list[SseEvent]:
        return [e for c in self.connections for e in c]

    def state(self) -> dict[str, dict[str, Any]]:
        return page_state(self.events)

    def _url(self, resume: str) -> str:
        query = "&".join(f"topic={quote(t, safe=':/')}" for t in self.topics)
        return f"/v1/stream?resume={resume}&{query}" if resume else f"/v1/stream?{query}"

    def open(self, resume: str = "") -> None:
        assert self._task is None, "close() the tab's stream first"
        self._hello.clear()
        self._task = asyncio.create_task(self._run(self._url(resume)))

    async def _run(self, url: str) -> None:
        headers: dict[str, str] = {}
        while asyncio.current_task() is self._task:
            try:
                async with self.http.stream("GET", url, headers=headers) as response:
                    self._response = response
                    if response.status_code != 200:
                        await asyncio.sleep(0.5)
                        url, headers = self._url(self.last_id), {}
                        continue
                    reader, events = SseReader(response), list[SseEvent]()
                    self.connections.append(events)
                    while True:
                        event = await reader.next(3600)
                        if asyncio.current_task() is not self._task:
                            return  # closed, its cancel absorbed by httpx: never mix in a dead stream
                        events.append(event)
                        self.last_id = event.id or self.last_id
                        if event.event == "hello":
                            self.stream_id = event.data["stream"]
                            self._hello.set()
                        elif event.event == "end":
                            url, headers = self._url(event.data["resume_from"]), {}
                            break
            except (httpx.HTTPError, EOFError):
                headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
                await asyncio.sleep(0.2)

    async def listen(self, topics: list[str]) -> None:
        await asyncio.wait_for(self._hello.wait(), 20)
        self.topics += [t for t in topics if t not in self.topics]
        response = await self.http.post(f"/v1/streams/{self.stream_id}:subscribe", json={"topics": topics})
        if response.status_code == 404:
            self.reopened_after_404 += 1
            await self.close()
            self.open(self.last_id)
        else:
            assert response.status_code == 200 and response.json()["errors"] == [], response.text

    async def close(self) -> None:
        """Stop reading, bounded: a cancel that lands inside httpx's read of the stream can be
        absorbed there (the task then reads on, the stream's heartbeats keeping it busy), and an
        unbounded wait hung the test in its `finally` for 300 s, hiding what had failed."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        _, pending = await asyncio.wait({task}, timeout=5)
        if pending and self._response is not None:
            await self._response.aclose()  # the read ends with the connection
            _, pending = await asyncio.wait({task}, timeout=5)
        if pending:
            print(f"a tab's reader did not stop: {task!r}")
        elif not task.cancelled() and task.exception() is not None:
            print(f"a tab's reader failed: {task.exception()!r}")


async def test_tabs_subscribe_resume_and_receive_on_either_gateway_replica(tmp_path: Path) -> None:
    async with embedded_mesh(tmp_path) as mesh:
        alice = await BrowserClient(mesh.url).sign_in("alice")
        org = await alice.connect_local(mesh.repos)
        ready = await ready_task(alice.http, org, await alice.repository(org))
        task, session = ready["task"], ready["session"]
        shell = ["app", f"organization:{org}"]
        task_page = [f"task:{task['name']}", f"session:{session['name']}"]
        task_page.append(f"transcript:{session['sandboxSession']}")

        second_port = free_port()
        env = {**mesh.env, "FOUNDRY_GATEWAY_PORT": str(second_port), "FOUNDRY_METRICS_PORT": str(free_port())}
        second = spawn("gateway", env, log_path=tmp_path / "gateway2.log")
        balancer = RoundRobin([mesh.ports.gateway, second_port])
        # No keep-alive: every request is a new connection, so the balancer alternates replicas.
        http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{balancer.port}",
            cookies=alice.http.cookies,
            headers={"x-csrf-token": alice.http.headers["x-csrf-token"]},
            limits=httpx.Limits(max_keepalive_connections=0),
            timeout=15,
        )
        tabs = [Tab(http, shell) for _ in range(4)]
        try:
            await balancer.start()
            await assert_eventually(lambda: _ready(f"http://127.0.0.1:{second_port}"), timeout=30)
            for tab in tabs:  # one at a time: the `:subscribe` is the connection after the stream's
                tab.open()
                await tab.listen(task_page)  # the workbench opens the task page on its open stream
                await assert_eventually(functools.partial(_bootstrapped, tab, shell + task_page), timeout=30)

            # With alternating connections each `:subscribe` reached the replica without the stream.
            assert all(t.reopened_after_404 for t in tabs), [t.reopened_after_404 for t in tabs]

            await _send(alice.http, session["name"], "before the cut")
            cut_at = [len(t.connections) for t in tabs]
            await balancer.cut_all()  # every tab reconnects with Last-Event-ID, to either replica
            await _send(alice.http, session["name"], "after the cut")

            fresh = Tab(http, shell + task_page)
            fresh.open()
            try:

                async def converged() -> None:
                    want = fresh.state()
                    texts = {i.get("text") for i in want.get(task_page[2], {}).values()}
                    assert {"before the cut", "after the cut"} <= texts, texts
                    for i, tab in enumerate(tabs):
                        assert tab.state() == want, f"tab {i + 1} differs from a fresh bootstrap"

                await assert_eventually(converged, timeout=45, interval=0.2)
            finally:
                await fresh.close()
            assert all(count > 0 for count in balancer.connections.values()), balancer.connections
            for i, (tab, n) in enumerate(zip(tabs, cut_at, strict=True)):
                after = [e for connection in tab.connections[n:] for e in connection]
                assert after and after[0].event == "hello", (i, after[:1])
                refetched = [e.data["topic"] for e in after if e.event in ("snapshot", "reset")]
                assert refetched == [], f"tab {i + 1} was refetched after the cut: {refetched}"
        finally:
            for tab in tabs:
                await tab.close()
            await http.aclose()
            await balancer.close()
            await alice.close()
            stop(second)


def _bootstrapped(tab: Tab, topics: list[str]) -> None:
    have = {e.data["topic"] for e in tab.events if e.event == "snapshot"}
    assert set(topics) <= have, set(topics) - have


async def _send(http: httpx.AsyncClient, session: str, text: str) -> None:
    sent = await http.post(f"/v1/{session}:sendMessage", json={"text": text, "requestId": str(uuid.uuid4())})
    assert sent.status_code == 200, sent.text
