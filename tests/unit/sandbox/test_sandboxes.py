"""Sandbox lifecycle and repository preparation through the real gRPC API, with real git."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from foundry.sandbox.v1 import sandbox_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc

from tests.unit.sandbox.conftest import ORG, create_sandbox, prepared_sandbox
from tests.unit.sandbox.gitrepo import git


async def test_create_sandbox_is_idempotent_by_sandbox_id(stub: pb_grpc.SandboxServiceAsyncStub) -> None:
    request = pb.CreateSandboxRequest(
        parent=ORG,
        sandbox_id="t1",
        sandbox=sandbox_pb2.Sandbox(task=f"{ORG}/tasks/t1", repository=f"{ORG}/repositories/demo"),
    )
    first = await stub.CreateSandbox(request)
    second = await stub.CreateSandbox(request)
    assert first.created and not second.created
    assert first.sandbox.name == second.sandbox.name == f"{ORG}/sandboxes/t1"
    assert second.sandbox.state == sandbox_pb2.SANDBOX_STATE_RUNNING
    assert second.sandbox.provider_sandbox_id == first.sandbox.provider_sandbox_id == "acme--t1"
    listed = await stub.ListSandboxes(pb.ListSandboxesRequest(parent=ORG))
    assert [s.name for s in listed.sandboxes] == [f"{ORG}/sandboxes/t1"]


async def test_create_sandbox_rejects_a_task_of_another_organization(
    stub: pb_grpc.SandboxServiceAsyncStub,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateSandbox(
            pb.CreateSandboxRequest(
                parent=ORG,
                sandbox_id="t1",
                sandbox=sandbox_pb2.Sandbox(
                    task="organizations/other/tasks/t1", repository=f"{ORG}/repositories/r"
                ),
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sandbox.task" in (caught.value.details() or "")


async def test_prepare_repository_creates_a_new_branch_from_the_default_branch(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = await prepared_sandbox(stub, origin, branch="feat/new-work")
    checkout = sandbox.checkout
    assert checkout.branch == "feat/new-work" and checkout.base_branch == "main"
    assert not checkout.branch_existed
    work = Path(checkout.path)
    assert git("symbolic-ref", "--short", "HEAD", cwd=work).strip() == "feat/new-work"
    assert (work / "README.md").read_text() == "# demo\nline two\n"
    assert not (work / "feature.txt").exists()
    assert checkout.head_commit == git("rev-parse", "main", cwd=origin).strip()
    # The task owner's identity, for the agent's commits.
    assert git("config", "user.name", cwd=work).strip() == "Foundry"
    assert git("config", "user.email", cwd=work).strip() == "foundry@example.com"


async def test_prepare_repository_reuses_an_existing_remote_branch(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = await prepared_sandbox(stub, origin, branch="feature/existing")
    assert sandbox.checkout.branch_existed
    work = Path(sandbox.checkout.path)
    assert (work / "feature.txt").read_text() == "feature work\n"
    assert sandbox.checkout.head_commit == git("rev-parse", "feature/existing", cwd=origin).strip()


async def test_prepare_repository_twice_returns_the_same_checkout(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    first = await prepared_sandbox(stub, origin)
    again = await stub.PrepareRepository(
        pb.PrepareRepositoryRequest(name=first.name, clone_url=str(origin), branch="feat/new-work")
    )
    assert again.sandbox.checkout == first.checkout


async def test_prepare_repository_with_a_missing_path_is_a_readable_invalid_argument(
    stub: pb_grpc.SandboxServiceAsyncStub, tmp_path: Path
) -> None:
    sandbox = await create_sandbox(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PrepareRepository(
            pb.PrepareRepositoryRequest(
                name=sandbox.name, clone_url=str(tmp_path / "nope.git"), branch="feat/x"
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "nope.git does not exist" in (caught.value.details() or "")


async def test_prepare_repository_from_a_directory_that_is_no_repository_reports_gits_message(
    stub: pb_grpc.SandboxServiceAsyncStub, tmp_path: Path
) -> None:
    sandbox = await create_sandbox(stub)
    (tmp_path / "plain").mkdir()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PrepareRepository(
            pb.PrepareRepositoryRequest(name=sandbox.name, clone_url=str(tmp_path / "plain"), branch="feat/x")
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = caught.value.details() or ""
    assert details.startswith("git clone failed:") and str(tmp_path / "plain") in details
    after = await stub.GetSandbox(pb.GetSandboxRequest(name=sandbox.name))
    assert not after.sandbox.HasField("checkout")


async def test_prepare_repository_with_an_unknown_base_branch_fails_with_its_name(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = await create_sandbox(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PrepareRepository(
            pb.PrepareRepositoryRequest(
                name=sandbox.name, clone_url=str(origin), branch="feat/x", base_branch="develop"
            )
        )
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "base branch 'develop' does not exist" in (caught.value.details() or "")


@pytest.mark.parametrize(
    ("branch", "base_branch", "field"),
    [("feat..x", "", "branch"), ("feat/x", "main.lock", "base_branch"), ("bad~1", "main^", "branch")],
)
async def test_prepare_repository_with_an_invalid_branch_name_names_the_field_and_changes_nothing(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path, branch: str, base_branch: str, field: str
) -> None:
    sandbox = await create_sandbox(stub)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.PrepareRepository(
            pb.PrepareRepositoryRequest(
                name=sandbox.name, clone_url=str(origin), branch=branch, base_branch=base_branch
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    named = {"branch": branch, "base_branch": base_branch}[field]
    assert caught.value.details() == f"{field}: {named!r} is not a valid branch name"
    after = await stub.GetSandbox(pb.GetSandboxRequest(name=sandbox.name))
    assert not after.sandbox.HasField("checkout")


async def test_destroy_sandbox_removes_its_directory_and_is_idempotent(
    stub: pb_grpc.SandboxServiceAsyncStub, origin: Path
) -> None:
    sandbox = await prepared_sandbox(stub, origin)
    root = Path(sandbox.checkout.path).parent
    assert root.is_dir()
    first = await stub.DestroySandbox(pb.DestroySandboxRequest(name=sandbox.name, reason="task killed"))
    second = await stub.DestroySandbox(pb.DestroySandboxRequest(name=sandbox.name, reason="again"))
    assert first.sandbox.state == second.sandbox.state == sandbox_pb2.SANDBOX_STATE_DESTROYED
    assert not root.exists()
    listed = await stub.ListSandboxes(pb.ListSandboxesRequest(parent=ORG))
    assert list(listed.sandboxes) == []


async def test_unknown_sandbox_is_not_found(stub: pb_grpc.SandboxServiceAsyncStub) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetSandbox(pb.GetSandboxRequest(name=f"{ORG}/sandboxes/missing"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
