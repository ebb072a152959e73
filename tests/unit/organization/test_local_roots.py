"""Local organizations as an attacker would try them: another user's directory, paths outside the
allowed roots, symlinks out, the mesh's own data; and CreateMember, the one way in for a second user.

Every refused call must also change nothing: no membership, no organization, no connect enqueued.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import grpc
import pytest
from foundry.organization.v1 import member_pb2, user_pb2
from foundry.organization.v1 import organization_service_pb2 as pb
from grpc_status import rpc_status

from services.platform.identity import Caller
from services.platform.settings import Settings
from tests.helpers import assert_eventually
from tests.unit.organization.support import OrgEnv, new_org_id

GATEWAY = Caller.service("gateway")


async def _user(env: OrgEnv, login: str) -> Caller:
    signed = await env.stub(GATEWAY).SignInLocal(pb.SignInLocalRequest(login=login))
    user: user_pb2.User = signed.user
    return Caller(subject=f"user/{user.name.removeprefix('users/')}", login=login)


def _reason(error: grpc.aio.AioRpcError) -> str:
    status = rpc_status.from_call(error)
    assert status is not None, error
    from google.rpc import error_details_pb2

    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return str(info.reason)
    raise AssertionError(f"no ErrorInfo in {error}")


async def _refused(
    env: OrgEnv, caller: Caller, root: str, org_id: str = "", request_id: str = ""
) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await env.stub(caller).ConnectLocalOrganization(
            pb.ConnectLocalOrganizationRequest(organization_id=org_id, root_path=root, request_id=request_id)
        )
    return error.value


async def _is_member(env: OrgEnv, caller: Caller, org: str) -> bool:
    check = await env.stub(caller).CheckMembership(pb.CheckMembershipRequest(organization=org))
    return bool(check.member)


async def test_another_user_connecting_the_same_directory_gets_no_membership(
    env: OrgEnv, tmp_path: Path
) -> None:
    alice, mallory = (
        await _user(env, f"a{uuid.uuid4().hex[:6]}"),
        await _user(env, f"m{uuid.uuid4().hex[:6]}"),
    )
    root = tmp_path / f"repos-{uuid.uuid4().hex[:6]}"
    root.mkdir()
    request_id = uuid.uuid4().hex
    org = (
        await env.stub(alice).ConnectLocalOrganization(
            pb.ConnectLocalOrganizationRequest(root_path=str(root), request_id=request_id)
        )
    ).organization

    def connected() -> None:
        assert any(c.connection.name.startswith(org.name) for c in env.github.connects)

    await assert_eventually(connected)
    connects_before = len(env.github.connects)

    # Same directory, same derived id: the id is taken, and nothing is granted.
    same = await _refused(env, mallory, str(root))
    assert same.code() == grpc.StatusCode.ALREADY_EXISTS and _reason(same) == "ORGANIZATION_ID_TAKEN"
    # Same directory and the explicit id.
    explicit = await _refused(env, mallory, str(root), org_id=org.name.removeprefix("organizations/"))
    assert explicit.code() == grpc.StatusCode.ALREADY_EXISTS
    # Alice's request id replayed by someone else is not an answer for them.
    replay = await _refused(env, mallory, str(tmp_path), request_id=request_id)
    assert replay.code() in (grpc.StatusCode.ALREADY_EXISTS, grpc.StatusCode.PERMISSION_DENIED)
    # The same directory (or one inside or around it) under a fresh id would hand over its code.
    for path in (root, root / "..", tmp_path):
        path.mkdir(exist_ok=True)
        elsewhere = await _refused(env, mallory, str(path), org_id=new_org_id())
        assert elsewhere.code() == grpc.StatusCode.PERMISSION_DENIED, elsewhere
        assert _reason(elsewhere) == "ROOT_CONNECTED_ELSEWHERE"
    inner = root / "inner"
    inner.mkdir()
    assert (
        await _refused(env, mallory, str(inner), org_id=new_org_id())
    ).code() == grpc.StatusCode.PERMISSION_DENIED

    assert not await _is_member(env, mallory, org.name)
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await env.stub(mallory).GetOrganization(pb.GetOrganizationRequest(name=org.name))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert len(env.github.connects) == connects_before  # (a later connect would have arrived by now:
    # the owner's reconnect below is idempotent and enqueues nothing either)
    # The owner still gets the idempotent answer.
    again = await env.stub(alice).ConnectLocalOrganization(
        pb.ConnectLocalOrganizationRequest(root_path=str(root))
    )
    assert again.organization.name == org.name


@pytest.mark.parametrize("path", ["/", "/etc", "/proc/self", "/root", "/usr/lib"])
async def test_paths_outside_the_allowed_roots_are_refused(env: OrgEnv, path: str) -> None:
    mallory = await _user(env, f"m{uuid.uuid4().hex[:6]}")
    error = await _refused(env, mallory, path, org_id=new_org_id())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
    assert _reason(error) == "ROOT_NOT_ALLOWED"
    assert "outside the directories" in (error.details() or "")


async def test_a_symlink_out_of_the_allowed_roots_is_followed_and_refused(
    env: OrgEnv, tmp_path: Path
) -> None:
    mallory = await _user(env, f"m{uuid.uuid4().hex[:6]}")
    link = tmp_path / "innocent"
    link.symlink_to("/etc")
    error = await _refused(env, mallory, str(link), org_id=new_org_id())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED and _reason(error) == "ROOT_NOT_ALLOWED"
    dotdot = tmp_path / "a"
    dotdot.mkdir()
    error = await _refused(env, mallory, f"{dotdot}" + "/.." * 12 + "/etc", org_id=new_org_id())
    assert error.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_mesh_data_directory_and_sandbox_root_are_always_refused(env: OrgEnv) -> None:
    mallory = await _user(env, f"m{uuid.uuid4().hex[:6]}")
    settings = env.mesh.settings
    sandboxes = settings.sandbox_root()
    sandboxes.mkdir(parents=True, exist_ok=True)
    (sandboxes / "acme--s1" / "work").mkdir(parents=True, exist_ok=True)
    link = settings.data_dir.parent / f"link-{uuid.uuid4().hex[:6]}"
    link.symlink_to(settings.data_dir)
    for path in (
        settings.data_dir,
        sandboxes,
        sandboxes / "acme--s1",
        sandboxes / "acme--s1" / "work",
        settings.data_dir.parent,
        link,
    ):
        error = await _refused(env, mallory, str(path), org_id=new_org_id())
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, (path, error)
        assert _reason(error) == "ROOT_PROTECTED"


async def test_owners_add_members_and_nobody_else_can(env: OrgEnv, tmp_path: Path) -> None:
    alice = await _user(env, f"a{uuid.uuid4().hex[:6]}")
    bob = await _user(env, f"b{uuid.uuid4().hex[:6]}")
    carol = await _user(env, f"c{uuid.uuid4().hex[:6]}")
    org_id = await env.new_org(tmp_path, caller=alice)
    parent = f"organizations/{org_id}"

    def request(
        who: Caller, role: member_pb2.MemberRole.ValueType = member_pb2.MEMBER_ROLE_UNSPECIFIED
    ) -> pb.CreateMemberRequest:
        return pb.CreateMemberRequest(
            parent=parent, member=member_pb2.Member(user=f"users/{who.user_id}", role=role)
        )

    with pytest.raises(grpc.aio.AioRpcError) as self_add:
        await env.stub(bob).CreateMember(request(bob))
    assert self_add.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert not await _is_member(env, bob, parent)

    added = (await env.stub(alice).CreateMember(request(bob))).member
    assert added.role == member_pb2.MEMBER_ROLE_MEMBER and added.state == member_pb2.MEMBER_STATE_ACTIVE
    assert await _is_member(env, bob, parent)
    # A plain member cannot add others, nor can anyone add twice or add a stranger.
    with pytest.raises(grpc.aio.AioRpcError) as by_member:
        await env.stub(bob).CreateMember(request(carol))
    assert by_member.value.code() == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.aio.AioRpcError) as twice:
        await env.stub(alice).CreateMember(request(bob))
    assert twice.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.aio.AioRpcError) as stranger:
        await env.stub(alice).CreateMember(
            pb.CreateMemberRequest(parent=parent, member=member_pb2.Member(user="users/never-signed-in"))
        )
    assert stranger.value.code() == grpc.StatusCode.NOT_FOUND
    assert not await _is_member(env, carol, parent)
    # Now a member, bob reconnecting the directory gets the organization back (no new one).
    root = tmp_path / org_id
    again = await env.stub(bob).ConnectLocalOrganization(
        pb.ConnectLocalOrganizationRequest(organization_id=org_id, root_path=str(root))
    )
    assert again.organization.name == parent


def test_allowed_roots_default_to_home_in_dev_and_nothing_in_production(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("FOUNDRY_LOCAL_ROOTS", raising=False)
    assert Settings().allowed_local_roots() == [str(Path.home().resolve())]
    production = Settings(
        environment="production",
        internal_auth_secret="s" * 32,
        gateway={"session_secret": "t" * 32, "dev_sign_in": False},
    )
    assert production.allowed_local_roots() == []
    per_user = Settings(local_roots=["/srv/foundry/{user}/repos", "~"])
    assert per_user.allowed_local_roots() == ["/srv/foundry/{user}/repos", str(Path.home().resolve())]
