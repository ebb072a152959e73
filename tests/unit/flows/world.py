"""The whole mesh for the flow tests: the four real services, the real gateway (signed GitHub
webhooks enter through it) and the GitHub-wire test server, on the backend the settings name.

    async with flow_world(settings, tmp_path) as world:
        org = await world.local_organization(repos_dir)            # ConnectLocalOrganization
        gh = await world.github_organization(["widgets"])          # a GitHub-backed organization
        await world.webhook("pull_request", gh.pull_request_payload("widgets", 8, "opened", head="feat"))

A GitHub-backed organization: the organization service has no RPC that creates one yet (GitHub
sign-in discovery is being added), so `github_organization` creates the organization row with
ConnectLocalOrganization on an empty directory, waits until github-data reports that (empty) local
sync, then re-connects the organization to the GitHub account through
GithubDataService.ConnectOrganization as the organization service would.
"""

from __future__ import annotations

import contextlib
import subprocess
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from foundry.github_data.v1 import connection_pb2
from foundry.github_data.v1 import github_data_service_pb2 as gd_pb2
from foundry.github_data.v1 import sync_status_pb2 as ss
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_summary_pb2 as summary_pb2
from pydantic import SecretStr

from gateway.app import GatewayComponent
from services.platform.settings import ServiceName, Settings
from services.platform.watch.testing import WatchClient
from services.platform.webhook_signature import HEADER, sign
from tests.helpers.github_server import (
    GithubServer,
    GithubState,
    app_key_pair,
    organization_json,
    pull_request_webhook,
)
from tests.helpers.mesh import Mesh, running
from tests.unit.flows.support import Follower, Stubs, fast_messaging, git_repo, resources_of

SERVICES: list[ServiceName] = ["organization", "github_data", "sandbox", "task"]
WEBHOOK_SECRET = "flow-webhook-secret"
_KEYS: tuple[str, str] | None = None


def _app_keys() -> tuple[str, str]:
    global _KEYS
    if _KEYS is None:  # RSA generation costs ~100 ms; one pair serves every world
        _KEYS = app_key_pair()
    return _KEYS


def sync_status(client: WatchClient) -> ss.SyncStatus:
    """The SyncStatus item of an organization summary (KeyError until streamed)."""
    statuses = list(resources_of(client, ss.SyncStatus).values())
    if len(statuses) != 1:
        raise KeyError(f"{len(statuses)} SyncStatus items")
    return statuses[0]


def _bare_clone(source: Path, bare: Path) -> None:
    subprocess.run(["git", "clone", "-q", "--bare", str(source), str(bare)], check=True)


@dataclass
class GithubOrganization:
    """An organization connected to a GitHub account of the test server."""

    org: str  # organization id
    login: str  # GitHub account login
    installation_id: int
    state: GithubState
    repositories: dict[str, str] = field(default_factory=dict)  # repo short name -> resource name
    connected: gd_pb2.ConnectOrganizationResponse | None = None
    connect_seconds: float = 0.0  # how long ConnectOrganization took
    sync_seconds: float = 0.0  # from asking to the synced status on the summary stream

    def full_name(self, repo: str) -> str:
        return f"{self.login}/{repo}"

    def add_pull(self, repo: str, number: int, *, head: str, title: str = "") -> dict[str, Any]:
        """An open pull request on the server (seen by the next sync, or sent by webhook)."""
        return self.state.add_pull(self.full_name(repo), number, head=head, title=title)

    def organization_json(self) -> dict[str, Any]:
        """The webhook `organization` object of the account."""
        return organization_json(self.login, int(self.state.accounts[self.login]["id"]), self.state.api)

    def pull_request_payload(
        self,
        repo: str,
        number: int,
        action: str,
        *,
        head: str,
        title: str = "",
        merged: bool = False,
        draft: bool = False,
    ) -> bytes:
        """A complete `pull_request` webhook body as GitHub sends it: the webhook pull request
        (with `merged`, `mergeable`, `commits`, … and `head.repo`/`base.repo`) and repository, both
        without the REST-only `permissions`."""
        return pull_request_webhook(
            self.state,
            self.login,
            self.full_name(repo),
            number,
            action,
            head=head,
            installation_id=self.installation_id,
            title=title,
            draft=draft,
            merged=merged,
        )


