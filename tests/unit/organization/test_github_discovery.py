"""GitHub organization discovery after a GitHub sign-in: SignInWithGithub (organization) and
SetGithubToken (github-data) return before GitHub is asked; github-data's worker reads /user,
/user/orgs and /user/installations from a local GitHub with the stored token and publishes
`github_data.user_accounts.changed`; the organization service applies it and creates the personal
and GitHub organizations (seen on an open WatchApp stream), with the right roles and installation
status; connected ones are synced by the real github-data service; redelivery has no second effect;
outages are retried and a persistent one leaves a readable error. The token RPC is for services only
and no read returns a token."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from foundry.github_data.v1 import events_pb2 as gh_events_pb2
from foundry.github_data.v1 import github_data_service_pb2 as gh_pb2
from foundry.github_data.v1 import github_data_service_pb2_grpc as gh_grpc
from foundry.github_data.v1 import sync_status_pb2 as ss
from foundry.organization.v1 import app_snapshot_pb2, member_pb2, organization_pb2, user_pb2
from foundry.organization.v1 import organization_service_pb2 as pb
from foundry.organization.v1 import organization_service_pb2_grpc as pb_grpc
from prometheus_client import REGISTRY
from sqlalchemy import inspect

from services.github_data.store import user_accounts as stored
from services.organization.domain.github_accounts import AppInstallation, GithubAccount, plan
from services.platform.identity import Caller
from services.platform.messaging.broker import queue_name
from services.platform.secrets import SecretBox
from services.platform.settings import GithubSettings, MessagingSettings, Settings, WatchSettings
from services.platform.watch.testing import WatchClient
from tests.helpers import assert_eventually
from tests.helpers.github_server import GithubServer, GithubState, app_key_pair
from tests.helpers.github_sign_in import sign_in_with_github
from tests.helpers.infra import unique_name
from tests.helpers.mesh import Mesh, running
from tests.unit.github_data.conftest import EventLog
from tests.unit.organization.support import resources_of

GATEWAY = Caller.service("gateway")
MAX_ATTEMPTS = 3
APP_ID = "4242"


# -- the world: a local GitHub, the organization and github-data services ---------------------------


@dataclass
class World:
    mesh: Mesh
    github: GithubState

    def org_stub(self, caller: Caller = GATEWAY) -> pb_grpc.OrganizationServiceAsyncStub:
        return pb_grpc.OrganizationServiceStub(self.mesh.channel("organization", caller))

    def github_data(
        self, caller: Caller = Caller.service("organization")
    ) -> gh_grpc.GithubDataServiceAsyncStub:
        return gh_grpc.GithubDataServiceStub(self.mesh.channel("github_data", caller))

    @property
    def sync_queue(self) -> str:
        """github-data's discovery work queue (DiscoverUserAccounts)."""
        return queue_name(self.mesh.settings.name_prefix, "github_data", "user_accounts")


def world_settings(base: Settings, github: GithubServer, private_key: str) -> Settings:
    """`base` with fast retries, quick bookmarks and the local GitHub with a configured App."""
    return base.model_copy(
        update={
            "messaging": MessagingSettings(
                max_attempts=MAX_ATTEMPTS,
                retry_delay_seconds=0.05,
                retry_delay_max_seconds=0.2,
                outbox_sweep_seconds=0.5,
            ),
            "watch": WatchSettings(bookmark_seconds=1.0),
            "github": GithubSettings(api_url=github.url, app_id=APP_ID, app_private_key=private_key),
        }
    )


@contextlib.asynccontextmanager
async def open_world(base: Settings) -> AsyncIterator[World]:
    """A local GitHub (App `APP_ID`) and the organization + github-data hosts configured against it."""
    private, public = app_key_pair()
    state = GithubState(app_id=APP_ID, public_key=public)
    async with GithubServer(state, prefix="/api/v3") as server:
        settings = world_settings(base, server, private)
        async with running(settings, ["organization", "github_data"]) as mesh:
            yield World(mesh, state)


