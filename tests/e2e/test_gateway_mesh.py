"""The gateway in front of the real embedded mesh (`python -m services.embedded`): browser clients on
one organization share one upstream Watch (checked on the admin /metrics), and a gateway killed and
restarted mid-stream resumes every open page (two tabs, every topic kind) without a refetch and
without losing a change.

`embedded_mesh()` and `BrowserClient` are reused by tests/e2e/test_browser.py.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import json
import subprocess
import traceback
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.stream import frames
from tests.helpers import assert_eventually, free_port
from tests.helpers.procs import MeshPorts, spawn, stop, wait_healthy
from tests.unit.gateway.harness import SseEvent, SseReader, page_state, ready_task

TEST_SECONDS = 150  # the restart test's own bound: a hang fails here, with logs, before pytest-timeout
# A page's stream read gives up after three of the gateway's 15 s heartbeats (`bookmark`) were missed.
# (With read=15 the client's timeout raced the heartbeat and a quiet tab reconnected every 15 s; a
# browser's EventSource has no read timeout at all.)
STREAM_TIMEOUT = httpx.Timeout(15, read=45)

pytestmark = pytest.mark.e2e


@dataclass
class EmbeddedMesh:
    ports: MeshPorts
    proc: subprocess.Popen[bytes]
    log: Path
    env: dict[str, str]
    repos: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log.read_text(errors="replace")[-chars:]

    async def metric(self, name: str, **labels: str) -> float:
        """A sample from the process's admin /metrics (0 when absent)."""
        async with httpx.AsyncClient() as client:
            text = (
                await client.get(f"http://127.0.0.1:{self.ports.admin}/metrics", follow_redirects=True)
            ).text
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in text.splitlines():
            if line.startswith(f"{name}{{{want}}} ") or (not labels and line.startswith(f"{name} ")):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def make_repos(root: Path) -> Path:
    """A directory holding one real git repository (`demo`) with one commit."""
    repo = root / "repos" / "demo"
    repo.mkdir(parents=True)
    (repo / "README.md").write_text("# demo\n")
    git = ["git", "-c", "user.name=Test", "-c", "user.email=test@localhost"]
    subprocess.run([*git, "init", "-q", "-b", "main"], cwd=repo, check=True)
    subprocess.run([*git, "add", "."], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "init"], cwd=repo, check=True)
    return repo.parent


@contextlib.asynccontextmanager
async def embedded_mesh(tmp_path: Path) -> AsyncIterator[EmbeddedMesh]:
    ports = MeshPorts()
    env = {
        **ports.env(),
        "FOUNDRY_DATA_DIR": str(tmp_path / "data"),
        "FOUNDRY_LOG_FORMAT": "console",
        "FOUNDRY_GATEWAY__PUBLIC_URL": f"http://127.0.0.1:{ports.gateway}",
    }
    log = tmp_path / "embedded.log"
    proc = spawn("services.embedded", env, log_path=log)
    mesh = EmbeddedMesh(ports, proc, log, env, make_repos(tmp_path))
    try:
        try:
            await wait_healthy(ports, proc)
        except (RuntimeError, TimeoutError) as exc:
            raise AssertionError(f"embedded mesh did not start: {exc}\n{mesh.log_tail()}") from exc
        yield mesh
    finally:
        stop(proc)


class BrowserClient:
    """A cookie-keeping HTTP client that behaves like the workbench (CSRF header, dev sign-in)."""

    def __init__(self, url: str) -> None:
        self.http = httpx.AsyncClient(base_url=url, timeout=15)

    async def sign_in(self, login: str) -> BrowserClient:
        await self.http.get("/v1/auth/session")
        self.http.headers["x-csrf-token"] = self.http.cookies["foundry_csrf"]
        response = await self.http.post("/v1/auth/dev/signIn", json={"login": login})
        assert response.status_code == 200, response.text
        return self

    async def connect_local(self, root: Path) -> str:
        response = await self.http.post("/v1/organizations:connectLocal", json={"rootPath": str(root)})
        assert response.status_code == 200, response.text
        return str(response.json()["organization"]["name"])

    async def repository(self, org: str) -> str:
        """The name of the first synced repository (waits for the first sync)."""

        async def synced() -> str:
            response = await self.http.get(f"/v1/{org}/repositories")
            assert response.status_code == 200, response.text
            repos = response.json().get("repositories", [])
            assert repos, "no repository synced yet"
            return str(repos[0]["name"])

        return await assert_eventually(synced, timeout=30, interval=0.2)

    async def close(self) -> None:
        await self.http.aclose()


