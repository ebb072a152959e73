"""A real gateway in front of the real services, for the gateway's unit tests.

`running(tmp_path)` starts the organization and github-data service hosts (SQLite and the in-process
broker under `tmp_path`, free ports; see tests.helpers.mesh) and a `GatewayComponent` configured with
the same settings, so it finds them. Browsers are httpx clients; they sign in through the gateway and
become members of an organization the way a person does: by connecting a local directory
(`ConnectLocalOrganization`), which github-data then syncs. The organization summary changes when a
repository appears in that directory and a sync is requested (`Harness.add_repository`).

`SseReader` parses a browser stream and `page_state` applies its events as the workbench does (both
also used by tests/e2e).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from gateway.app import GatewayComponent
from services.embedded import service_wiring
from services.platform.server.host import ServiceHost
from services.platform.server.metrics import HANDLED
from services.platform.settings import MessagingSettings, ServiceName, Settings, WatchSettings
from tests.helpers import assert_eventually, unique_name
from tests.helpers.mesh import Mesh
from tests.helpers.mesh import running as running_mesh
from tests.unit.gateway.faults import TcpProxy

SUMMARY_WATCH = "/foundry.organization.v1.OrganizationService/WatchOrganizationSummary"
SYNCED = "SYNC_STATE_SYNCED"


def _summary_watches_handled() -> float:
    """WatchOrganizationSummary calls the organization service finished (any code), process-wide."""
    total = 0.0
    for metric in HANDLED.collect():
        for sample in metric.samples:
            labels = sample.labels
            if sample.name.endswith("_total") and labels.get("method") == SUMMARY_WATCH:
                total += sample.value
    return total


@dataclass
class Harness:
    settings: Settings  # the services' settings (their ports); the gateway's may differ (`proxy`)
    mesh: Mesh
    gateway: GatewayComponent
    root: Path  # organizations' directories live here
    proxy: TcpProxy | None = None
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    owners: dict[str, httpx.AsyncClient] = field(default_factory=dict)  # organization → who connected it
    _watches_before: float = 0.0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.gateway.port}"

    def host(self, service: ServiceName) -> ServiceHost:
        return self.mesh.hosts[service]

    # -- browsers ------------------------------------------------------------------------------
    async def browser(self) -> httpx.AsyncClient:
        """A cookie-keeping client that fetched the CSRF cookie like the workbench does."""
        client = httpx.AsyncClient(base_url=self.url, timeout=10)
        self.clients.append(client)
        await client.get("/v1/auth/session")
        client.headers["x-csrf-token"] = client.cookies["foundry_csrf"]
        return client

    async def signed_in(self, login: str, *, member_of: Sequence[str] = ()) -> httpx.AsyncClient:
        """A browser signed in as `login` (dev sign-in) and a member of each of `member_of`."""
        client = await self.browser()
        response = await client.post("/v1/auth/dev/signIn", json={"login": login})
        assert response.status_code == 200, response.text
        for organization in member_of:
            await self.join(client, organization)
        return client

    # -- organizations -------------------------------------------------------------------------
    def directory(self, organization: str) -> Path:
        path = self.root / organization.removeprefix("organizations/")
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def join(self, client: httpx.AsyncClient, organization: str) -> None:
        """Make the client's user a member of `organization` (`organizations/{id}`): the first to join
        connects it to its directory (becoming its owner) and waits until its first sync reached the
        summary (so later changes are the test's own); later ones are added by that owner."""
        owner = self.owners.get(organization)
        if owner is not None:
            me = (await client.get("/v1/users/me")).json()["user"]
            response = await owner.post(
                f"/v1/{organization}/members", json={"user": me["name"], "role": "MEMBER_ROLE_MEMBER"}
            )
            assert response.status_code == 200, response.text
            return
        response = await client.post(
            "/v1/organizations:connectLocal",
            json={
                "organizationId": organization.removeprefix("organizations/"),
                "rootPath": str(self.directory(organization)),
            },
        )
        assert response.status_code == 200, response.text
        self.owners[organization] = client
        await self.settled(client, organization, repositories=None)

    async def request_sync(self, client: httpx.AsyncClient, organization: str) -> None:
        """RequestSync through the gateway, retried while it answers 503 UNAVAILABLE (as a client
        should, AIP-194: a service that just restarted is reached again after its peers' reconnect
        backoff)."""

        async def accepted() -> None:
            response = await client.post(f"/v1/{organization}/syncStatus:requestSync", json={})
            if response.status_code == 503:
                raise AssertionError(f"not yet: {response.text}")
            assert response.status_code == 200, response.text

        await assert_eventually(accepted, timeout=15, interval=0.2)

    async def add_repository(self, client: httpx.AsyncClient, organization: str, repository: str) -> str:
        """Create a git repository in the organization's directory, request a sync through the
        gateway and wait until the summary shows it; returns the repository's resource name."""
        path = self.directory(organization) / repository
        await asyncio.to_thread(
            subprocess.run, ["git", "init", "-q", "-b", "main", str(path)], check=True, capture_output=True
        )
        await self.request_sync(client, organization)
        count = sum(1 for p in self.directory(organization).iterdir() if (p / ".git").exists())
        summary = await self.settled(client, organization, repositories=count)
        (name,) = [r["name"] for r in summary["repositories"] if r["fullName"] == repository]
        return str(name)

    async def committed_repository(
        self, client: httpx.AsyncClient, organization: str, repository: str
    ) -> str:
        """`add_repository` with one commit on `main` (what a task's sandbox checks out)."""
        path = self.directory(organization) / repository
        git = ["git", "-c", "user.name=Test", "-c", "user.email=test@localhost", "-C", str(path)]
        for argv in (
            ["git", "init", "-q", "-b", "main", str(path)],
            [*git, "commit", "-q", "--allow-empty", "-m", "init"],
        ):
            await asyncio.to_thread(subprocess.run, argv, check=True, capture_output=True)
        return await self.add_repository(client, organization, repository)

    async def ready_task(
        self, client: httpx.AsyncClient, organization: str, repository: str, prompt: str = "say hello"
    ) -> dict[str, Any]:
        """`ready_task` (needs the task and sandbox services running)."""
        return await ready_task(client, organization, repository, prompt)

    async def settled(
        self, client: httpx.AsyncClient, organization: str, *, repositories: int | None
    ) -> dict[str, Any]:
        """The organization's summary (JSON) once it says SYNCED (with `repositories` repositories)."""

        async def check() -> dict[str, Any]:
            response = await client.get(f"/v1/{organization}/summary")
            assert response.status_code == 200, response.text
            summary: dict[str, Any] = response.json()["organizationSummary"]
            assert summary["syncStatus"]["state"] == SYNCED, summary["syncStatus"]
            if repositories is not None:
                assert len(summary.get("repositories", [])) == repositories, summary
            return summary

        return await assert_eventually(check, timeout=15, interval=0.05)

    # -- the organization service's side of the summary Watch ----------------------------------
    def summary_watches_open(self) -> int:
        """WatchOrganizationSummary streams open on the organization service now."""
        runtime = self.host("organization").runtime
        return runtime.hub.open_streams_by_kind().get("org_summary", 0) if runtime else 0

    def summary_watches_opened(self) -> int:
        """WatchOrganizationSummary calls the organization service received during this test."""
        return int(_summary_watches_handled() - self._watches_before) + self.summary_watches_open()

    async def stop_organization(self) -> None:
        """Stop the organization service as a deploy does: drain (streams end `draining`, new calls
        are refused), then close. Until `start_organization` nothing answers on its port."""
        host = self.host("organization")
        await host.begin_drain()
        await host.wait_idle(5)
        await host.close()

    async def start_organization(self) -> None:
        """Start a new organization service host on the same port and database."""
        host = ServiceHost(self.settings, "organization", self.mesh.broker, service_wiring("organization"))
        self.mesh.hosts["organization"] = host
        await host.start()


async def ready_task(
    client: httpx.AsyncClient, organization: str, repository: str, prompt: str = "say hello"
) -> dict[str, Any]:
    """Create a task on `repository` through the gateway `client` talks to and wait until it is
    ready: IDLE, provisioned into a sandbox, its first session IDLE with its agent session (the
    prompt, the session's first turn, has been answered). Returns (JSON) `{"task": Task, "session":
    Session}`."""
    created = await client.post(
        f"/v1/{organization}/tasks", json={"task": {"repository": repository, "prompt": prompt}}
    )
    assert created.status_code == 200, created.text
    name = created.json()["task"]["name"]

    async def ready() -> dict[str, Any]:
        response = await client.get(f"/v1/{name}")
        assert response.status_code == 200, response.text
        task: dict[str, Any] = response.json()["task"]
        assert task["status"] == "TASK_STATUS_IDLE", (task["status"], task.get("statusMessage"))
        assert task.get("sandbox", {}).get("name"), task
        response = await client.get(f"/v1/{task['sessions'][0]['name']}")
        assert response.status_code == 200, response.text
        session: dict[str, Any] = response.json()["session"]
        assert session["status"] == "SESSION_STATUS_IDLE" and session.get("sandboxSession"), session
        return {"task": task, "session": session}

    return await assert_eventually(ready, timeout=60, interval=0.1)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    services: Sequence[ServiceName] = ("organization", "github_data"),
    watch: WatchSettings | None = None,
    overrides: dict[str, Any] | None = None,
    proxy_organization: bool = False,
    **manager_options: Any,
) -> AsyncIterator[Harness]:
    """Real service hosts and a real gateway in front of them.

    Args:
        services: the hosts to start (the gateway answers 503 for routes to the others).
        watch: the services' Watch settings (e.g. a short `max_stream_seconds` to force rotation).
        overrides: further `Settings` fields (e.g. `github`, `gateway`), for services and gateway.
        proxy_organization: the gateway reaches the organization service through a `TcpProxy`
            (`Harness.proxy`) that a test can pause.
        manager_options: SubscriptionManager timers (linger_seconds, heartbeat_seconds, ...).
    """
    settings = Settings(
        data_dir=tmp_path / "data",
        name_prefix=unique_name("foundry"),
        metrics_port=0,
        log_format="console",
        log_level="WARNING",
        watch=watch or WatchSettings(),
        messaging=MessagingSettings(max_attempts=3, retry_delay_seconds=0.1),
        **(overrides or {}),
    )
    async with contextlib.AsyncExitStack() as stack:
        mesh = await stack.enter_async_context(running_mesh(settings, services))
        gateway_settings, proxy = mesh.settings, None
        if proxy_organization:
            proxy = await stack.enter_async_context(TcpProxy(mesh.hosts["organization"].port))
            gateway_settings = mesh.settings.model_copy(update={"organization_port": proxy.port})
        gateway = GatewayComponent(gateway_settings, port=0, **manager_options)
        harness = Harness(
            mesh.settings, mesh, gateway, tmp_path / "orgs", proxy, _watches_before=_summary_watches_handled()
        )
        await gateway.start()
        try:
            yield harness
        finally:
            for client in harness.clients:
                await client.aclose()
            await gateway.begin_drain()
            await gateway.wait_idle(5)
            await gateway.close()