@pytest.fixture(name="world", scope="module")
async def _world(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    base = Settings(
        data_dir=tmp_path_factory.mktemp("discovery") / "data",
        name_prefix=unique_name("foundry"),
        metrics_port=0,
        log_format="console",
        log_level="WARNING",
    )
    async with open_world(base) as world:
        yield world


@pytest.fixture(autouse=True)
def _clear_faults(world: World) -> None:
    """Faults and gates of one test never leak into the next (the local GitHub is shared)."""
    world.github.faults.clear()
    world.github.gates.clear()


# -- GitHub accounts and signing in ---------------------------------------------------------------


@dataclass
class Person:
    login: str
    account_id: int
    token: str
    orgs: list[str] = field(default_factory=list)

    @property
    def caller(self) -> Caller:
        return Caller(subject=f"user/{self.account_id}", login=self.login)

    @property
    def personal(self) -> str:
        return f"organizations/personal-{self.login.lower()}"


def new_person(github: GithubState, *, orgs: int = 0, installed: int = 0, repos: int = 1) -> Person:
    """A GitHub user in `orgs` new organizations (the first `installed` of them have the App), each
    account with `repos` repositories."""
    tag = uuid.uuid4().hex[:6]
    login = f"Octo-{tag}"
    account = github.add_account(login, "User")
    github.names[login] = f"Octo {tag}"
    token = f"gho_{uuid.uuid4().hex}"
    github.oauth_tokens[token] = login
    person = Person(login, int(account["id"]), token)
    for r in range(repos):
        github.add_repo(login, f"dots{r}")
    for i in range(orgs):
        org = f"acme-{tag}-{i}"
        github.add_account(org, "Organization")
        github.add_member(org, login)
        for r in range(repos):
            github.add_repo(org, f"api{r}")
        if i < installed:
            github.install(int(github.accounts[org]["id"]) * 10, org)
        person.orgs.append(org)
    return person


async def sign_in(world: World, person: Person) -> pb.SignInWithGithubResponse:
    return await sign_in_with_github(
        world.org_stub(),
        world.github_data(GATEWAY),
        github_account_id=person.account_id,
        login=person.login,
        access_token=person.token,
    )


class AppWatcher:
    """Reads WatchApp in the background into a WatchClient."""

    def __init__(self, world: World, person: Person, auth_session: str) -> None:
        self.stub = world.org_stub(person.caller)
        self.auth_session = auth_session
        self.client = WatchClient()
        self._call: Any = None
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AppWatcher:
        self.client.begin()
        self._call = self.stub.WatchApp(
            pb.WatchAppRequest(name="users/me/appSnapshot", auth_session=self.auth_session)
        )
        self._task = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for response in self._call:
            self.client.apply(response.event)

    async def __aexit__(self, *exc: object) -> None:
        self._call.cancel()
        assert self._task is not None
        with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
            await self._task

    def organizations(self) -> dict[str, organization_pb2.Organization]:
        return resources_of(self.client, organization_pb2.Organization)

    def user(self) -> user_pb2.User:
        return next(iter(resources_of(self.client, user_pb2.User).values()))

    async def until(
        self, names: set[str], *, timeout: float = 15.0
    ) -> dict[str, organization_pb2.Organization]:
        """The organizations once exactly `names` are streamed (and the User lists them)."""

        def check() -> dict[str, organization_pb2.Organization]:
            orgs = self.organizations()
            assert set(orgs) == names
            assert set(self.user().eligible_organizations) == names
            return orgs

        return await assert_eventually(check, timeout=timeout)

    async def synced(self, names: set[str]) -> None:
        """Wait until github-data reported a finished sync of each of `names`."""

        def check() -> None:
            orgs = self.organizations()
            for name in names:
                assert orgs[name].sync_status.state == ss.SYNC_STATE_SYNCED, (name, orgs[name].sync_status)

        await assert_eventually(check, timeout=20)


def _true(condition: bool) -> None:
    assert condition


def handled(world: World, outcome: str) -> float:
    """Deliveries of the discovery queue the Worker settled with `outcome` so far."""
    labels = {"service": "github_data", "queue": world.sync_queue, "outcome": outcome}
    return REGISTRY.get_sample_value("foundry_messages_handled_total", labels) or 0.0


# -- tests ------------------------------------------------------------------------------------------


async def test_sign_in_returns_before_github_is_asked_and_the_app_streams_the_discovered_organizations(
    world: World,
) -> None:
    person = new_person(world.github, orgs=2, installed=1)
    acme, beta = (f"organizations/{o}" for o in person.orgs)
    gate = world.github.hold("GET /api/v3/user?")  # GitHub does not answer /user until released
    signed = await asyncio.wait_for(sign_in(world, person), timeout=5)
    assert list(signed.user.eligible_organizations) == []  # discovery has not run yet
    async with AppWatcher(world, person, signed.auth_session.name) as watcher:
        await assert_eventually(lambda: _true(world.github.count("GET /api/v3/user?") == 1))
        gate.set()
        orgs = await watcher.until({person.personal, acme, beta})
        assert orgs[person.personal].kind == organization_pb2.ORGANIZATION_KIND_PERSONAL
        assert orgs[person.personal].display_name == f"Octo {person.login[-6:]}"
        assert orgs[person.personal].primary_domain == "personal"
        assert orgs[acme].kind == organization_pb2.ORGANIZATION_KIND_ORGANIZATION
        assert orgs[acme].github_login == person.orgs[0]
        assert orgs[acme].primary_domain == f"{person.orgs[0]}.github"
        assert orgs[beta].sync_status.installation_status == ss.INSTALLATION_STATUS_INSTALL_REQUIRED

        # github-data connects the two connected organizations and syncs them (seen on WatchApp).
        def synced() -> None:
            current = watcher.organizations()
            for name in (person.personal, acme):
                status = current[name].sync_status
                assert status.state == ss.SYNC_STATE_SYNCED, (name, status)
                assert status.repository_count == 1
            assert current[beta].sync_status.state == ss.SYNC_STATE_PENDING

        await assert_eventually(synced, timeout=20)

    stub = world.org_stub(person.caller)
    roles = {
        name: (
            await stub.GetMember(pb.GetMemberRequest(name=f"{name}/members/{person.account_id}"))
        ).member.role
        for name in (person.personal, acme, beta)
    }
    assert roles == {
        person.personal: member_pb2.MEMBER_ROLE_OWNER,
        acme: member_pb2.MEMBER_ROLE_ADMIN,
        beta: member_pb2.MEMBER_ROLE_ADMIN,
    }
    connection = (
        await world.github_data().GetConnection(gh_pb2.GetConnectionRequest(name=f"{acme}/connection"))
    ).connection
    installation_id = int(world.github.accounts[person.orgs[0]]["id"]) * 10
    assert connection.github.installation_id == installation_id
    assert connection.github.token_user == f"users/{person.account_id}"
    assert world.github.count(f"POST /api/v3/app/installations/{installation_id}/access_tokens") >= 1
    with pytest.raises(grpc.aio.AioRpcError) as never:
        await world.github_data().GetConnection(gh_pb2.GetConnectionRequest(name=f"{beta}/connection"))
    assert never.value.code() == grpc.StatusCode.NOT_FOUND


async def test_redelivered_discovery_has_no_second_effect(world: World) -> None:
    person = new_person(world.github, orgs=1, installed=1)
    signed = await sign_in(world, person)
    acme = f"organizations/{person.orgs[0]}"
    stub = world.org_stub(person.caller)
    async with AppWatcher(world, person, signed.auth_session.name) as watcher:
        await watcher.until({person.personal, acme})
        await watcher.synced({person.personal, acme})  # no more changes are on their way

        # The user leaves the organization on GitHub; a new discovery would remove it.
        world.github.members[person.orgs[0]] = []
        token = (
            await stub.GetAppSnapshot(
                pb.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=signed.auth_session.name)
            )
        ).resume_token
        asks, acked = world.github.count("GET /api/v3/user?"), handled(world, "ack")
        message_id = await processed_message_id(world)
        await world.mesh.broker.publish(
            exchange="",
            routing_key=world.sync_queue,
            body=gh_events_pb2.DiscoverUserAccounts(user=f"users/{person.account_id}").SerializeToString(),
            message_id=message_id,
        )
        await assert_eventually(lambda: _true(handled(world, "ack") > acked))
        again = await stub.GetAppSnapshot(
            pb.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=signed.auth_session.name)
        )
        assert again.resume_token == token  # no change was recorded
        assert world.github.count("GET /api/v3/user?") == asks  # and GitHub was not asked again
        assert acme in watcher.organizations()

        # A new sign-in (a new message) does apply the change: the organization disappears.
        await sign_in(world, person)
        await watcher.until({person.personal})
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetOrganization(pb.GetOrganizationRequest(name=acme))
    assert gone.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def processed_message_id(world: World) -> str:
    """The id of the discovery message github-data processed last (from its inbox; the outbox
    forgets published rows)."""
    from sqlalchemy import select

    from services.platform.db.tables import inbox

    host = world.mesh.hosts["github_data"]
    consumer = f"github_data:{world.sync_queue}"
    assert host.db is not None
    async with host.db.snapshot() as session:
        row = (
            await session.execute(
                select(inbox.c.message_id)
                .where(inbox.c.consumer == consumer)
                .order_by(inbox.c.processed_at.desc())
                .limit(1)
            )
        ).first()
    assert row is not None
    return str(row[0])