async def test_second_browser_on_same_organization_opens_no_second_upstream(tmp_path: Path) -> None:
    async with embedded_mesh(tmp_path) as mesh:
        alice = await BrowserClient(mesh.url).sign_in("alice")
        org = await alice.connect_local(mesh.repos)
        topic = f"organization:{org}"
        before = await mesh.metric("foundry_gateway_upstream_streams", topic_type="organization")
        tabs = []
        try:
            async with contextlib.AsyncExitStack() as stack:
                for _ in range(2):
                    response = await stack.enter_async_context(
                        alice.http.stream("GET", f"/v1/stream?topic={topic}")
                    )
                    assert response.status_code == 200, (await response.aread()).decode()
                    tabs.append(SseReader(response))
                for tab in tabs:
                    snapshot = await tab.until("snapshot", within=20)
                    assert snapshot.data["topic"] == topic
                assert (
                    await mesh.metric("foundry_gateway_upstream_streams", topic_type="organization")
                    == before + 1
                )
                assert await mesh.metric("foundry_gateway_subscribers", topic_type="organization") == 2
        finally:
            await alice.close()


class Page:
    """One workbench tab's multiplexed stream, kept open and read continuously, and reconnected the
    way the browser's EventSource and static/js/stream.js do it: after a network error, the same URL
    again with `Last-Event-ID` = the id of the last event received (which encodes every topic's
    token); after an `end` frame or a refused reconnect, a new stream with `?resume=<that id>`."""

    def __init__(self, http: httpx.AsyncClient, url: str, name: str = "") -> None:
        self.http = http
        self.url = url
        self.name = name or url
        self.last_id = ""
        self.stream_id = ""
        self.connections: list[list[SseEvent]] = []  # the events of each connection, in order
        self.attempts: collections.deque[str] = collections.deque(maxlen=12)  # the last reconnects
        self._task: asyncio.Task[None] | None = None

    @property
    def events(self) -> list[SseEvent]:
        return [event for connection in self.connections for event in connection]

    def state(self) -> dict[str, dict[str, Any]]:
        return page_state(self.events)

    def start(self) -> Page:
        self._task = asyncio.create_task(self._run(), name=f"page:{self.name}")
        return self

    async def close(self, within: float = 10.0) -> None:
        """Stop reading. Bounded: a reader still running `within` seconds after its cancel, or one
        that crashed, fails the test (with its stack) instead of being awaited forever."""
        task = self._task
        if task is None:
            return
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=within)
        if not task.done():
            stack = io.StringIO()
            task.print_stack(file=stack)
            raise AssertionError(f"{self.name}: still reading {within}s after its cancel\n{stack.getvalue()}")
        if not task.cancelled() and (exc := task.exception()) is not None:
            raise AssertionError(f"{self.name}: its reader crashed: {exc!r}") from exc

    def describe(self) -> str:
        """Where this tab is: its connections, the last events of the current one, the last attempts."""
        task = self._task
        status = "not started" if task is None else "running" if not task.done() else "stopped"
        current = self.connections[-1] if self.connections else []
        last = [f"{e.event} {e.data.get('topic', '')}".strip() for e in current[-6:]]
        return (
            f"{self.name}: reader {status}, stream {self.stream_id or '-'}, {len(self.connections)} "
            f"connection(s), {len(self.events)} event(s); last events {last}; "
            f"last attempts {list(self.attempts)}"
        )

    async def subscribe(self, topics: list[str]) -> None:
        """Add topics to the open stream (what stream.js does when a view subscribes)."""
        response = await self.http.post(f"/v1/streams/{self.stream_id}:subscribe", json={"topics": topics})
        assert response.status_code == 200 and response.json()["errors"] == [], response.text

    async def _run(self) -> None:
        url, headers = self.url, dict[str, str]()
        while True:
            resume_by_url = False
            try:
                async with self.http.stream("GET", url, headers=headers, timeout=STREAM_TIMEOUT) as response:
                    if response.status_code != 200:  # EventSource gives up; stream.js reopens
                        self.attempts.append(f"{response.status_code} {response.reason_phrase}")
                        await asyncio.sleep(1)
                        url, headers = f"/v1/stream?resume={self.last_id}", {}
                        continue
                    events = list[SseEvent]()
                    self.connections.append(events)
                    async with contextlib.aclosing(_sse_events(response)) as stream:
                        async for event in stream:
                            events.append(event)
                            self.last_id = event.id or self.last_id
                            if event.event == "hello":
                                self.stream_id = event.data["stream"]
                            elif event.event == "end":
                                url, headers = f"/v1/stream?resume={event.data['resume_from']}", {}
                                resume_by_url = True
                                break
                    if not resume_by_url:
                        self.attempts.append("stream closed without an end frame")
            except httpx.HTTPError as exc:  # cut off (or nothing listening)
                self.attempts.append(f"{type(exc).__name__}: {exc}")
            if not resume_by_url:  # EventSource retries the same URL with Last-Event-ID
                headers = {"Last-Event-ID": self.last_id} if self.last_id else {}
                await asyncio.sleep(0.2)


