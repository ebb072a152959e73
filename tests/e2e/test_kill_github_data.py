"""kill -9 of the github_data service mid-sync on the mesh shape (issue #16, item 7).

The organization and github_data services as processes of their own on a private PostgreSQL and
RabbitMQ, against a local GitHub (tests/helpers/github_server.py, App installed) that answers the
pull-request pages slowly. A user signs in with GitHub; the organization service discovers their
organization and has github_data sync it (REPOS repositories, PULLS open pull requests). Once the
sync is half-way through the pull requests, github_data is SIGKILLed (its sync job row says
running, its work item is unacknowledged, events of the synced part are in its outbox or on their
way to the organization service), and started again.

Asserted:
- while it is down, the organization summary is still served (it reads only the organization
  service's own tables) and a call to github_data fails with a retryable code;
- the restarted process finishes the same sync (generation 1), resumed at its stored cursor by one
  runner (the redelivered work item and the re-enqueue at start-up do not both run it: the job's
  lease admits one), so the pull-request requests after the restart cover exactly the rest;
- the organization summary then lists every repository and every open pull request exactly once
  (no duplicate from the redelivered work item or re-published events) and the sync as synced.

Figures are printed (run with -s).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from foundry.github_data.v1 import github_data_service_pb2 as gh_pb
from foundry.github_data.v1 import github_data_service_pb2_grpc as gh_grpc
from foundry.github_data.v1 import sync_status_pb2 as ss
from foundry.organization.v1 import organization_service_pb2 as org_pb
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc

from services.platform.identity import Caller
from tests.e2e.procs.cluster import Cluster
from tests.helpers import assert_eventually, make_pg_database
from tests.helpers.github_server import GithubServer, GithubState, app_key_pair
from tests.helpers.github_sign_in import sign_in_with_github

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

APP_ID = "4242"
REPOS = 40
PULLS = 8  # open pull requests, on the first PULLS repositories
PAGE_DELAY = 0.15  # seconds per pull-request page before the kill
GATEWAY = Caller.service("gateway")


@dataclass
class World:
    cluster: Cluster
    github: GithubState
    user: Caller
    token: str
    org: str  # GitHub login of the organization

    @property
    def name(self) -> str:
        return f"organizations/{self.org}"


@pytest.fixture
async def world(tmp_path: Path, amqp_url: str) -> AsyncIterator[World]:
    private, public = app_key_pair()
    state = GithubState(app_id=APP_ID, public_key=public)
    tag = uuid.uuid4().hex[:6]
    login, org = f"octo-{tag}", f"acme-{tag}"
    account = state.add_account(login, "User")
    token = f"gho_{uuid.uuid4().hex}"
    state.oauth_tokens[token] = login
    state.add_account(org, "Organization")
    state.install(int(state.accounts[org]["id"]) * 10, org)
    state.add_member(org, login, admin=True)
    for i in range(REPOS):
        state.add_repo(org, f"repo-{i:03d}")
    for i in range(PULLS):
        state.add_pull(f"{org}/repo-{i:03d}", 1, head=f"feature-{i}", author=login)
    state.delay["/pulls"] = PAGE_DELAY
    async with GithubServer(state, prefix="/api/v3") as github, make_pg_database() as db_url:
        github_env = {
            "FOUNDRY_GITHUB__API_URL": github.url,
            "FOUNDRY_GITHUB__APP_ID": APP_ID,
            "FOUNDRY_GITHUB__APP_PRIVATE_KEY": private,
        }
        cluster = Cluster(
            tmp_path,
            db_url,
            amqp_url,
            replicas={"organization": 1, "github_data": 1},
            env=github_env,
        )
        try:
            await cluster.start()
            user = Caller(subject=f"user/{account['id']}", login=login)
            yield World(cluster, state, user, token, org)
        except BaseException:
            print(cluster.dump_logs())
            raise
        finally:
            await cluster.close()


async def test_github_data_killed_mid_sync_finishes_the_same_sync_and_duplicates_nothing(
    world: World,
) -> None:
    cluster = world.cluster
    orgs = org_grpc.OrganizationServiceStub(cluster.channel("organization", GATEWAY))
    github_data = gh_grpc.GithubDataServiceStub(
        cluster.channel("github_data", Caller.service("organization"))
    )
    as_user = org_grpc.OrganizationServiceStub(cluster.channel("organization", world.user))
    status_name = f"{world.name}/syncStatus"
    summary_name = f"{world.name}/summary"
    replica = cluster["github_data-0"]

    await sign_in_with_github(
        orgs,
        gh_grpc.GithubDataServiceStub(cluster.channel("github_data", GATEWAY)),
        github_account_id=int(world.user.subject.removeprefix("user/")),
        login=world.user.login,
        access_token=world.token,
    )

    async def midway() -> ss.SyncStatus:
        try:
            got = (await github_data.GetSyncStatus(gh_pb.GetSyncStatusRequest(name=status_name))).sync_status
        except grpc.aio.AioRpcError as exc:  # NOT_FOUND until the organization service connected it
            assert exc.code() != grpc.StatusCode.NOT_FOUND, exc.details()
            raise
        assert got.phase == ss.SYNC_PHASE_SYNCING_PULL_REQUESTS, got
        assert REPOS // 2 <= got.processed_repository_count < REPOS, got
        return got

    at_kill = await assert_eventually(midway, timeout=60, interval=0.05)

    # -- kill -9 ---------------------------------------------------------------------------------
    assert replica.proc is not None
    replica.proc.kill()
    killed = time.monotonic()
    assert await replica.wait_exit(10) == -9
    # Counted once the process is gone: a request it sent between a count taken before the kill and
    # the kill itself was counted as one "after the restart" (21 of 20 in a CI run).
    pulls_before = world.github.count("/pulls")

    # -- while it is down -------------------------------------------------------------------------
    summary = await as_user.GetOrganizationSummary(org_pb.GetOrganizationSummaryRequest(name=summary_name))
    shown_while_down = summary.organization_summary.sync_status.state
    with pytest.raises(grpc.aio.AioRpcError) as down:
        await github_data.GetSyncStatus(gh_pb.GetSyncStatusRequest(name=status_name), timeout=3)
    assert down.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED), down.value

    # -- restart ---------------------------------------------------------------------------------
    world.github.delay["/pulls"] = 0.0
    replica.start()
    await replica.wait_ready()
    ready = time.monotonic()

    served: list[float] = []

    async def synced() -> ss.SyncStatus:
        try:  # this client's channel reconnects on its own backoff schedule: UNAVAILABLE until then
            got = (await github_data.GetSyncStatus(gh_pb.GetSyncStatusRequest(name=status_name))).sync_status
        except grpc.aio.AioRpcError as exc:
            assert exc.code() != grpc.StatusCode.UNAVAILABLE, exc.details()
            raise
        served.append(served[0] if served else time.monotonic())
        assert got.state == ss.SYNC_STATE_SYNCED, got
        return got

    status = await assert_eventually(synced, timeout=60, interval=0.1)
    synced_at = time.monotonic()
    assert status.generation == 1, status  # the same sync, finished, not a second one
    assert (status.repository_count, status.open_pull_request_count) == (REPOS, PULLS), status
    # Resumed at the stored cursor by one runner: the redelivered work item and the re-enqueue at
    # start-up (or the sweep, once the dead runner's lease lapsed) may both arrive; the lease admits one.
    resumed = [
        e for e in replica.events(2) if e.get("event") == "sync_started" and e["organization"] == world.org
    ]
    assert len(resumed) == 1 and resumed[0]["resume_phase"] == "syncing_pull_requests", resumed
    cursor = int(resumed[0]["cursor"])
    assert cursor >= at_kill.processed_repository_count, (cursor, at_kill)
    pulls_after = world.github.count("/pulls") - pulls_before
    assert pulls_after <= REPOS - cursor, f"{pulls_after} pull-request requests after the restart"

    async def summary_complete() -> None:
        got = (
            await as_user.GetOrganizationSummary(org_pb.GetOrganizationSummaryRequest(name=summary_name))
        ).organization_summary
        repos = Counter(r.name for r in got.repositories)
        prs = Counter((p.repository, p.number) for p in got.open_pull_requests)
        assert len(repos) == REPOS and set(repos.values()) == {1}, repos
        assert len(prs) == PULLS and set(prs.values()) == {1}, prs
        assert got.sync_status.state == ss.SYNC_STATE_SYNCED, got.sync_status

    await assert_eventually(summary_complete, timeout=30, interval=0.2)
    complete_at = time.monotonic()

    print(
        f"\nat the kill: {at_kill.processed_repository_count}/{REPOS} repositories' pull requests read"
        f"\nsummary's sync state while github_data was down: {ss.SyncState.Name(shown_while_down)}"
        f"\nkill -9 -> restarted process ready: {ready - killed:.1f} s"
        f"\nready -> first call served on this client's old channel: {served[0] - ready:.1f} s"
        f"\nready -> sync finished: {synced_at - ready:.1f} s"
        f" (resumed at {cursor}/{REPOS} by one runner; {pulls_after} pull-request requests"
        f" after the restart, {pulls_before} before)"
        f"\nready -> organization summary complete: {complete_at - ready:.1f} s"
    )