async def test_a_second_member_joins_a_connected_organization_without_reconnecting_it(world: World) -> None:
    first = new_person(world.github, orgs=1, installed=1)
    org_login = first.orgs[0]
    acme = f"organizations/{org_login}"
    signed = await sign_in(world, first)
    async with AppWatcher(world, first, signed.auth_session.name) as watcher:
        await watcher.until({first.personal, acme})
        await watcher.synced({acme})
    status = (
        await world.github_data().GetSyncStatus(gh_pb2.GetSyncStatusRequest(name=f"{acme}/syncStatus"))
    ).sync_status

    second = new_person(world.github)
    world.github.add_member(org_login, second.login)
    signed = await sign_in(world, second)
    async with AppWatcher(world, second, signed.auth_session.name) as watcher:
        orgs = await watcher.until({second.personal, acme})
    assert orgs[acme].sync_status.generation == status.generation  # no second connect, no new sync
    member = await world.org_stub(second.caller).GetMember(
        pb.GetMemberRequest(name=f"{acme}/members/{second.account_id}")
    )
    assert member.member.role == member_pb2.MEMBER_ROLE_ADMIN
    connection = (
        await world.github_data().GetConnection(gh_pb2.GetConnectionRequest(name=f"{acme}/connection"))
    ).connection
    assert connection.github.token_user == f"users/{first.account_id}"