async def _sse_events(response: httpx.Response) -> AsyncGenerator[SseEvent, None]:
    """The SSE events of `response`, parsed in the reading task itself.

    Not `SseReader.next()`: that wraps each read in `asyncio.wait_for`, which on Python 3.11 runs it
    in an inner task and swallows a cancel that arrives just after an event was parsed (CPython
    gh-86296; see services/platform/aio.py). A `Page` cancelled while its stream delivered a burst
    then went on reading, and `close()` awaited it forever (this test's CI hang)."""
    fields: dict[str, str] = {}
    async for line in response.aiter_lines():
        if line == "":
            if fields:
                data = json.loads(fields.get("data", "{}"))
                yield SseEvent(fields.get("id", ""), fields.get("event", "message"), data)
                fields = {}
        elif not line.startswith(":"):
            key, _, value = line.partition(": ")
            fields[key] = value


async def test_restarted_gateway_resumes_every_open_page_without_refetch(tmp_path: Path) -> None:
    """Two workbench tabs, each with one multiplexed stream carrying the app, organization summary,
    task, session, transcript and sandbox processes topics, are connected to a gateway and reading
    when it is SIGKILLed mid-reply. While it is down the tabs keep reconnecting and the user keeps
    changing things (through another gateway); a new gateway process comes up on the same port, the
    tabs reconnect as the browser does, and more changes follow. No topic of either tab is sent a
    `snapshot` after the reconnect, and each tab converges to exactly what a fresh page bootstraps:
    nothing made during or after the outage was lost.

    The whole scenario is bounded (`TEST_SECONDS`); any failure, a hang included, reports where it
    was, every tab's state and the tails of the mesh's and both gateways' logs."""
    pages: list[Page] = []
    try:
        async with asyncio.timeout(TEST_SECONDS):
            await _restart_scenario(tmp_path, pages)
    except Exception as exc:
        raise AssertionError(_failure_report(exc, tmp_path, pages)) from exc


