"""github_data against a local server speaking GitHub's REST wire format (installation tokens minted
from a real RS256 App JWT, Link paging, rate-limit headers, injected 5xx), mounted under `/api/v3`
like GitHub Enterprise Server; and, without an App, an organization synced with a member's OAuth
token resolved through the real organization service."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import asyncpg
import grpc
import httpx
import pytest
from foundry.github_data.v1 import connection_pb2
from foundry.github_data.v1 import github_data_service_pb2 as pb
from foundry.github_data.v1 import sync_status_pb2 as ss
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from githubkit.exception import PrimaryRateLimitExceeded, RateLimitExceeded, SecondaryRateLimitExceeded
from githubkit.response import Response as GithubResponse
from sqlalchemy import update

from services.github_data.app import build_deps
from services.github_data.providers import RetryPolicy
from services.github_data.store.tables import sync_status
from services.github_data.usecases.connections import resume_jobs
from services.github_data.usecases.sync import run_sync
from services.platform.identity import Caller
from services.platform.settings import Settings
from tests.helpers import assert_eventually
from tests.helpers.github_server import DOCS, GithubServer, GithubState
from tests.helpers.github_sign_in import sign_in_with_github
from tests.helpers.infra import make_pg_database
from tests.helpers.mesh import Mesh, running
from tests.unit.github_data.conftest import EventLog, stub

ORG = "acme"
STATUS = f"organizations/{ORG}/syncStatus"
INSTALLATION = 77


def github_connection(org: str = ORG, installation_id: int = INSTALLATION) -> connection_pb2.Connection:
    return connection_pb2.Connection(
        name=f"organizations/{org}/connection",
        provider=ss.PROVIDER_GITHUB,
        github=connection_pb2.GithubSettings(
            account_login=org,
            account_id=9919,
            installation_id=installation_id,
            account_type=connection_pb2.GITHUB_ACCOUNT_TYPE_ORGANIZATION,
        ),
    )


def organization(state: GithubState, repos: int) -> None:
    """`acme` with `repos` repositories, 3 members (1 admin) and the App installed."""
    state.add_account(ORG)
    state.install(INSTALLATION, ORG)
    for i in range(repos):
        state.add_repo(ORG, f"repo-{i:03d}", default_branch="main" if i % 2 else "trunk", private=bool(i % 3))
    state.add_member(ORG, "octocat", admin=True)
    state.add_member(ORG, "hubot")
    state.add_member(ORG, "monalisa")


@pytest.fixture(name="gh")
async def _gh(rsa_keys: tuple[str, str]) -> AsyncIterator[GithubServer]:
    async with GithubServer(GithubState(app_id="4242", public_key=rsa_keys[1]), prefix="/api/v3") as server:
        yield server


def with_api(settings: Settings, server: GithubServer) -> Settings:
    return settings.model_copy(update={"github": settings.github.model_copy(update={"api_url": server.url})})


async def wait_state(mesh: Mesh, state: int, *, within: float = 30) -> ss.SyncStatus:
    """The sync status once in `state` (the organization may not be connected yet)."""
    client = stub(mesh)

    async def check() -> ss.SyncStatus:
        try:
            got = (await client.GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
        except grpc.aio.AioRpcError as exc:
            assert exc.code() != grpc.StatusCode.NOT_FOUND, exc.details()
            raise
        assert got.state == state, got
        return got

    return await assert_eventually(check, timeout=within)


async def test_250_repository_organization_syncs_in_batches_of_10_with_paging(
    settings: Settings, gh: GithubServer
) -> None:
    organization(gh.state, 250)
    busy = "acme/repo-007"
    start = datetime(2024, 1, 1, tzinfo=UTC)
    for n in range(1, 151):  # two pages of pull requests
        gh.state.add_pull(
            busy, n, head=f"feature/{n}", updated_at=start + timedelta(minutes=n), draft=n % 10 == 0
        )
    gh.state.add_pull("acme/repo-200", 1, head="fix/login", title="Fix login")
    settings = with_api(settings, gh)
    async with running(settings, ["github_data"]) as mesh:
        log = EventLog()
        await log.attach(mesh.broker, settings.name_prefix)
        client = stub(mesh)
        answer = await client.ConnectOrganization(
            pb.ConnectOrganizationRequest(connection=github_connection())
        )
        assert answer.sync_status.state == ss.SYNC_STATE_PENDING

        status = await wait_state(mesh, ss.SYNC_STATE_SYNCED)
        assert (status.repository_count, status.open_pull_request_count) == (250, 151)
        assert status.label == "Synced 250 repositories"

        s = gh.state
        assert s.count("POST /api/v3/app/installations/77/access_tokens") == 1  # one token for the whole sync
        assert s.count("GET /api/v3/installation/repositories") == 3  # 100 + 100 + 50, by Link
        assert s.count("/pulls?") == 251  # every repository once, the busy one twice
        first = f"GET /api/v3/repos/{busy}/pulls?state=open&sort=updated&direction=desc&per_page=100"
        assert s.requests.count(first) == 1 and s.requests.count(f"{first}&page=2") == 1

        def progress_announced() -> None:  # the relay publishes after commit: events may trail the rows
            in_pr_phase = [
                e.sync_status
                for e in log.of("github_data.sync.progress")
                if e.sync_status.phase == ss.SYNC_PHASE_SYNCING_PULL_REQUESTS
            ]
            assert sorted({st.processed_repository_count for st in in_pr_phase}) == list(range(0, 251, 10))
            assert "Synced pull requests for 30 of 250 repositories" in [st.label for st in in_pr_phase]
            assert all(st.total_repository_count == 250 for st in in_pr_phase)
            assert len(log.of("github_data.pull_request.changed")) == 151

        await assert_eventually(progress_announced)

        prs = await client.ListPullRequests(
            pb.ListPullRequestsRequest(parent=f"organizations/{ORG}/repositories/-", page_size=1000)
        )
        assert len(prs.pull_requests) == 151
        times = [p.update_time.ToDatetime() for p in prs.pull_requests]
        assert times == sorted(times, reverse=True)
        drafts = [p for p in prs.pull_requests if p.state == 2]  # PULL_REQUEST_STATE_DRAFT
        assert len(drafts) == 15 and all(p.draft for p in drafts)
        fix = await client.ListPullRequests(
            pb.ListPullRequestsRequest(parent=f"organizations/{ORG}/repositories/-", head_branch="fix/login")
        )
        assert [p.repository_full_name for p in fix.pull_requests] == ["acme/repo-200"]
        assert fix.freshness.state == ss.SYNC_STATE_SYNCED

        members = await client.ListGithubMembers(pb.ListGithubMembersRequest(parent=f"organizations/{ORG}"))
        assert [(m.login, m.role) for m in members.github_members] == [
            ("hubot", "member"),
            ("monalisa", "member"),
            ("octocat", "admin"),
        ]


async def test_a_sync_asked_for_while_one_runs_follows_it_once_and_sees_the_change(
    settings: Settings, gh: GithubServer
) -> None:
    """ "Sync now" after adding a repository, while a sync that already listed the repositories is
    still running (its pull requests): the request returns that sync's status, and a second sync
    follows it (one, for any number of requests meanwhile) and lists the new repository."""
    organization(gh.state, 30)
    gate = gh.state.hold("/pulls")  # the first sync waits in its first pull-request batch
    async with running(with_api(settings, gh), ["github_data"]) as mesh:
        client = stub(mesh)
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=github_connection()))
        running_status = await wait_state(mesh, ss.SYNC_STATE_SYNCING)

        async def listed_and_waiting() -> None:  # the repositories listed, the pull requests held
            assert any("/pulls" in r for r in gh.state.requests), gh.state.requests

        await assert_eventually(listed_and_waiting)
        gh.state.add_repo(ORG, "late", default_branch="main")
        for _ in range(2):
            again = await client.RequestSync(pb.RequestSyncRequest(name=STATUS, reason="manual reload"))
            assert not again.enqueued
            assert again.sync_status.generation == running_status.generation == 1
        gate.set()
        gh.state.gates.clear()

        async def second_sync_done() -> ss.SyncStatus:
            status = await wait_state(mesh, ss.SYNC_STATE_SYNCED)
            assert status.generation == 2, status
            return status

        await assert_eventually(second_sync_done, timeout=30)
        listed = await client.ListRepositories(
            pb.ListRepositoriesRequest(parent=f"organizations/{ORG}", page_size=100)
        )
        assert "acme/late" in [r.full_name for r in listed.repositories]
        after = await client.RequestSync(pb.RequestSyncRequest(name=STATUS, reason="manual reload"))
        assert after.enqueued and after.sync_status.generation == 3  # no third sync came before


@pytest.mark.integration
async def test_a_sync_asked_for_while_the_running_one_commits_its_end_is_queued_on_postgres(
    settings: Settings, gh: GithubServer, amqp_url: str
) -> None:
    """The request reads the sync as running, but the sync's closing transaction holds the status row:
    the request's rerun update waits for it, then finds the sync ended (PostgreSQL re-checks the
    condition). The request must then queue a sync itself, not be dropped."""
    organization(gh.state, 3)
    gate = gh.state.hold("/pulls")
    async with make_pg_database() as db_url:
        pg = settings.model_copy(update={"database_url": db_url, "amqp_url": amqp_url})
        async with running(with_api(pg, gh), ["github_data"]) as mesh:
            client = stub(mesh)
            await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=github_connection()))
            await wait_state(mesh, ss.SYNC_STATE_SYNCING)
            closing = await asyncpg.connect(db_url.replace("postgresql+asyncpg://", "postgresql://"))
            try:
                ending = closing.transaction()
                await ending.start()  # a sync's closing transaction, as `SyncRun._finalize` holds it
                await closing.execute(
                    "UPDATE github_data.sync_status SET state = 'synced', job_state = 'idle', "
                    "job_token = NULL, job_lease_until = NULL WHERE organization = $1",
                    ORG,
                )
                request = asyncio.ensure_future(
                    client.RequestSync(pb.RequestSyncRequest(name=STATUS, reason="manual reload"))
                )
                await asyncio.sleep(1.0)
                assert not request.done()  # its rerun update waits for the row
                await ending.commit()
                answer = await asyncio.wait_for(request, 10)
            finally:
                await closing.close()
                gate.set()  # the superseded first sync stops at its next write
                gh.state.gates.clear()
            assert answer.enqueued and answer.sync_status.generation == 2
            done = await wait_state(mesh, ss.SYNC_STATE_SYNCED)
            assert done.generation == 2


async def test_rate_limited_answers_are_waited_out_and_the_sync_succeeds(
    settings: Settings, gh: GithubServer
) -> None:
    organization(gh.state, 12)
    gh.state.rate_limit(times=2, path="/installation/repositories", retry_after=1)
    gh.state.rate_limit(times=1, path="/pulls", retry_after=0, secondary=True)
    async with running(with_api(settings, gh), ["github_data"]) as mesh:
        await stub(mesh).ConnectOrganization(pb.ConnectOrganizationRequest(connection=github_connection()))
        status = await wait_state(mesh, ss.SYNC_STATE_SYNCED)
        assert status.repository_count == 12
        assert gh.state.count("GET /api/v3/installation/repositories") == 3  # 2 limited + 1 answered
        assert all(f.times == 0 for f in gh.state.faults)


async def test_persistent_server_errors_end_the_sync_in_error(settings: Settings, gh: GithubServer) -> None:
    organization(gh.state, 5)
    gh.state.fail(503, times=1000, path="/installation/repositories", retry_after=0)
    async with running(with_api(settings, gh), ["github_data"]) as mesh:
        client = stub(mesh)
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=github_connection()))
        status = await wait_state(mesh, ss.SYNC_STATE_ERROR, within=60)
        assert "503" in status.error_message and "/installation/repositories" in status.error_message
        assert status.label == status.error_message and status.phase == ss.SYNC_PHASE_UNSPECIFIED
        assert gh.state.count("GET /api/v3/installation/repositories") == 1 + 3  # first try + 3 retries
        gh.state.faults.clear()
        retry = await client.RequestSync(pb.RequestSyncRequest(name=STATUS, reason="manual reload"))
        assert retry.enqueued  # not stuck: a new sync starts and succeeds
        assert (await wait_state(mesh, ss.SYNC_STATE_SYNCED)).repository_count == 5


def _rate_limited(*, secondary: bool, asked_seconds: int = 0) -> RateLimitExceeded:
    """The exception githubkit raises for a rate-limited answer of GitHub's shape."""
    url = "https://api.github.com/installation/repositories"
    if secondary:
        status, headers = 429, {"retry-after": str(asked_seconds)}
        message = "You have exceeded a secondary rate limit."
    else:
        reset = int(time.time()) + asked_seconds
        status, headers = 403, {"x-ratelimit-remaining": "0", "x-ratelimit-reset": str(reset)}
        message = "API rate limit exceeded for installation ID 77."
    raw = httpx.Response(
        status,
        headers=headers,
        json={"message": message, "documentation_url": DOCS},
        request=httpx.Request("GET", url),
    )
    kind = SecondaryRateLimitExceeded if secondary else PrimaryRateLimitExceeded
    return kind(GithubResponse(raw, dict), timedelta(seconds=asked_seconds))