async def test_a_rate_limited_discovery_is_retried_and_completes(world: World) -> None:
    person = new_person(world.github, orgs=1)
    world.github.rate_limit(times=1, path="GET /api/v3/user/orgs?")
    before = world.github.count("GET /api/v3/user/orgs?")
    signed = await sign_in(world, person)
    async with AppWatcher(world, person, signed.auth_session.name) as watcher:
        await watcher.until({person.personal, f"organizations/{person.orgs[0]}"})
    assert world.github.count("GET /api/v3/user/orgs?") - before == 2


async def test_a_persistent_github_outage_leaves_a_readable_error_on_the_personal_organization(
    world: World,
) -> None:
    person = new_person(world.github, orgs=1)
    world.github.fail(503, times=1000, path="GET /api/v3/user?")
    before = world.github.count("GET /api/v3/user?")
    signed = await sign_in(world, person)
    async with AppWatcher(world, person, signed.auth_session.name) as watcher:
        orgs = await watcher.until({person.personal})
        status = orgs[person.personal].sync_status
        assert status.state == ss.SYNC_STATE_ERROR
        assert "GitHub answered 503" in status.error_message
        assert "/user" in status.error_message
    assert world.github.count("GET /api/v3/user?") - before == MAX_ATTEMPTS
    assert (await world.github_data().ListRepositories(_repos(person.personal))).repositories == []

    world.github.faults.clear()  # GitHub is back: the next sign-in discovers and connects everything
    signed = await sign_in(world, person)
    async with AppWatcher(world, person, signed.auth_session.name) as watcher:
        await watcher.until({person.personal, f"organizations/{person.orgs[0]}"})
        personal = person.personal
        await assert_eventually(
            lambda: _true(watcher.organizations()[personal].sync_status.state == ss.SYNC_STATE_SYNCED),
            timeout=20,
        )


def _discovery(watcher: AppWatcher) -> app_snapshot_pb2.GithubDiscovery:
    found = list(resources_of(watcher.client, app_snapshot_pb2.GithubDiscovery).values())
    assert len(found) == 1, found
    return found[0]