async def _restart_scenario(tmp_path: Path, pages: list[Page]) -> None:
    """The test's body; `pages` gets every tab it opens (for the failure report)."""
    async with embedded_mesh(tmp_path) as mesh, contextlib.AsyncExitStack() as cleanup:
        alice = await BrowserClient(mesh.url).sign_in("alice")
        cleanup.push_async_callback(alice.close)
        org = await alice.connect_local(mesh.repos)
        ready = await ready_task(alice.http, org, await alice.repository(org))
        task, session = ready["task"], ready["session"]
        sandbox, agent_session = task["sandbox"]["name"], session["sandboxSession"]
        shell = ["app", f"organization:{org}"]  # what the workbench shows before a task is opened
        task_page = [f"task:{task['name']}", f"session:{session['name']}"]
        task_page += [f"transcript:{agent_session}", f"processes:{sandbox}"]
        topics = shell + task_page

        async def send(text: str) -> None:
            sent = await alice.http.post(
                f"/v1/{session['name']}:sendMessage", json={"text": text, "requestId": str(uuid.uuid4())}
            )
            assert sent.status_code == 200, sent.text

        async def replied(text: str) -> None:  # the agent's turn on `text` is over
            async def done() -> None:
                response = await alice.http.get(f"/v1/{agent_session}/events", params={"pageSize": 1000})
                events = response.json().get("sessionEvents", [])
                turns = {e["turn"] for e in events if e.get("text") == text}
                assert turns, f"{text!r} not transcribed yet"
                assert any(
                    e["kind"] == "SESSION_EVENT_KIND_TURN_COMPLETED" and e["turn"] in turns for e in events
                ), f"the turn on {text!r} is not over"

            await assert_eventually(done, timeout=30, interval=0.1)

        port = free_port()
        env = {**mesh.env, "FOUNDRY_GATEWAY_PORT": str(port), "FOUNDRY_METRICS_PORT": str(free_port())}
        url = f"http://127.0.0.1:{port}"
        gateways = [spawn("gateway", env, log_path=tmp_path / "gateway1.log")]
        cleanup.callback(lambda: [stop(gateway, timeout=20) for gateway in gateways])
        http = httpx.AsyncClient(base_url=url, cookies=alice.http.cookies, timeout=15)
        cleanup.push_async_callback(http.aclose)
        http.headers["x-csrf-token"] = alice.http.headers["x-csrf-token"]
        query = "&".join(f"topic={t}" for t in shell)
        tabs = [
            Page(http, f"/v1/stream?{query}", "tab 1"),
            Page(http, "/v1/stream?" + "&".join(f"topic={t}" for t in topics), "tab 2"),
        ]
        for page in tabs:
            pages.append(page)
            cleanup.push_async_callback(page.close)

        await assert_eventually(lambda: _ready(url), timeout=30)
        for page in tabs:
            page.start()
        await assert_eventually(lambda: _check(all(p.stream_id for p in tabs)), timeout=20)
        await tabs[0].subscribe(task_page)  # tab 1 opened the task page on its open stream
        await assert_eventually(lambda: _bootstrapped(tabs, topics), timeout=30)
        await send("before the outage")
        await replied("before the outage")

        await send("write killed.txt: mid-reply")  # the reply is streaming in when the gateway dies
        gateways[0].kill()  # SIGKILL: no drain, no end frame
        gateways[0].wait(10)
        killed_at = [len(p.connections) for p in tabs]

        # While the gateway is down (the tabs keep retrying): a turn, an organization, a task, a process.
        await send("during the outage")
        other = await alice.connect_local(_empty_dir(tmp_path / "other"))
        second = await alice.http.post(
            f"/v1/{org}/tasks", json={"task": {"repository": task["repository"], "prompt": "second task"}}
        )
        assert second.status_code == 200, second.text
        process = await alice.http.post(
            f"/v1/{sandbox}/processes",
            json={"process": {"command": "true"}, "requestId": str(uuid.uuid4())},
        )
        assert process.status_code == 200, process.text
        await replied("during the outage")

        gateways.append(spawn("gateway", env, log_path=tmp_path / "gateway2.log"))
        await assert_eventually(lambda: _ready(url), timeout=30)
        await assert_eventually(
            lambda: _check(all(len(p.connections) > n for p, n in zip(tabs, killed_at, strict=True))),
            timeout=20,
        )
        await send("after the restart")
        await replied("after the restart")

        fresh = Page(http, "/v1/stream?" + "&".join(f"topic={t}" for t in topics), "fresh page")
        pages.append(fresh)
        fresh.start()
        try:
            await assert_eventually(lambda: _bootstrapped([fresh], topics), timeout=30)

            def converged() -> None:
                want = fresh.state()
                for page in tabs:
                    assert page.state() == want, _difference(page.name, page.state(), want)

            await assert_eventually(converged, timeout=30, interval=0.2)
        finally:
            await fresh.close()
        state = tabs[0].state()
        texts = {i.get("text") for i in state[f"transcript:{agent_session}"].values()}
        assert {"before the outage", "during the outage", "after the restart"} <= texts, texts
        assert other in state["app"], list(state["app"])
        assert second.json()["task"]["name"] in state[f"organization:{org}"]
        assert process.json()["process"]["name"] in state[f"processes:{sandbox}"]
        for page, n in zip(tabs, killed_at, strict=True):
            after = [e for connection in page.connections[n:] for e in connection]
            assert after and after[0].event == "hello", after[:1]
            snapshots = [e.data["topic"] for e in after if e.event in ("snapshot", "reset")]
            assert snapshots == [], f"{page.name} was refetched after the reconnect: {snapshots}"
            # Every topic came back by its token (the hello already carries them).
            resumed = frames.decode_position(after[0].id)
            assert sorted(resumed) == sorted(topics) and all(resumed.values()), resumed
            subscribed = next(e for e in after if e.event == "subscribed")
            assert sorted(subscribed.data["topics"]) == sorted(topics), subscribed.data