@dataclass
class FlowWorld:
    mesh: Mesh
    stubs: Stubs
    github: GithubServer
    gateway_url: str
    root: Path
    http: httpx.AsyncClient

    async def local_organization(
        self, root_path: Path
    ) -> tuple[str, org_pb2.ConnectLocalOrganizationResponse, float]:
        """ConnectLocalOrganization on `root_path`: (organization id, answer, seconds it took)."""
        started = time.perf_counter()
        answer = await self.stubs.org().ConnectLocalOrganization(
            org_pb2.ConnectLocalOrganizationRequest(
                organization_id="o-" + uuid.uuid4().hex[:10],
                root_path=str(root_path),
                request_id=str(uuid.uuid4()),
            )
        )
        elapsed = time.perf_counter() - started
        return answer.organization.name.removeprefix("organizations/"), answer, elapsed

    async def github_organization(
        self,
        repos: list[str],
        *,
        pulls: dict[str, list[tuple[int, str]]] | None = None,
        sync_delay: float = 0.0,
        serve_git: bool = False,
    ) -> GithubOrganization:
        """An organization connected to a new GitHub account holding `repos` (each cloned from a
        local git repository: offline, the clone URL points there) and open `pulls` (repo ->
        [(number, head branch)]); waits on the summary stream until the GitHub sync is done.
        `sync_delay` slows the account's token endpoint (so its sync) by that many seconds.
        With `serve_git`, each repository is a bare repository served by the test server over git
        smart HTTP (token-authenticated, as github.com) and its clone URL is that HTTP URL."""
        suffix = uuid.uuid4().hex[:8]
        login = f"acme-{suffix}"
        installation_id = int(suffix, 16) % 1_000_000 + 1000
        state = self.github.state
        state.add_account(login)
        state.install(installation_id, login)
        for repo in repos:
            source = git_repo(self.root / "github" / login, repo)
            clone_url = str(source)
            if serve_git:
                bare = self.root / "github-git" / login / f"{repo}.git"
                _bare_clone(source, bare)
                clone_url = state.serve_git(f"{login}/{repo}", bare)
            state.add_repo(login, repo, default_branch="main")["clone_url"] = clone_url
        for repo, items in (pulls or {}).items():
            for number, head in items:
                state.add_pull(f"{login}/{repo}", number, head=head)
        if sync_delay:
            state.delay[f"/app/installations/{installation_id}/access_tokens"] = sync_delay
        empty = self.root / "empty" / login
        empty.mkdir(parents=True)
        org, _, _ = await self.local_organization(empty)
        gh = GithubOrganization(org, login, installation_id, state)
        summary = self.stubs.summary(org).start()
        try:
            await summary.wait(
                lambda c: sync_status(c).state == ss.SYNC_STATE_SYNCED,
                timeout=20,
                what="the first (local, empty) sync",
            )
            started = time.perf_counter()
            gh.connected = await self.connect_github(gh)
            gh.connect_seconds = time.perf_counter() - started
            synced_at = await summary.wait(
                lambda c: (
                    sync_status(c).provider == ss.PROVIDER_GITHUB
                    and sync_status(c).state == ss.SYNC_STATE_SYNCED
                    and len(resources_of(c, summary_pb2.RepositorySummary)) == len(repos)
                ),
                timeout=20,
                what="the GitHub sync",
            )
            gh.sync_seconds = synced_at - started
            for name, listed in summary.resources(summary_pb2.RepositorySummary).items():
                gh.repositories[listed.full_name.split("/", 1)[1]] = name
        finally:
            await summary.stop()
        return gh

    async def connect_github(self, gh: GithubOrganization) -> gd_pb2.ConnectOrganizationResponse:
        """GithubDataService.ConnectOrganization with the account's GitHub settings."""
        return await self.stubs.github_data().ConnectOrganization(
            gd_pb2.ConnectOrganizationRequest(
                connection=connection_pb2.Connection(
                    name=f"organizations/{gh.org}/connection",
                    provider=ss.PROVIDER_GITHUB,
                    github=connection_pb2.GithubSettings(
                        account_login=gh.login,
                        account_id=int(gh.state.accounts[gh.login]["id"]),
                        installation_id=gh.installation_id,
                        account_type=connection_pb2.GITHUB_ACCOUNT_TYPE_ORGANIZATION,
                    ),
                ),
                request_id=str(uuid.uuid4()),
            )
        )

    async def webhook(self, event: str, payload: bytes, *, signature: str | None = None) -> httpx.Response:
        """POST a GitHub webhook to the real gateway, signed with the configured secret."""
        return await self.http.post(
            f"{self.gateway_url}/v1/webhooks/github",
            content=payload,
            headers={
                "content-type": "application/json",
                "x-github-event": event,
                "x-github-delivery": str(uuid.uuid4()),
                HEADER: signature or sign(WEBHOOK_SECRET, payload),
            },
        )


@contextlib.asynccontextmanager
async def flow_world(settings: Settings, root: Path) -> AsyncIterator[FlowWorld]:
    """Start the GitHub-wire server, the four services and the gateway on `settings`' backend
    (with fast retries, a webhook secret and the test GitHub App's credentials added)."""
    private, public = _app_keys()
    async with GithubServer(GithubState(app_id="4242", public_key=public)) as github:
        github_settings = {
            "api_url": github.url,
            "app_id": "4242",
            "app_private_key": SecretStr(private),
            "webhook_secret": SecretStr(WEBHOOK_SECRET),
        }
        settings = settings.model_copy(
            update={
                "messaging": settings.messaging.model_copy(update=fast_messaging()),
                "github": settings.github.model_copy(update=github_settings),
            }
        )
        async with running(settings, SERVICES) as mesh:
            gateway = GatewayComponent(mesh.settings, port=0)
            port = await gateway.start()
            try:
                async with httpx.AsyncClient(timeout=10) as http:
                    yield FlowWorld(mesh, Stubs(mesh), github, f"http://127.0.0.1:{port}", root, http)
            finally:
                await gateway.begin_drain()
                await gateway.wait_idle(2)
                await gateway.close()


__all__ = ["FlowWorld", "Follower", "GithubOrganization", "flow_world", "sync_status"]