async def _pending_then_done(world: World, person: Person, gate: asyncio.Event) -> None:
    signed = await sign_in(world, person)
    me = world.org_stub(person.caller)

    async def pending_or_running() -> None:  # github-data's first events reach the app shell
        snap = (
            await me.GetAppSnapshot(
                pb.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=signed.auth_session.name)
            )
        ).app_snapshot
        discovery = snap.github_discovery
        assert discovery.name == f"users/{person.account_id}/githubDiscovery"
        assert discovery.state in (
            app_snapshot_pb2.GITHUB_DISCOVERY_STATE_PENDING,
            app_snapshot_pb2.GITHUB_DISCOVERY_STATE_RUNNING,
        )
        assert discovery.HasField("update_time") and not discovery.HasField("last_success_time")

    await assert_eventually(pending_or_running)
    async with AppWatcher(world, person, signed.auth_session.name) as watcher:
        await assert_eventually(
            lambda: _true(_discovery(watcher).state == app_snapshot_pb2.GITHUB_DISCOVERY_STATE_RUNNING)
        )
        gate.set()
        await watcher.until({person.personal, f"organizations/{person.orgs[0]}"})
        await assert_eventually(
            lambda: _true(_discovery(watcher).state == app_snapshot_pb2.GITHUB_DISCOVERY_STATE_DONE)
        )
        assert _discovery(watcher).HasField("last_success_time") and _discovery(watcher).message == ""


async def test_the_app_shell_carries_the_github_discovery_state_from_pending_to_done_and_error(
    world: World,
) -> None:
    person = new_person(world.github, orgs=1)
    gate = world.github.hold("GET /api/v3/user?")  # discovery waits on GitHub until released
    try:
        await _pending_then_done(world, person, gate)
    finally:
        gate.set()
    world.github.gates.clear()
    world.github.fail(503, times=1000, path="GET /api/v3/user?")
    signed = await sign_in(world, person)
    async with AppWatcher(world, person, signed.auth_session.name) as watcher:
        await assert_eventually(
            lambda: _true(_discovery(watcher).state == app_snapshot_pb2.GITHUB_DISCOVERY_STATE_ERROR)
        )
        failed = _discovery(watcher)
        assert "GitHub answered 503" in failed.message
        assert failed.HasField("last_success_time")  # the earlier discovery's organizations stay
    me = world.org_stub(person.caller)
    snap = (
        await me.GetAppSnapshot(
            pb.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=signed.auth_session.name)
        )
    ).app_snapshot
    assert snap.github_discovery == failed


async def test_the_token_goes_to_github_data_and_organization_learns_the_accounts_from_its_event(
    world: World,
) -> None:
    """The event path end to end: the token is stored by github-data (the organization service has
    no token table and no ResolveGithubToken any more), github-data's discovery publishes
    `github_data.user_accounts.changed` with what the token sees, and the organization service,
    which consumes only that event, creates the organization and the membership."""
    log = EventLog()
    await log.attach(world.mesh.broker, world.mesh.settings.name_prefix)
    person = new_person(world.github, orgs=1, installed=1)
    acme = f"organizations/{person.orgs[0]}"
    signed = await sign_in(world, person)
    async with AppWatcher(world, person, signed.auth_session.name) as watcher:
        await watcher.until({person.personal, acme})

    def published() -> gh_events_pb2.UserAccountsChanged:
        mine = [e for e in log.of("github_data.user_accounts.changed") if e.user == signed.user.name]
        states = [e.state for e in mine]
        assert states[:1] == [gh_events_pb2.USER_ACCOUNTS_STATE_PENDING], states
        assert states[-1] == gh_events_pb2.USER_ACCOUNTS_STATE_DONE, states
        assert [e.version for e in mine] == sorted({e.version for e in mine})  # versions only grow
        last: gh_events_pb2.UserAccountsChanged = mine[-1]
        return last

    done = await assert_eventually(published)
    assert (done.viewer.login, done.viewer.account_id) == (person.login, person.account_id)
    assert [o.login for o in done.organizations] == person.orgs
    assert done.installations_listed and [i.account_login for i in done.installations] == person.orgs
    assert person.token.encode() not in done.SerializeToString()  # events never carry the token

    member = await world.org_stub(person.caller).GetMember(
        pb.GetMemberRequest(name=f"{acme}/members/{person.account_id}")
    )
    assert member.member.role == member_pb2.MEMBER_ROLE_ADMIN
    assert not hasattr(pb, "ResolveGithubTokenRequest")
    org_db, gh_db = world.mesh.hosts["organization"].db, world.mesh.hosts["github_data"].db
    assert org_db is not None and gh_db is not None
    async with org_db.snapshot() as session:
        tables = await session.run_sync(lambda s: inspect(s.connection()).get_table_names())
    assert "github_tokens" not in tables
    async with gh_db.snapshot() as session:
        tables = await session.run_sync(lambda s: inspect(s.connection()).get_table_names())
    assert "user_tokens" in tables


