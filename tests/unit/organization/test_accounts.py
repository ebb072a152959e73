"""Sign-in, auth sessions, the app shell, local organizations, membership and the audit log."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import grpc
import pytest
from foundry.github_data.v1 import sync_status_pb2
from foundry.organization.v1 import app_snapshot_pb2, audit_event_pb2, member_pb2, organization_pb2, user_pb2
from foundry.organization.v1 import events_pb2 as org_events
from foundry.organization.v1 import organization_service_pb2 as pb
from google.protobuf import field_mask_pb2, struct_pb2
from prometheus_client import REGISTRY

from services.platform.identity import Caller
from services.platform.messaging.broker import queue_name
from services.platform.watch.testing import WatchClient
from tests.helpers import assert_eventually
from tests.helpers.mesh import ALICE, BOB
from tests.unit.organization.support import OrgEnv, SummaryWatcher, new_org_id, resources_of, sync_progress

GATEWAY = Caller.service("gateway")


async def _sign_in(env: OrgEnv, login: str) -> pb.SignInLocalResponse:
    return await env.stub(GATEWAY).SignInLocal(pb.SignInLocalRequest(login=login, user_agent="pytest"))


def _as(user: user_pb2.User) -> Caller:
    return Caller(subject=f"user/{user.name.removeprefix('users/')}", login=user.login)


async def test_local_sign_in_gives_a_stable_user_id_and_a_new_session(env: OrgEnv) -> None:
    first = await _sign_in(env, "Carol")
    again = await _sign_in(env, "Carol")
    assert first.user.name == again.user.name == "users/local-carol"
    assert first.user.identity_provider == user_pb2.IDENTITY_PROVIDER_LOCAL
    assert first.user.email == "Carol@localhost"
    assert first.auth_session.name != again.auth_session.name


async def test_signed_out_session_is_rejected_with_session_revoked(env: OrgEnv) -> None:
    signed = await _sign_in(env, "dave")
    me = env.stub(_as(signed.user))
    got = await me.GetAuthSession(pb.GetAuthSessionRequest(name=signed.auth_session.name))
    assert got.user.login == "dave"
    await me.SignOut(pb.SignOutRequest(auth_session=signed.auth_session.name))
    await me.SignOut(pb.SignOutRequest(auth_session=signed.auth_session.name))  # revoking twice succeeds
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await me.GetAuthSession(pb.GetAuthSessionRequest(name=signed.auth_session.name))
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED
    snapshot = (
        await me.GetAppSnapshot(
            pb.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=signed.auth_session.name)
        )
    ).app_snapshot
    assert snapshot.auth_status == app_snapshot_pb2.AUTH_STATUS_SIGNED_OUT


async def test_connecting_a_local_directory_makes_the_caller_owner_and_connects_github_data(
    env: OrgEnv, tmp_path: Path
) -> None:
    signed = await _sign_in(env, "erin")
    erin = env.stub(_as(signed.user))
    root = tmp_path / "My Repos"
    root.mkdir()
    request_id = uuid.uuid4().hex
    org = (
        await erin.ConnectLocalOrganization(
            pb.ConnectLocalOrganizationRequest(root_path=str(root), request_id=request_id)
        )
    ).organization
    assert (org.name, org.display_name, org.kind) == (
        "organizations/local-my-repos",
        "My Repos",
        organization_pb2.ORGANIZATION_KIND_PERSONAL,
    )
    assert org.provider == sync_status_pb2.PROVIDER_LOCAL and org.local_root_path == str(root)
    assert org.sync_status.state == sync_status_pb2.SYNC_STATE_PENDING
    retry = (
        await erin.ConnectLocalOrganization(
            pb.ConnectLocalOrganizationRequest(root_path=str(root), request_id=request_id)
        )
    ).organization
    assert retry.name == org.name
    check = await erin.CheckMembership(pb.CheckMembershipRequest(organization=org.name))
    assert check.member and check.role == member_pb2.MEMBER_ROLE_OWNER

    def connected() -> None:
        roots = [
            c.connection.local.root_path
            for c in env.github.connects
            if c.connection.name.startswith(org.name)
        ]
        assert roots and roots[0] == str(root)

    await assert_eventually(connected)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await erin.ConnectLocalOrganization(
            pb.ConnectLocalOrganizationRequest(organization_id="local-my-repos", root_path=str(other))
        )
    assert taken.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as missing:
        await erin.ConnectLocalOrganization(
            pb.ConnectLocalOrganizationRequest(root_path=str(tmp_path / "nope"))
        )
    assert missing.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_app_snapshot_lists_eligible_organizations_and_select_returns_at_once(
    env: OrgEnv, tmp_path: Path
) -> None:
    signed = await _sign_in(env, "frank")
    frank = env.stub(_as(signed.user))
    session = signed.auth_session.name
    org = await env.new_org(tmp_path, caller=_as(signed.user))
    snapshot = (
        await frank.GetAppSnapshot(
            pb.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=session)
        )
    ).app_snapshot
    assert snapshot.auth_status == app_snapshot_pb2.AUTH_STATUS_SIGNED_IN
    assert [o.name for o in snapshot.organizations] == [f"organizations/{org}"]
    assert snapshot.active_organization == f"organizations/{org}"  # the only eligible one
    assert list(snapshot.user.eligible_organizations) == [f"organizations/{org}"]
    second = await env.new_org(tmp_path, caller=_as(signed.user))
    selected = (
        await frank.SelectOrganization(
            pb.SelectOrganizationRequest(auth_session=session, organization=f"organizations/{second}")
        )
    ).app_snapshot
    assert selected.active_organization == f"organizations/{second}"
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await frank.SelectOrganization(
            pb.SelectOrganizationRequest(auth_session=session, organization=f"organizations/{new_org_id()}")
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (
        await frank.GetAppSnapshot(pb.GetAppSnapshotRequest(name="users/me/appSnapshot"))
    ).app_snapshot.auth_status == (app_snapshot_pb2.AUTH_STATUS_SIGNED_OUT)


async def test_app_snapshot_is_the_callers_singleton(env: OrgEnv) -> None:
    """AIP-131/156: GetAppSnapshot and WatchApp name `users/{user}/appSnapshot`; `users/me` is the
    caller, a user may name only themselves, a service names the session's user."""
    signed = await _sign_in(env, "ivy")
    ivy = env.stub(_as(signed.user))
    session = signed.auth_session.name
    mine = (
        await ivy.GetAppSnapshot(pb.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=session))
    ).app_snapshot
    assert mine.name == "users/local-ivy/appSnapshot" and mine.auth_session.name == session
    by_id = await ivy.GetAppSnapshot(
        pb.GetAppSnapshotRequest(name="users/local-ivy/appSnapshot", auth_session=session)
    )
    assert by_id.app_snapshot == mine
    for_gateway = await env.stub(GATEWAY).GetAppSnapshot(
        pb.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=session)
    )
    assert for_gateway.app_snapshot.name == "users/local-ivy/appSnapshot"
    other = await _sign_in(env, "jack")
    cases = [
        (pb.GetAppSnapshotRequest(auth_session=session), grpc.StatusCode.INVALID_ARGUMENT),
        (pb.GetAppSnapshotRequest(name="users/me", auth_session=session), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.GetAppSnapshotRequest(name="users/local-jack/appSnapshot", auth_session=session),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
        (
            pb.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=other.auth_session.name),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await ivy.GetAppSnapshot(request)
        assert (error.value.code(), bool(error.value.details())) == (code, True), request
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await env.stub(GATEWAY).GetAppSnapshot(
            pb.GetAppSnapshotRequest(name="users/local-jack/appSnapshot", auth_session=session)
        )
    assert error.value.code() == grpc.StatusCode.PERMISSION_DENIED  # the session is not jack's
    for watch, code in [
        (pb.WatchAppRequest(auth_session=session), grpc.StatusCode.INVALID_ARGUMENT),
        (
            pb.WatchAppRequest(name="users/local-jack/appSnapshot", auth_session=session),
            grpc.StatusCode.PERMISSION_DENIED,
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as error:
            async for _ in ivy.WatchApp(watch):
                pass
        assert error.value.code() == code, watch


async def test_watch_app_streams_selection_and_sync_status_changes(env: OrgEnv, tmp_path: Path) -> None:
    signed = await _sign_in(env, "gina")
    gina = _as(signed.user)
    org = await env.new_org(tmp_path, caller=gina)
    client = WatchClient()
    client.begin()
    call = env.stub(gina).WatchApp(
        pb.WatchAppRequest(name="users/me/appSnapshot", auth_session=signed.auth_session.name)
    )

    async def read() -> None:
        async for response in call:
            client.apply(response.event)

    reader = asyncio.create_task(read())
    try:
        await assert_eventually(
            lambda: _assert(len(resources_of(client, organization_pb2.Organization)) == 1)
        )
        await env.stub(gina).SelectOrganization(
            pb.SelectOrganizationRequest(
                auth_session=signed.auth_session.name, organization=f"organizations/{org}"
            )
        )
        await env.publish(sync_progress(org, 1, repositories=3))

        def updated() -> None:
            sessions = resources_of(client, user_pb2.AuthSession)
            assert sessions[signed.auth_session.name].active_organization == f"organizations/{org}"
            (organization,) = resources_of(client, organization_pb2.Organization).values()
            assert organization.sync_status.repository_count == 3

        await assert_eventually(updated)
    finally:
        call.cancel()
        with pytest.raises((asyncio.CancelledError, grpc.aio.AioRpcError)):
            await reader


def _assert(condition: bool) -> None:
    assert condition


async def test_watch_app_with_a_revoked_session_is_unauthenticated(env: OrgEnv) -> None:
    signed = await _sign_in(env, "hank")
    hank = _as(signed.user)
    await env.stub(hank).SignOut(pb.SignOutRequest(auth_session=signed.auth_session.name))
    call = env.stub(hank).WatchApp(
        pb.WatchAppRequest(name="users/me/appSnapshot", auth_session=signed.auth_session.name)
    )
    with pytest.raises(grpc.aio.AioRpcError) as error:
        async for _ in call:
            pass
    assert error.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_check_membership_answers_false_for_non_members(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    answer = await env.stub(BOB).CheckMembership(
        pb.CheckMembershipRequest(organization=f"organizations/{org}")
    )
    assert not answer.member and answer.role == member_pb2.MEMBER_ROLE_UNSPECIFIED
    for_alice = await env.stub(GATEWAY).CheckMembership(
        pb.CheckMembershipRequest(
            organization=f"organizations/{org}", user=ALICE.subject.replace("user/", "users/")
        )
    )
    assert for_alice.member


async def test_redelivered_audit_event_is_stored_once_and_listed_newest_first(
    env: OrgEnv, tmp_path: Path
) -> None:
    org = await env.new_org(tmp_path)
    queue = queue_name(env.mesh.settings.name_prefix, "organization", "audit")

    async def send(event_id: str, kind: str, seconds: int, task: str) -> None:
        event = audit_event_pb2.AuditEvent(
            kind=kind,
            task=f"organizations/{org}/tasks/{task}",
            branch="b",
            actor="services/task",
            payload=struct_pb2.Struct(),
        )
        event.create_time.FromSeconds(1_800_000_000 + seconds)
        message = org_events.AppendAuditEvent(
            organization=f"organizations/{org}", event_id=event_id, audit_event=event
        )
        await env.mesh.broker.publish(
            exchange="", routing_key=queue, body=message.SerializeToString(), message_id=event_id
        )

    await send("e1", "task.created", 1, "t1")
    await send("e2", "task.status", 2, "t1")
    await send("e2", "task.status", 2, "t1")  # redelivery
    await send("e3", "task.created", 3, "t2")

    async def listed() -> list[str]:
        events = (
            await env.stub().ListAuditEvents(pb.ListAuditEventsRequest(parent=f"organizations/{org}"))
        ).audit_events
        assert len(events) == 3
        return [e.kind for e in events]

    assert await assert_eventually(listed) == ["task.created", "task.status", "task.created"]
    only_t1 = await env.stub().ListAuditEvents(
        pb.ListAuditEventsRequest(
            parent=f"organizations/{org}", task=f"organizations/{org}/tasks/t1", page_size=1
        )
    )
    assert [e.kind for e in only_t1.audit_events] == ["task.status"] and only_t1.next_page_token
    rest = await env.stub().ListAuditEvents(
        pb.ListAuditEventsRequest(
            parent=f"organizations/{org}",
            task=f"organizations/{org}/tasks/t1",
            page_token=only_t1.next_page_token,
        )
    )
    assert [e.kind for e in rest.audit_events] == ["task.created"] and not rest.next_page_token


async def test_one_audit_item_appends_its_entries_in_order_once_and_a_bad_entry_stores_none(
    env: OrgEnv, tmp_path: Path
) -> None:
    """AppendAuditEvent carries every entry of one change of the sender (`audit_event`, then
    `audit_events`): stored in order in one transaction, once across a redelivery; an entry without
    a kind refuses the whole item (dead-lettered) and stores none of it."""
    org = await env.new_org(tmp_path)
    queue = queue_name(env.mesh.settings.name_prefix, "organization", "audit")

    def entry(kind: str, seconds: int) -> audit_event_pb2.AuditEvent:
        event = audit_event_pb2.AuditEvent(
            kind=kind, task=f"organizations/{org}/tasks/t1", actor="services/task"
        )
        event.create_time.FromSeconds(1_800_000_000 + seconds)
        return event

    async def send(
        event_id: str, first: audit_event_pb2.AuditEvent, *more: audit_event_pb2.AuditEvent
    ) -> None:
        message = org_events.AppendAuditEvent(
            organization=f"organizations/{org}", event_id=event_id, audit_event=first, audit_events=more
        )
        await env.mesh.broker.publish(
            exchange="", routing_key=queue, body=message.SerializeToString(), message_id=event_id
        )

    labels = {"service": "organization", "queue": queue, "outcome": "dead_letter"}
    refused = REGISTRY.get_sample_value("foundry_messages_handled_total", labels) or 0.0
    await send("bad", entry("task.created", 0), entry("", 0))  # refused whole: nothing of it stored

    def dead_lettered() -> None:
        assert (REGISTRY.get_sample_value("foundry_messages_handled_total", labels) or 0.0) > refused

    await assert_eventually(dead_lettered)
    changed = (entry("task.provision.stage", 1), entry("task.provision.step", 1), entry("task.status", 1))
    await send("b1", *changed)
    await send("b1", *changed)  # redelivery

    async def listed() -> list[str]:
        events = (
            await env.stub().ListAuditEvents(pb.ListAuditEventsRequest(parent=f"organizations/{org}"))
        ).audit_events
        assert len(events) == 3, events
        return [e.kind for e in events]

    # Newest first: one instant, so the last appended comes first.
    assert await assert_eventually(listed) == ["task.status", "task.provision.step", "task.provision.stage"]


async def test_settings_updates_need_an_owner_and_github_users_sign_in_without_a_token_here(
    env: OrgEnv, tmp_path: Path
) -> None:
    org = await env.new_org(tmp_path)
    owner = env.stub()
    updated = await owner.UpdateOrganization(
        pb.UpdateOrganizationRequest(
            organization=organization_pb2.Organization(name=f"organizations/{org}", display_name="Renamed"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    assert updated.organization.display_name == "Renamed"
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await env.stub(BOB).UpdateOrganization(
            pb.UpdateOrganizationRequest(
                organization=organization_pb2.Organization(name=f"organizations/{org}", display_name="Mine"),
                update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
            )
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as bad_mask:
        await owner.UpdateOrganization(
            pb.UpdateOrganizationRequest(
                organization=organization_pb2.Organization(name=f"organizations/{org}"),
                update_mask=field_mask_pb2.FieldMask(paths=["kind"]),
            )
        )
    assert bad_mask.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    # The permission policy: unset (allow) until an admin sets it; unknown values are refused.
    assert updated.organization.permission_policy == organization_pb2.PERMISSION_POLICY_UNSPECIFIED
    policy_mask = field_mask_pb2.FieldMask(paths=["permission_policy"])
    asked = await owner.UpdateOrganization(
        pb.UpdateOrganizationRequest(
            organization=organization_pb2.Organization(
                name=f"organizations/{org}", permission_policy=organization_pb2.PERMISSION_POLICY_ASK
            ),
            update_mask=policy_mask,
        )
    )
    assert asked.organization.permission_policy == organization_pb2.PERMISSION_POLICY_ASK
    for caller, policy, code in (
        (None, 42, grpc.StatusCode.INVALID_ARGUMENT),
        (BOB, organization_pb2.PERMISSION_POLICY_ALLOW, grpc.StatusCode.PERMISSION_DENIED),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await (env.stub(caller) if caller else owner).UpdateOrganization(
                pb.UpdateOrganizationRequest(
                    organization=organization_pb2.Organization(
                        name=f"organizations/{org}",
                        permission_policy=policy,  # type: ignore[arg-type]
                    ),
                    update_mask=policy_mask,
                )
            )
        assert refused.value.code() == code
    got = await owner.GetOrganization(pb.GetOrganizationRequest(name=f"organizations/{org}"))
    assert got.organization.permission_policy == organization_pb2.PERMISSION_POLICY_ASK

    signed = await env.stub(GATEWAY).SignInWithGithub(
        pb.SignInWithGithubRequest(github_account_id=4242, login="octo")
    )
    octo = _as(signed.user)
    assert signed.user.name == "users/4242"
    await env.new_org(tmp_path, caller=octo)  # a GitHub user connects a local organization too
    renamed = await env.stub(octo).UpdateUser(
        pb.UpdateUserRequest(
            user=user_pb2.User(name="users/me", display_name="Octo Cat"),
            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]),
        )
    )
    assert renamed.user.display_name == "Octo Cat"
    # GitHub tokens are github-data's (SetGithubToken; tests/unit/github_data/test_user_tokens.py):
    # this service neither takes nor hands out one.
    assert "access_token" not in pb.SignInWithGithubRequest.DESCRIPTOR.fields_by_name
    assert not hasattr(pb, "ResolveGithubTokenRequest")


def _sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_app_and_workbench_bootstraps_are_timed_and_a_resume_is_counted_not_timed(
    env: OrgEnv, tmp_path: Path
) -> None:
    """The seed's observability list: the app snapshot's and the workbench's (organization summary)
    bootstrap durations (`foundry_watch_bootstrap_seconds`, kinds `app` and `org_summary`), and a
    reconnect with a token counted by view (`foundry_watch_resumes_total`), not timed again."""
    signed = await _sign_in(env, "iris")
    iris = _as(signed.user)
    org = await env.new_org(tmp_path, caller=iris)
    timed = "foundry_watch_bootstrap_seconds_count"
    before = {kind: _sample(timed, service="organization", kind=kind) for kind in ("app", "org_summary")}
    resumed = _sample(
        "foundry_watch_resumes_total", service="organization", kind="org_summary", outcome="caught_up"
    )

    app = WatchClient()
    app.begin()
    call = env.stub(iris).WatchApp(
        pb.WatchAppRequest(name="users/me/appSnapshot", auth_session=signed.auth_session.name)
    )
    summary = SummaryWatcher(env, org, caller=iris).start()

    async def read_app() -> None:
        async for response in call:
            app.apply(response.event)

    reader = asyncio.create_task(read_app())
    try:
        await assert_eventually(lambda: _assert(bool(app.token) and bool(summary.client.token)))
        assert _sample(timed, service="organization", kind="app") == before["app"] + 1
        assert _sample(timed, service="organization", kind="org_summary") == before["org_summary"] + 1
        assert _sample("foundry_watch_bootstrap_seconds_sum", service="organization", kind="app") > 0
        await summary.stop()
        again = SummaryWatcher(env, org, summary.client, caller=iris).start()  # with its token
        try:
            await assert_eventually(
                lambda: _assert(
                    _sample(
                        "foundry_watch_resumes_total",
                        service="organization",
                        kind="org_summary",
                        outcome="caught_up",
                    )
                    == resumed + 1
                )
            )
            assert _sample(timed, service="organization", kind="org_summary") == before["org_summary"] + 1
        finally:
            await again.stop()
    finally:
        call.cancel()
        reader.cancel()