@dataclass
class SseEvent:
    id: str
    event: str
    data: dict[str, Any]


class SseReader:
    """Reads one SSE response event by event (`await reader.next()`), keeping everything it read."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self._lines = response.aiter_lines()
        self.events: list[SseEvent] = []

    async def next(self, seconds: float = 10.0) -> SseEvent:
        return await asyncio.wait_for(self._next(), seconds)

    async def _next(self) -> SseEvent:
        fields: dict[str, str] = {}
        async for line in self._lines:
            if line == "":
                if fields:
                    event = SseEvent(
                        fields.get("id", ""),
                        fields.get("event", "message"),
                        json.loads(fields.get("data", "{}")),
                    )
                    self.events.append(event)
                    return event
                continue
            if line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields[key] = value
        raise EOFError("stream closed")

    async def until(self, event: str, within: float = 10.0, **data: Any) -> SseEvent:
        """Skip ahead to the next `event` whose data contains `data`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            found = await self.next(max(0.01, deadline - loop.time()))
            if found.event == event and all(found.data.get(k) == v for k, v in data.items()):
                return found

    def state(self) -> dict[str, dict[str, Any]]:
        """The page state after the events read so far (`page_state`)."""
        return page_state(self.events)

    def count(self, event: str, *, after: int = 0) -> int:
        """How many `event` frames were read from the `after`-th event on."""
        return sum(1 for e in self.events[after:] if e.event == event)

    async def until_upsert_of(self, name: str, within: float = 10.0) -> SseEvent:
        """Skip ahead to the `upsert` of the item called `name`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while True:
            found = await self.until("upsert", max(0.01, deadline - loop.time()))
            if found.data["item"]["name"] == name:
                return found


def page_state(events: Sequence[SseEvent]) -> dict[str, dict[str, Any]]:
    """{topic: {item name: resource}} as the workbench (static/js/stream.js) holds it after applying
    `events` (one page's, across its reconnects) in order: `snapshot` replaces a topic,
    `upsert`/`delete` change one item, `reset` voids it, `error` drops it. (Like the workbench it
    keeps resources, not the items' `version`: a snapshot stamps every item with its own position.)"""
    topics: dict[str, dict[str, Any]] = {}
    for event in events:
        topic = str(event.data.get("topic", ""))
        if event.event == "snapshot":
            topics[topic] = {item["name"]: item["resource"] for item in event.data["items"]}
        elif event.event == "upsert":
            topics.setdefault(topic, {})[event.data["item"]["name"]] = event.data["item"]["resource"]
        elif event.event == "delete":
            topics.setdefault(topic, {}).pop(event.data["name"], None)
        elif event.event in ("reset", "error"):
            topics.pop(topic, None)
    return topics


@contextlib.asynccontextmanager
async def sse(client: httpx.AsyncClient, url: str, **kwargs: Any) -> AsyncIterator[SseReader]:
    async with client.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200, (await response.aread()).decode()
        yield SseReader(response)