@pytest.mark.parametrize("secondary", [False, True], ids=["primary-403", "secondary-429"])
def test_retry_policy_backs_off_a_persistent_rate_limit_and_gives_up_after_max_retries(
    secondary: bool,
) -> None:
    policy = RetryPolicy(max_retries=3, backoff_seconds=1.0, max_wait_seconds=60.0)
    now = _rate_limited(secondary=secondary)  # GitHub asks for no wait (the window already reset)
    decisions = [policy(now, retry) for retry in range(4)]
    assert [d.do_retry for d in decisions] == [True, True, True, False]  # 1 try + 3 retries
    waits = [d.retry_after.total_seconds() for d in decisions[:3] if d.retry_after is not None]
    assert waits == [0.01, 1.0, 2.0]  # what GitHub asked (at least 10 ms), then growing backoff
    # A longer wait GitHub asks for is kept; the backoff only grows past it.
    asked = _rate_limited(secondary=secondary, asked_seconds=3)
    asked_waits = [policy(asked, retry).retry_after for retry in range(3)]
    assert [w.total_seconds() if w else None for w in asked_waits] == [3.0, 3.0, 3.0]
    # A wait beyond max_wait_seconds is not waited for: the failure surfaces at once.
    assert not policy(_rate_limited(secondary=secondary, asked_seconds=3600), 0).do_retry