async def test_only_services_store_tokens_and_no_read_returns_one(world: World) -> None:
    """A user-context caller (even the token's own user) cannot call SetGithubToken
    (PERMISSION_DENIED, nothing stored or queued); the stored token is in no answer of the token RPC
    or of github-data's and the organization service's reads."""
    person = new_person(world.github, orgs=1, installed=0)
    signed = await sign_in(world, person)
    acme = f"organizations/{person.orgs[0]}"
    async with AppWatcher(world, person, signed.auth_session.name) as watcher:
        await watcher.until({person.personal, acme})
        await watcher.synced({person.personal})
    asks = world.github.count("GET /api/v3/user?")
    hostile = "gho_planted_by_the_user"
    for caller in (person.caller, Caller(subject="user/1", login="mallory")):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await world.github_data(caller).SetGithubToken(
                gh_pb2.SetGithubTokenRequest(user=signed.user.name, access_token=hostile, scopes=["repo"])
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    gh_db = world.mesh.hosts["github_data"].db
    assert gh_db is not None
    async with gh_db.snapshot() as session:
        box = SecretBox(world.mesh.settings.credentials_key.get_secret_value())
        token = await stored.get_token(session, box, user_id=str(person.account_id))
    assert token is not None and token.access_token == person.token  # the denied calls changed nothing
    assert world.github.count("GET /api/v3/user?") == asks  # and queued no discovery

    answer = await world.github_data(GATEWAY).SetGithubToken(
        gh_pb2.SetGithubTokenRequest(user=signed.user.name, access_token=person.token, scopes=["repo"])
    )
    service = world.github_data()
    user = world.github_data(person.caller)
    reads = [
        answer,
        await service.GetConnection(gh_pb2.GetConnectionRequest(name=f"{person.personal}/connection")),
        await user.GetConnection(gh_pb2.GetConnectionRequest(name=f"{person.personal}/connection")),
        await user.GetSyncStatus(gh_pb2.GetSyncStatusRequest(name=f"{person.personal}/syncStatus")),
        await user.ListRepositories(_repos(person.personal)),
        await user.ListGithubMembers(gh_pb2.ListGithubMembersRequest(parent=acme)),
        await world.org_stub(person.caller).GetAppSnapshot(
            pb.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=signed.auth_session.name)
        ),
        await world.org_stub(person.caller).GetUser(pb.GetUserRequest(name="users/me")),
    ]
    for response in reads:
        assert person.token.encode() not in response.SerializeToString(), type(response).__name__


def _repos(organization: str) -> gh_pb2.ListRepositoriesRequest:
    return gh_pb2.ListRepositoriesRequest(parent=organization)


# -- the plan (pure) ----------------------------------------------------------------------------------


def test_plan_lists_the_personal_account_first_and_each_organization_once() -> None:
    viewer = GithubAccount("Octo_Cat", 1, name="Octo")
    orgs = [GithubAccount("Zeta", 3), GithubAccount("Acme.Inc", 2), GithubAccount("Zeta", 3)]
    found = plan(viewer, orgs, [AppInstallation(70, "Acme.Inc", 2)])
    assert [(f.organization_id, f.kind, f.role, f.installation, f.installation_id) for f in found] == [
        ("personal-octo-cat", "user", "owner", "connected", 0),
        ("acme-inc", "organization", "admin", "connected", 70),
        ("zeta", "organization", "admin", "install_required", 0),
    ]


def test_without_a_configured_app_organizations_connect_through_the_user_token() -> None:
    found = plan(GithubAccount("octo", 1), [GithubAccount("acme", 2)], None)
    assert [(f.organization_id, f.installation, f.installation_id) for f in found] == [
        ("personal-octo", "connected", 0),
        ("acme", "connected", 0),
    ]