def _failure_report(exc: BaseException, tmp_path: Path, pages: list[Page]) -> str:
    """What failed (for a hang: the line the test was stuck at), every tab, and the logs' tails."""
    if isinstance(exc, TimeoutError):
        lines = [f"the test did not finish in {TEST_SECONDS}s; stuck at:", *_stuck_at(exc)]
    else:
        lines = [f"{type(exc).__name__}: {exc}"]
    lines += ["", "tabs:", *(f"  {page.describe()}" for page in pages)]
    for name, chars in (("gateway1.log", 3000), ("gateway2.log", 3000), ("embedded.log", 6000)):
        log = tmp_path / name
        text = log.read_text(errors="replace")[-chars:] if log.exists() else "(none)"
        lines += ["", f"--- tail of {name} ---", text]
    return "\n".join(lines)


def _stuck_at(exc: BaseException) -> list[str]:
    """The project's frames the cancel behind a `TimeoutError` of `asyncio.timeout` went through,
    innermost last: where the test was waiting when its time ran out."""
    seen: BaseException | None = exc
    while seen is not None and not isinstance(seen, asyncio.CancelledError):
        seen = seen.__cause__ or seen.__context__
    if seen is None:
        return ["  (unknown)"]
    root = Path(__file__).resolve().parents[2]
    ours = [
        f
        for f in traceback.extract_tb(seen.__traceback__)
        if Path(f.filename).is_relative_to(root) and ".venv" not in Path(f.filename).parts
    ]
    return [f"  {Path(f.filename).relative_to(root)}:{f.lineno} in {f.name}: {f.line}" for f in ours] or [
        "  (outside the project)"
    ]


def _check(condition: bool) -> None:
    assert condition


def _bootstrapped(pages: list[Page], topics: list[str]) -> None:
    for page in pages:
        have = {e.data["topic"] for e in page.events if e.event == "snapshot"}
        assert set(topics) <= have, set(topics) - have


def _difference(who: str, page: dict[str, Any], fresh: dict[str, Any]) -> str:
    lines = [f"{who} differs from a fresh bootstrap:"]
    for topic in sorted(set(page) | set(fresh)):
        mine, theirs = page.get(topic, {}), fresh.get(topic, {})
        for name in sorted(set(mine) | set(theirs)):
            if mine.get(name) != theirs.get(name):
                lines.append(f"  {topic} {name}: tab={mine.get(name)} fresh={theirs.get(name)}")
    return "\n".join(lines)


def _empty_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


async def _ready(url: str) -> None:
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/readyz")).status_code == 200
    except httpx.HTTPError as exc:
        raise AssertionError(str(exc)) from exc
