"""Issue 5 membership flow: a member added and then removed on the GitHub side (signed `organization`
webhooks through the real gateway) gains and then loses access across the mesh. The removal must
reach every service's membership cache through `organization.member.removed`, well before the caches'
TTL (10 s in the task service, 5 s in the organization service) would have expired the answer."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.task.v1 import task_service_pb2 as task_svc_pb2

from services.platform.identity import Caller
from tests.helpers.github_server import user_json
from tests.helpers.github_sign_in import sign_in_with_github
from tests.unit.flows.support import report_latency
from tests.unit.flows.world import FlowWorld, GithubOrganization

GATEWAY = Caller.service("gateway")
ORGANIZATION = Caller.service("organization")
# Well under the shortest membership cache TTL of the mesh (organization: 5 s, others: 10 s).
PROMPT_SECONDS = 2.5


def _member_payload(gh: GithubOrganization, user: dict[str, Any], action: str) -> bytes:
    """An `organization` webhook body (member_added / member_removed) as GitHub sends it."""
    return json.dumps(
        {
            "action": action,
            "membership": {
                "url": f"{gh.state.api}/orgs/{gh.login}/memberships/{user['login']}",
                "state": "active",
                "role": "member",
                "organization_url": f"{gh.state.api}/orgs/{gh.login}",
                "user": user,
            },
            "organization": gh.organization_json(),
            "sender": gh.state.accounts[gh.login],
            "installation": {"id": gh.installation_id, "node_id": f"MDIz{gh.installation_id}"},
        }
    ).encode()


async def _code(call: Awaitable[Any]) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def _first_event_code(open_call: Callable[[], Any]) -> grpc.StatusCode:
    """The status of a server stream's first read (OK when an event arrived)."""
    call = open_call()
    try:
        await call.read()
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    finally:
        call.cancel()
    return grpc.StatusCode.OK


async def _until(check: Callable[[], Awaitable[bool]], *, timeout: float, what: str) -> float:
    """Poll `check` every 20 ms; returns the seconds it took to hold."""
    started = time.perf_counter()
    while not await check():
        if time.perf_counter() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.02)
    return time.perf_counter() - started


async def removed_member_loses_access_promptly(world: FlowWorld) -> None:
    gh = await world.github_organization(["widgets"])
    org_name = f"organizations/{gh.org}"
    bob_id = 700_000_000 + uuid.uuid4().int % 100_000_000
    bob_login = f"bob-{bob_id}"
    bob_user = user_json(bob_login, bob_id, api=gh.state.api)
    gh.state.accounts[bob_login] = bob_user
    bob = Caller(subject=f"user/{bob_id}", login=bob_login)

    # Bob signs in with GitHub (his discovery runs in the background; the test server does not know
    # his token, so it fails, which changes nothing here): now a GitHub member event can make him
    # an active member.
    signed = await sign_in_with_github(
        world.stubs.org(GATEWAY),
        world.stubs.github_data(GATEWAY),
        github_account_id=bob_id,
        login=bob_login,
        access_token="unknown-to-the-test-server",
    )
    check = world.stubs.org(ORGANIZATION)

    async def is_member() -> bool:
        answer = await check.CheckMembership(
            org_pb2.CheckMembershipRequest(organization=org_name, user=f"users/{bob_id}")
        )
        return bool(answer.member)

    assert not await is_member()
    gh.state.add_member(gh.login, bob_login)
    response = await world.webhook("organization", _member_payload(gh, bob_user, "member_added"))
    assert response.status_code == 202, response.text
    await _until(is_member, timeout=10, what="member_added makes Bob a member")

    org_stub, task_stub = world.stubs.org(bob), world.stubs.task(bob)
    task = f"{org_name}/tasks/t-missing"

    def get_summary() -> Awaitable[Any]:
        return org_stub.GetOrganizationSummary(
            org_pb2.GetOrganizationSummaryRequest(name=f"{org_name}/summary")
        )

    def get_task() -> Awaitable[Any]:
        return task_stub.GetTask(task_svc_pb2.GetTaskRequest(name=task))

    def watch_task() -> Any:
        return task_stub.WatchTask(task_svc_pb2.WatchTaskRequest(name=task))

    # A member: allowed (the task does not exist). These calls fill both services' caches now, so
    # only an invalidation can make them refuse Bob before their TTL.
    assert await _code(get_summary()) == grpc.StatusCode.OK
    assert await _code(get_task()) == grpc.StatusCode.NOT_FOUND
    assert await _first_event_code(watch_task) == grpc.StatusCode.NOT_FOUND
    app = await world.stubs.org(bob).GetAppSnapshot(
        org_pb2.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=signed.auth_session.name)
    )
    assert org_name in [o.name for o in app.app_snapshot.organizations]

    gh.state.members[gh.login] = [(u, a) for u, a in gh.state.members[gh.login] if u["login"] != bob_login]
    removed_at = time.perf_counter()
    response = await world.webhook("organization", _member_payload(gh, bob_user, "member_removed"))
    assert response.status_code == 202, response.text
    denied = grpc.StatusCode.PERMISSION_DENIED

    async def task_denied() -> bool:
        return await _code(get_task()) == denied

    async def watch_denied() -> bool:
        return await _first_event_code(watch_task) == denied

    async def summary_denied() -> bool:
        return await _code(get_summary()) == denied

    await _until(task_denied, timeout=PROMPT_SECONDS, what="GetTask refuses the removed member")
    await _until(watch_denied, timeout=PROMPT_SECONDS, what="WatchTask refuses the removed member")
    await _until(summary_denied, timeout=PROMPT_SECONDS, what="GetOrganizationSummary refuses him")
    elapsed = time.perf_counter() - removed_at
    report_latency("member_removed webhook -> PERMISSION_DENIED everywhere", [elapsed])
    assert elapsed < PROMPT_SECONDS
    assert not await is_member()
    app = await world.stubs.org(bob).GetAppSnapshot(
        org_pb2.GetAppSnapshotRequest(name="users/me/appSnapshot", auth_session=signed.auth_session.name)
    )
    assert org_name not in [o.name for o in app.app_snapshot.organizations]
    assert org_name not in app.app_snapshot.user.eligible_organizations
