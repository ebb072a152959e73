"""GitHub organization discovery on PostgreSQL + RabbitMQ: the sign-in returns before GitHub is asked;
github-data's discovery worker (fed through the outbox and a RabbitMQ work queue) publishes what the
token sees, the organization service creates the personal and GitHub organizations seen on WatchApp,
the real github-data service syncs the connected ones, and a redelivered message has no second
effect."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from foundry.github_data.v1 import events_pb2 as gh_events_pb2
from foundry.github_data.v1 import sync_status_pb2 as ss
from foundry.organization.v1 import member_pb2
from foundry.organization.v1 import organization_service_pb2 as pb

from services.platform.settings import Settings
from tests.helpers import assert_eventually
from tests.helpers.infra import unique_name
from tests.unit.organization.test_github_discovery import (
    AppWatcher,
    World,
    handled,
    new_person,
    open_world,
    processed_message_id,
    sign_in,
)

pytestmark = pytest.mark.integration


@pytest.fixture(name="world", scope="module")
async def _world(
    pg_url: str, amqp_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[World]:
    base = Settings(
        data_dir=tmp_path_factory.mktemp("discovery-pg"),
        database_url=pg_url,
        amqp_url=amqp_url,
        name_prefix=unique_name("foundry"),
        metrics_port=0,
        log_format="console",
        log_level="WARNING",
    )
    async with open_world(base) as world:
        yield world


async def test_github_sign_in_discovers_and_connects_organizations_on_postgres_and_rabbitmq(
    world: World,
) -> None:
    person = new_person(world.github, orgs=2, installed=1)
    acme, beta = (f"organizations/{o}" for o in person.orgs)
    gate = world.github.hold("GET /api/v3/user?")
    signed = await asyncio.wait_for(sign_in(world, person), timeout=5)
    assert list(signed.user.eligible_organizations) == []
    async with AppWatcher(world, person, signed.auth_session.name) as watcher:
        gate.set()
        orgs = await watcher.until({person.personal, acme, beta}, timeout=30)
        assert orgs[beta].sync_status.installation_status == ss.INSTALLATION_STATUS_INSTALL_REQUIRED
        await watcher.synced({person.personal, acme})

        # Redeliver the processed message through RabbitMQ: it is acknowledged and changes nothing.
        stub = world.org_stub(person.caller)
        request = pb.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=signed.auth_session.name)
        token = (await stub.GetAppSnapshot(request)).resume_token
        asks, acked = world.github.count("GET /api/v3/user?"), handled(world, "ack")
        await world.mesh.broker.publish(
            exchange="",
            routing_key=world.sync_queue,
            body=gh_events_pb2.DiscoverUserAccounts(user=f"users/{person.account_id}").SerializeToString(),
            message_id=await processed_message_id(world),
        )

        def acknowledged() -> None:
            assert handled(world, "ack") > acked

        await assert_eventually(acknowledged, timeout=15)
        assert (await stub.GetAppSnapshot(request)).resume_token == token
        assert world.github.count("GET /api/v3/user?") == asks

    member = await stub.GetMember(pb.GetMemberRequest(name=f"{acme}/members/{person.account_id}"))
    assert member.member.role == member_pb2.MEMBER_ROLE_ADMIN
    owner = await stub.GetMember(pb.GetMemberRequest(name=f"{person.personal}/members/{person.account_id}"))
    assert owner.member.role == member_pb2.MEMBER_ROLE_OWNER