@pytest.mark.parametrize("secondary", [False, True], ids=["primary-403", "secondary-429"])
async def test_a_persistent_rate_limit_ends_the_sync_in_error_after_backing_off(
    settings: Settings, gh: GithubServer, secondary: bool
) -> None:
    organization(gh.state, 3)
    gh.state.rate_limit(times=1000, path="/installation/repositories", retry_after=0, secondary=secondary)
    async with running(with_api(settings, gh), ["github_data"]) as mesh:
        client = stub(mesh)
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=github_connection()))
        status = await wait_state(mesh, ss.SYNC_STATE_ERROR, within=60)
        assert "rate limit" in status.error_message.lower(), status.error_message
        assert "/installation/repositories" in status.error_message
        assert status.label == status.error_message and status.repository_count == 0
        listing = "GET /api/v3/installation/repositories"
        assert gh.state.count(listing) == 1 + 3  # the first try + 3 retries, then no more
        # The client's sleeps set lower bounds on the gaps between tries (so this cannot flake):
        # the first retry waits what GitHub asked (nothing), the next ones at least 1 s, then 2 s.
        gaps = gh.state.gaps(listing)
        assert len(gaps) == 3 and gaps[1] >= 0.95 and gaps[2] >= 1.95, gaps


GATEWAY = Caller.service("gateway")


