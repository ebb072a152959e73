"""Task owner (issue #13, item 8): sending a message makes the sender the owner (another member
takes it over), SetTaskOwner hands it to a member and refuses a non-member owner or caller; every
change is on the task, its Watch and the audit log."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import sign_in, task_world
from tests.unit.task.test_session_commands import _ready


async def test_a_member_who_sends_becomes_the_owner_and_set_task_owner_hands_it_back(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        task, first = await _ready(world)
        alice = f"users/{world.alice.user_id}"
        assert task.owner.user == alice and task.owner.login == "alice"

        bob = await world.sign_in("bob")
        as_bob = world.task_stub(bob)
        await as_bob.SendMessage(pb.SendMessageRequest(name=first.name, text="hello from bob"))
        got = await world.get(task.name)
        assert (got.owner.user, got.owner.login) == (f"users/{bob.user_id}", "bob")

        handed = (await as_bob.SetTaskOwner(pb.SetTaskOwnerRequest(name=task.name, user=alice))).task
        assert (
            handed.owner.user == alice
            and handed.owner.update_time.ToDatetime() >= got.owner.update_time.ToDatetime()
        )
        assert (await world.get(task.name)).owner.login == "alice"  # the new owner's, not the caller's

        # A user who is not a member can neither own the task nor change its owner.
        mallory = await sign_in(world.mesh, "mallory")
        with pytest.raises(grpc.aio.AioRpcError) as not_member:
            await world.stub.SetTaskOwner(
                pb.SetTaskOwnerRequest(name=task.name, user=f"users/{mallory.user_id}")
            )
        assert not_member.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "is not a member" in (not_member.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await world.task_stub(mallory).SetTaskOwner(
                pb.SetTaskOwnerRequest(name=task.name, user=f"users/{mallory.user_id}")
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert (await world.get(task.name)).owner.user == alice

        orgs = org_grpc.OrganizationServiceStub(world.mesh.channel("organization", world.alice))

        async def audited() -> None:
            listed = await orgs.ListAuditEvents(org_pb2.ListAuditEventsRequest(parent=world.organization))
            owners = [e for e in listed.audit_events if e.kind == "task.owner"]
            assert len(owners) >= 2, [e.kind for e in listed.audit_events]

        await assert_eventually(audited, timeout=10, interval=0.1)
