"""The gateway in front of the real embedded mesh (`python -m services.embedded`): browser clients on
one organization share one upstream Watch (checked on the admin /metrics), and a gateway killed and
restarted mid-stream resumes an open page without a refetch.

`embedded_mesh()` and `BrowserClient` are reused by tests/e2e/test_browser.py.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from tests.helpers import assert_eventually, free_port
from tests.helpers.procs import MeshPorts, spawn, stop, wait_healthy
from tests.unit.gateway.harness import SseReader

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


async def test_restarted_gateway_resumes_open_page_without_refetch(tmp_path: Path) -> None:
    async with embedded_mesh(tmp_path) as mesh:
        alice = await BrowserClient(mesh.url).sign_in("alice")
        org = await alice.connect_local(mesh.repos)
        repository = await alice.repository(org)
        port = free_port()
        env = {**mesh.env, "FOUNDRY_GATEWAY_PORT": str(port), "FOUNDRY_METRICS_PORT": str(free_port())}
        url = f"http://127.0.0.1:{port}"
        gateway = spawn("gateway", env, log_path=tmp_path / "gateway1.log")
        page = httpx.AsyncClient(base_url=url, cookies=alice.http.cookies, timeout=15)
        try:
            await assert_eventually(lambda: _ready(url), timeout=30)
            async with page.stream("GET", f"/v1/stream?topic=organization:{org}") as response:
                reader = SseReader(response)
                last = await reader.until("snapshot", within=20)
            gateway.kill()  # SIGKILL: no drain, no end frame
            gateway.wait()
            gateway = spawn("gateway", env, log_path=tmp_path / "gateway2.log")
            await assert_eventually(lambda: _ready(url), timeout=30)
            async with page.stream("GET", "/v1/stream", headers={"Last-Event-ID": last.id}) as response:
                reader = SseReader(response)
                assert (await reader.next()).event == "hello"
                subscribed = await reader.until("subscribed")
                assert subscribed.data["topics"] == [f"organization:{org}"]
                created = await alice.http.post(
                    f"/v1/{org}/tasks",
                    json={"task": {"repository": repository, "prompt": "after the restart"}},
                )
                assert created.status_code == 200, created.text
                change = await reader.until("upsert", within=20)
                assert change.data["topic"] == f"organization:{org}"
                assert "snapshot" not in [e.event for e in reader.events], "the page was refetched"
        finally:
            await page.aclose()
            await alice.close()
            stop(gateway)


async def _ready(url: str) -> None:
    try:
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/readyz")).status_code == 200
    except httpx.HTTPError as exc:
        raise AssertionError(str(exc)) from exc