async def test_an_organization_synced_with_a_members_oauth_token_has_its_repositories_and_members(
    settings: Settings, gh: GithubServer
) -> None:
    """No GitHub App, so no installation: signing in discovers the GitHub organization and connects
    it with the member's OAuth token; github-data uses the token it stored at sign-in (it asks the
    organization service for nothing) and reads `GET /user/repos` (kept to the organization's
    repositories) and `GET /orgs/{org}/members`."""
    s = gh.state
    lead = s.add_account("octo-lead", "User")
    token = f"gho_{uuid.uuid4().hex}"
    s.oauth_tokens[token] = "octo-lead"
    s.add_account(ORG, "Organization")
    s.add_member(ORG, "octo-lead", admin=True)
    s.add_member(ORG, "hubot")
    s.add_repo(ORG, "api", private=True)
    s.add_repo(ORG, "web", default_branch="trunk")
    s.add_pull("acme/api", 4, head="feat/token")
    s.add_repo("octo-lead", "dots")  # the user's own repository: also in /user/repos, not acme's
    no_app = settings.github.model_copy(update={"api_url": gh.url, "app_id": None, "app_private_key": None})
    no_app_settings = settings.model_copy(update={"github": no_app})
    async with running(no_app_settings, ["organization", "github_data"]) as mesh:
        await sign_in_with_github(
            org_grpc.OrganizationServiceStub(mesh.channel("organization", GATEWAY)),
            stub(mesh, GATEWAY),
            github_account_id=int(lead["id"]),
            login="octo-lead",
            access_token=token,
        )
        status = await wait_state(mesh, ss.SYNC_STATE_SYNCED)
        assert (status.repository_count, status.open_pull_request_count) == (2, 1)
        assert status.installation_status == ss.INSTALLATION_STATUS_CONNECTED

        client = stub(mesh)
        connection = (
            await client.GetConnection(pb.GetConnectionRequest(name=f"organizations/{ORG}/connection"))
        ).connection
        assert connection.github.installation_id == 0
        assert connection.github.token_user == f"users/{lead['id']}"
        assert connection.github.account_type == connection_pb2.GITHUB_ACCOUNT_TYPE_ORGANIZATION
        repos = await client.ListRepositories(pb.ListRepositoriesRequest(parent=f"organizations/{ORG}"))
        assert sorted((r.full_name, r.default_branch, r.private) for r in repos.repositories) == [
            ("acme/api", "main", True),
            ("acme/web", "trunk", False),
        ]
        members = await client.ListGithubMembers(pb.ListGithubMembersRequest(parent=f"organizations/{ORG}"))
        assert [(m.login, m.role) for m in members.github_members] == [
            ("hubot", "member"),
            ("octo-lead", "admin"),
        ]
        # Through the user's token only: no App JWT, no installation token, no installation listing.
        assert s.count("GET /api/v3/user/repos?") >= 1
        assert s.count(f"GET /api/v3/orgs/{ORG}/members?role=admin") >= 1
        assert s.count("/installation/repositories") == s.count("/access_tokens") == 0
        assert token in s.oauth_tokens and not s.installation_tokens


