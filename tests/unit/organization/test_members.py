"""GitHub member events (`github_data.member.*`) applied to the member rows: versioned and idempotent,
each change announced as `organization.member.*`, and a removal refused at once by the service's own
membership cache (its TTL is 5 s)."""

from __future__ import annotations

import time
from collections.abc import Awaitable
from pathlib import Path

import grpc
from foundry.github_data.v1 import events_pb2 as gh_events
from foundry.github_data.v1 import github_member_pb2
from foundry.organization.v1 import events_pb2, member_pb2
from foundry.organization.v1 import organization_service_pb2 as pb

from services.platform.identity import Caller
from tests.helpers import assert_eventually
from tests.helpers.mesh import ALICE
from tests.unit.organization.support import OrgEnv

ORGANIZATION = Caller.service("organization")


def changed(
    org: str, member_id: str, version: int, *, login: str, role: str = "member"
) -> tuple[str, object]:
    name = f"organizations/{org}/githubMembers/{member_id}"
    return "github_data.member.changed", gh_events.GithubMemberChanged(
        name=name,
        version=version,
        github_member=github_member_pb2.GithubMember(name=name, login=login, role=role, state="active"),
    )


def removed(org: str, member_id: str, version: int, *, login: str) -> tuple[str, object]:
    return "github_data.member.removed", gh_events.GithubMemberRemoved(
        name=f"organizations/{org}/githubMembers/{member_id}", version=version, login=login
    )


async def test_github_member_events_apply_in_version_order_and_are_announced(
    env: OrgEnv, tmp_path: Path
) -> None:
    """A GitHub member event older than, or as old as, the last one applied to that member changes
    nothing; a newer one applies (a user who never signed in is INVITED, without access; a removal
    deletes the row), and the member's announcements are exactly the applied changes, in order."""
    org = await env.new_org(tmp_path)
    seen: list[tuple[str, bytes]] = []

    async def record(routing_key: str, body: bytes) -> None:
        seen.append((routing_key, body))

    subscription = await env.mesh.broker.subscribe_events("organization.member.*", record)
    member = f"organizations/{org}/members/424242"
    stub = env.stub(ORGANIZATION)
    try:
        await env.publish(changed(org, "424242", 5, login="newbie"))  # type: ignore[arg-type]

        async def invited() -> member_pb2.Member:
            try:
                got = (await stub.GetMember(pb.GetMemberRequest(name=member))).member
            except grpc.aio.AioRpcError as exc:
                raise AssertionError(exc.code()) from exc
            assert got.state == member_pb2.MEMBER_STATE_INVITED and got.role == member_pb2.MEMBER_ROLE_MEMBER
            return got

        first = await assert_eventually(invited)
        assert first.login == "newbie"
        check = await stub.CheckMembership(
            pb.CheckMembershipRequest(organization=f"organizations/{org}", user="users/424242")
        )
        assert not check.member  # known from GitHub, never signed in: no access yet

        # An older removal and a repeated change are ignored; a newer removal deletes the row.
        await env.publish(removed(org, "424242", 4, login="newbie"))  # type: ignore[arg-type]
        await env.publish(changed(org, "424242", 5, login="renamed"))  # type: ignore[arg-type]
        # Both handled (not just published) before the row is compared: idle() returns once every
        # message published so far is settled, and the Worker acks only after the handler's
        # transaction committed. (A later marker event would not do: the queue's prefetch lets its
        # handlers run concurrently, so a marker could be applied before the events it follows.)
        assert await env.mesh.broker.idle(time.monotonic() + 10)  # type: ignore[attr-defined]
        assert (await stub.GetMember(pb.GetMemberRequest(name=member))).member == first
        await env.publish(removed(org, "424242", 6, login="newbie"))  # type: ignore[arg-type]

        async def gone() -> None:
            assert await _code(stub.GetMember(pb.GetMemberRequest(name=member))) == grpc.StatusCode.NOT_FOUND

        await assert_eventually(gone)

        def announced() -> list[events_pb2.MemberChanged | events_pb2.MemberRemoved]:
            events = [_decode(key, body) for key, body in seen]
            mine = [e for e in events if e.name == member]
            assert [type(e).__name__ for e in mine] == ["MemberChanged", "MemberRemoved"], events
            return mine

        added, gone_event = await assert_eventually(announced)
        assert isinstance(added, events_pb2.MemberChanged) and isinstance(
            gone_event, events_pb2.MemberRemoved
        )
        assert added.member.state == member_pb2.MEMBER_STATE_INVITED and gone_event.user == "users/424242"
        assert gone_event.version > added.version
    finally:
        await subscription.cancel()


async def _code(call: Awaitable[object]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _decode(key: str, body: bytes) -> events_pb2.MemberChanged | events_pb2.MemberRemoved:
    if key == "organization.member.changed":
        return events_pb2.MemberChanged.FromString(body)
    return events_pb2.MemberRemoved.FromString(body)


async def test_a_member_removed_on_github_is_refused_before_the_cache_ttl(
    env: OrgEnv, tmp_path: Path
) -> None:
    org = await env.new_org(tmp_path)  # ALICE (users/1001) owns it
    summary = pb.GetOrganizationSummaryRequest(name=f"organizations/{org}/summary")
    await env.stub(ALICE).GetOrganizationSummary(summary)  # caches "member" for 5 s
    removed_at = time.perf_counter()
    await env.publish(removed(org, ALICE.subject.removeprefix("user/"), 1, login="alice"))  # type: ignore[arg-type]

    async def refused() -> None:
        code = await _code(env.stub(ALICE).GetOrganizationSummary(summary))
        assert code == grpc.StatusCode.PERMISSION_DENIED

    await assert_eventually(refused, timeout=10)
    assert time.perf_counter() - removed_at < 2.0
    organizations = await env.stub(ALICE).ListOrganizations(pb.ListOrganizationsRequest())
    assert f"organizations/{org}" not in [o.name for o in organizations.organizations]
