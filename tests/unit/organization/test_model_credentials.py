"""Organizations' model API keys: admins set and clear them (write-only), members see only which are
set, only service callers read the values, and the database holds them encrypted."""

from __future__ import annotations

import sqlite3
import uuid
from pathlib import Path

import grpc
import pytest
from foundry.organization.v1 import member_pb2
from foundry.organization.v1 import organization_service_pb2 as pb

from services.platform.identity import Caller
from services.platform.secrets import SecretBox
from tests.unit.organization.support import OrgEnv

GATEWAY = Caller.service("gateway")
TASK = Caller.service("task")


async def _user(env: OrgEnv, login: str) -> Caller:
    signed = await env.stub(GATEWAY).SignInLocal(pb.SignInLocalRequest(login=login, user_agent="pytest"))
    return Caller(subject=f"user/{signed.user.name.removeprefix('users/')}", login=signed.user.login)


async def test_admins_set_and_clear_keys_nobody_reads_them_but_services(
    env: OrgEnv, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    secret = "sk-ant-" + uuid.uuid4().hex
    owner = await _user(env, f"o{uuid.uuid4().hex[:6]}")
    member = await _user(env, f"m{uuid.uuid4().hex[:6]}")
    stranger = await _user(env, f"s{uuid.uuid4().hex[:6]}")
    org = await env.new_org(tmp_path, caller=owner)
    other = await env.new_org(tmp_path / "other", caller=stranger)
    parent = f"organizations/{org}"
    await env.stub(owner).CreateMember(
        pb.CreateMemberRequest(
            parent=parent,
            member=member_pb2.Member(user=f"users/{member.user_id}", role=member_pb2.MEMBER_ROLE_MEMBER),
        )
    )
    responses: list[object] = []

    set_ = await env.stub(owner).SetModelCredential(
        pb.SetModelCredentialRequest(parent=parent, variable="ANTHROPIC_API_KEY", value=secret)
    )
    responses.append(set_)
    assert set_.model_credential.name == f"{parent}/modelCredentials/ANTHROPIC_API_KEY"
    assert set_.model_credential.update_user == f"users/{owner.user_id}"

    # A member and a stranger may not set, replace or clear it; nothing changes.
    for caller in (member, stranger):
        for call in (
            env.stub(caller).SetModelCredential(
                pb.SetModelCredentialRequest(parent=parent, variable="ANTHROPIC_API_KEY", value="sk-mine")
            ),
            env.stub(caller).DeleteModelCredential(
                pb.DeleteModelCredentialRequest(name=f"{parent}/modelCredentials/ANTHROPIC_API_KEY")
            ),
            env.stub(caller).ResolveModelCredentials(pb.ResolveModelCredentialsRequest(organization=parent)),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await call
            assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED, caller
    # Unknown variables (anything the sandbox service would not hand an agent) and empty values.
    for variable, value in (
        ("PATH", "/evil"),
        ("FOUNDRY_INTERNAL_AUTH_SECRET", "x"),
        ("OPENAI_API_KEY", " "),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await env.stub(owner).SetModelCredential(
                pb.SetModelCredentialRequest(parent=parent, variable=variable, value=value)
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT, variable

    # Members see which keys are set (never the value); a stranger sees nothing.
    listed = await env.stub(member).ListModelCredentials(pb.ListModelCredentialsRequest(parent=parent))
    responses.append(listed)
    assert [c.variable for c in listed.model_credentials] == ["ANTHROPIC_API_KEY"]
    with pytest.raises(grpc.aio.AioRpcError) as hidden:
        await env.stub(stranger).ListModelCredentials(pb.ListModelCredentialsRequest(parent=parent))
    assert hidden.value.code() == grpc.StatusCode.PERMISSION_DENIED
    responses.append(await env.stub(owner).GetOrganization(pb.GetOrganizationRequest(name=parent)))

    # Only a service caller reads the values, and only that organization's.
    resolved = await env.stub(TASK).ResolveModelCredentials(
        pb.ResolveModelCredentialsRequest(organization=parent)
    )
    assert dict(resolved.environment) == {"ANTHROPIC_API_KEY": secret}
    elsewhere = await env.stub(TASK).ResolveModelCredentials(
        pb.ResolveModelCredentialsRequest(organization=f"organizations/{other}")
    )
    assert dict(elsewhere.environment) == {}

    # Audited, without the value.
    audit = await env.stub(owner).ListAuditEvents(pb.ListAuditEventsRequest(parent=parent))
    responses.append(audit)
    kinds = [(e.kind, dict(e.payload)) for e in audit.audit_events if e.kind.startswith("model_credential")]
    assert kinds == [("model_credential.set", {"variable": "ANTHROPIC_API_KEY"})]

    # Stored encrypted: the database file never holds the key in plaintext.
    db_file = env.mesh.settings.data_dir / "organization.sqlite3"
    assert secret.encode() not in db_file.read_bytes()
    with sqlite3.connect(db_file) as conn:
        ((stored,),) = conn.execute(
            "SELECT secret FROM model_credentials WHERE organization_id = ?", (org,)
        ).fetchall()
    assert secret.encode() not in stored
    key = env.mesh.settings.credentials_key.get_secret_value()
    assert SecretBox(key).open(stored, org, "ANTHROPIC_API_KEY") == secret  # bound to its row

    # Cleared by the owner (twice is fine); the services then get nothing.
    for _ in range(2):
        responses.append(
            await env.stub(owner).DeleteModelCredential(
                pb.DeleteModelCredentialRequest(name=f"{parent}/modelCredentials/ANTHROPIC_API_KEY")
            )
        )
    resolved = await env.stub(TASK).ResolveModelCredentials(
        pb.ResolveModelCredentialsRequest(organization=parent)
    )
    assert dict(resolved.environment) == {}
    listed = await env.stub(owner).ListModelCredentials(pb.ListModelCredentialsRequest(parent=parent))
    assert list(listed.model_credentials) == []
    audit = await env.stub(owner).ListAuditEvents(pb.ListAuditEventsRequest(parent=parent))
    responses.append(audit)
    assert [e.kind for e in audit.audit_events if e.kind.startswith("model_credential")] == [
        "model_credential.deleted",
        "model_credential.set",
    ]

    for response in responses:
        assert secret not in str(response), response
    out, err = capfd.readouterr()
    assert secret not in out and secret not in err