async def test_rows_gone_from_github_are_swept_and_announced(settings: Settings, gh: GithubServer) -> None:
    organization(gh.state, 3)
    gh.state.add_pull("acme/repo-000", 5, head="feat/a")
    gh.state.add_pull("acme/repo-001", 6, head="feat/b")
    async with running(with_api(settings, gh), ["github_data"]) as mesh:
        log = EventLog()
        await log.attach(mesh.broker, settings.name_prefix)
        client = stub(mesh)
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=github_connection()))
        await wait_state(mesh, ss.SYNC_STATE_SYNCED)
        del gh.state.repos["acme/repo-002"]
        gh.state.pulls["acme/repo-000"][0]["state"] = "closed"
        await client.RequestSync(pb.RequestSyncRequest(name=STATUS, reason="manual reload"))

        async def swept() -> None:
            status = (await client.GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
            assert status.state == ss.SYNC_STATE_SYNCED and status.generation == 2
            assert (status.repository_count, status.open_pull_request_count) == (2, 1)
            removed = log.of("github_data.pull_request.removed")
            assert [r.head_branch for r in removed] == ["feat/a"]
            assert removed[0].final_state == 0  # swept: the final state is not known
            assert len(log.of("github_data.repository.removed")) == 1

        await assert_eventually(swept, timeout=20)


async def test_members_are_announced_once_and_a_member_gone_from_github_is_removed(
    settings: Settings, gh: GithubServer
) -> None:
    organization(gh.state, 1)
    async with running(with_api(settings, gh), ["github_data"]) as mesh:
        log = EventLog()
        await log.attach(mesh.broker, settings.name_prefix)
        client = stub(mesh)
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=github_connection()))
        await wait_state(mesh, ss.SYNC_STATE_SYNCED)

        async def announced() -> None:
            changed = log.of("github_data.member.changed")
            assert sorted((c.github_member.login, c.github_member.role) for c in changed) == [
                ("hubot", "member"),
                ("monalisa", "member"),
                ("octocat", "admin"),
            ]

        await assert_eventually(announced, timeout=10)
        hubot = next(c for c in log.of("github_data.member.changed") if c.github_member.login == "hubot")
        gh.state.members[ORG] = [(u, admin) for u, admin in gh.state.members[ORG] if u["login"] != "hubot"]
        await client.RequestSync(pb.RequestSyncRequest(name=STATUS, reason="manual reload"))

        async def swept() -> None:
            status = (await client.GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
            assert status.state == ss.SYNC_STATE_SYNCED and status.generation == 2
            removed = log.of("github_data.member.removed")
            assert [(r.name, r.login) for r in removed] == [(hubot.name, "hubot")]
            assert removed[0].version > hubot.version

        await assert_eventually(swept, timeout=20)
        # Unchanged members are not announced again by the second sync.
        assert len(log.of("github_data.member.changed")) == 3
        members = await client.ListGithubMembers(pb.ListGithubMembersRequest(parent=f"organizations/{ORG}"))
        assert [m.login for m in members.github_members] == ["monalisa", "octocat"]


async def test_bad_app_credentials_surface_as_sync_error(settings: Settings, gh: GithubServer) -> None:
    organization(gh.state, 2)
    gh.state.app_id = "9999"  # the server expects another App: our JWT's issuer is rejected
    async with running(with_api(settings, gh), ["github_data"]) as mesh:
        await stub(mesh).ConnectOrganization(pb.ConnectOrganizationRequest(connection=github_connection()))
        status = await wait_state(mesh, ss.SYNC_STATE_ERROR, within=30)
        assert "401" in status.error_message


async def test_sync_stopped_midway_resumes_from_its_cursor_on_the_next_start(
    settings: Settings, gh: GithubServer
) -> None:
    organization(gh.state, 100)
    gh.state.add_pull("acme/repo-095", 3, head="late/branch")
    gh.state.delay["/pulls"] = 0.05
    settings = with_api(settings, gh)
    async with running(settings, ["github_data"]) as mesh:
        client = stub(mesh)
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=github_connection()))

        async def some_batches_done() -> None:
            status = (await client.GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
            assert (
                status.phase == ss.SYNC_PHASE_SYNCING_PULL_REQUESTS
                and status.processed_repository_count >= 30
            )

        await assert_eventually(some_batches_done, timeout=20)
        gate = gh.state.hold("/pulls")  # the next batch hangs; the host stops under it
    stopped_at = gh.state.count("/pulls?")
    gate.set()
    gh.state.gates.clear()
    gh.state.delay.clear()

    async with running(settings, ["github_data"]) as mesh:  # same data_dir: the durable job state
        status = await wait_state(mesh, ss.SYNC_STATE_SYNCED)
        assert status.generation == 1  # the same sync finished, none started over
        assert (status.repository_count, status.open_pull_request_count) == (100, 1)
        resumed = gh.state.count("/pulls?") - stopped_at
        assert 0 < resumed <= 100 - 30 + 10  # from the stored cursor, not from the first repository


async def test_publish_pull_request_opens_it_on_github_and_stores_it(
    settings: Settings, gh: GithubServer
) -> None:
    organization(gh.state, 1)
    async with running(with_api(settings, gh), ["github_data"]) as mesh:
        client = stub(mesh)
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=github_connection()))
        await wait_state(mesh, ss.SYNC_STATE_SYNCED)
        [repo] = (
            await client.ListRepositories(pb.ListRepositoriesRequest(parent=f"organizations/{ORG}"))
        ).repositories
        request = pb.PublishPullRequestRequest(
            parent=repo.name,
            head_branch="task/fix-flaky",
            title="Fix the flaky test",
            body="Details",
            draft=True,
        )
        published = await client.PublishPullRequest(request)
        created = published.pull_request
        assert (published.summary.name, published.summary.title) == (created.name, "Fix the flaky test")
        assert published.summary.repository == repo.name and published.summary.draft
        assert (created.number, created.head_branch, created.base_branch) == (1, "task/fix-flaky", "trunk")
        assert created.draft and created.state == 2  # PULL_REQUEST_STATE_DRAFT
        assert gh.state.pulls["acme/repo-000"][0]["title"] == "Fix the flaky test"
        stored = await client.GetPullRequest(pb.GetPullRequestRequest(name=created.name))
        assert stored.pull_request.title == "Fix the flaky test"
        assert stored.summary == published.summary

        with pytest.raises(grpc.aio.AioRpcError) as again:
            await client.PublishPullRequest(request)
        assert again.value.code() == grpc.StatusCode.ALREADY_EXISTS


@pytest.mark.parametrize("runner_died", [False, True], ids=["runner alive", "runner died"])
async def test_a_sync_has_one_runner_until_its_lease_lapses(
    settings: Settings, gh: GithubServer, runner_died: bool
) -> None:
    """One runner per organization's sync, across replicas and restarts: while a runner holds the
    job's lease, a second RunSync for it (a redelivery, the re-enqueue at another replica's start-up)
    is dropped instead of claiming the job from under it, and neither the start-up resume nor the
    stall sweep re-enqueues it; a runner whose lease lapsed (it died) is taken over by the sweep."""
    organization(gh.state, 30)  # three batches of pull-request listings
    settings = with_api(settings, gh)
    async with running(settings, ["github_data"]) as mesh:
        client = stub(mesh)
        gate = gh.state.hold("/pulls")  # the runner waits in its first pull-request batch
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=github_connection()))

        async def listing_pull_requests() -> None:
            status = (await client.GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
            assert status.phase == ss.SYNC_PHASE_SYNCING_PULL_REQUESTS, status

        try:
            await assert_eventually(listing_pull_requests, timeout=20)
            host = mesh.hosts["github_data"]
            assert host.runtime is not None
            deps = build_deps(host.runtime)

            # Another delivery of the same job while its runner is alive: dropped at once, not run.
            await asyncio.wait_for(run_sync(deps, ORG, 1), 5)
            assert await resume_jobs(deps) == 0  # another replica's start-up leaves it to its runner
            assert await resume_jobs(deps, only_stalled=True) == 0

            if runner_died:  # as if its process were gone: its lease lapsed, a RunSync may take over
                async with deps.db.transaction() as session:
                    await session.execute(
                        update(sync_status)
                        .where(sync_status.c.organization == ORG)
                        .values(job_lease_until=deps.now() - timedelta(seconds=1))
                    )
                assert await resume_jobs(deps, only_stalled=True) == 1  # the sweep's take-over
                assert await resume_jobs(deps, only_stalled=True) == 0  # once
        finally:
            gate.set()
            gh.state.gates.clear()
        status = await wait_state(mesh, ss.SYNC_STATE_SYNCED)
        assert (status.generation, status.repository_count) == (1, 30)
        listed = gh.state.count("/pulls?")
        if runner_died:  # the first runner stops at its next write; the new one resumed at the cursor
            assert 30 <= listed <= 30 + 10, listed
        else:
            assert listed == 30, f"{listed} pull-request listings for {30} repositories"
