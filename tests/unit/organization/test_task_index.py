"""ReserveTaskBranch / ReleaseTaskBranch / GetTaskIndexEntry / ListTaskIndexEntries over gRPC."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest
from foundry.organization.v1 import organization_service_pb2 as pb
from foundry.organization.v1 import task_index_pb2
from foundry.task.v1 import task_pb2
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from tests.helpers import assert_eventually
from tests.helpers.mesh import BOB
from tests.unit.organization.support import OrgEnv, pr_changed, repo_name

EXACT = task_index_pb2.BRANCH_RESERVATION_MODE_EXACT
EXISTING = task_index_pb2.BRANCH_RESERVATION_MODE_EXISTING
GENERATE = task_index_pb2.BRANCH_RESERVATION_MODE_GENERATE


async def _reserve(
    env: OrgEnv,
    org: str,
    task: str,
    branch: str,
    mode: task_index_pb2.BranchReservationMode.ValueType,
    repo: str = "r1",
) -> task_index_pb2.TaskIndexEntry:
    response = await env.stub().ReserveTaskBranch(
        pb.ReserveTaskBranchRequest(
            parent=f"organizations/{org}",
            task_id=task,
            repository=repo_name(org, repo),
            branch=branch,
            mode=mode,
            title=f"title of {task}",
        )
    )
    return response.task_index_entry


def _error_info(error: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo:
    status = rpc_status.from_call(error)
    assert status is not None
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return info


async def test_exact_branch_taken_by_another_task_is_already_exists_with_owner(
    env: OrgEnv, tmp_path: Path
) -> None:
    org = await env.new_org(tmp_path)
    first = await _reserve(env, org, "t1", "feat/x", EXACT)
    assert (first.branch, first.task, first.virtual) == ("feat/x", f"organizations/{org}/tasks/t1", False)
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _reserve(env, org, "t2", "feat/x", EXACT)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info = _error_info(error.value)
    assert info.reason == "BRANCH_TAKEN" and info.metadata["task"] == f"organizations/{org}/tasks/t1"
    other_repo = await _reserve(env, org, "t3", "feat/x", EXACT, repo="r2")  # unique per repository only
    assert other_repo.branch == "feat/x"


async def test_reserving_again_for_the_same_task_returns_its_entry(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    first = await _reserve(env, org, "t1", "b", EXACT)
    assert await _reserve(env, org, "t1", "b", EXACT) == first
    generated = await _reserve(env, org, "t2", "task", GENERATE)
    assert re.fullmatch(r"task-[a-z0-9]{4}", generated.branch)
    assert await _reserve(env, org, "t2", "task", GENERATE) == generated


async def test_generate_picks_distinct_branches(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    branches = {(await _reserve(env, org, f"t{i}", "work", GENERATE)).branch for i in range(12)}
    assert len(branches) == 12


async def test_existing_mode_takes_over_a_virtual_task_but_not_a_real_one(
    env: OrgEnv, tmp_path: Path
) -> None:
    org = await env.new_org(tmp_path)
    await env.publish(pr_changed(org, 5, 1, branch="from-pr", title="PR title"))

    async def virtual_entry() -> None:
        entries = (
            await env.stub().ListTaskIndexEntries(
                pb.ListTaskIndexEntriesRequest(
                    parent=f"organizations/{org}", repository=repo_name(org, "r1"), branch="from-pr"
                )
            )
        ).task_index_entries
        assert len(entries) == 1 and entries[0].virtual

    await assert_eventually(virtual_entry)
    entry = await _reserve(env, org, "real", "from-pr", EXISTING)
    assert not entry.virtual and entry.pull_request.number == 5
    summary = (await env.summary(org)).organization_summary
    assert not [t for t in summary.task_summaries if t.status == task_pb2.TASK_STATUS_VIRTUAL]
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await _reserve(env, org, "other", "from-pr", EXISTING)
    assert error.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_released_branch_can_be_reserved_again(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    await _reserve(env, org, "t1", "b", EXACT)
    name = f"organizations/{org}/taskIndexEntries/t1"
    await env.stub().ReleaseTaskBranch(pb.ReleaseTaskBranchRequest(name=name))
    await env.stub().ReleaseTaskBranch(pb.ReleaseTaskBranchRequest(name=name))  # twice is fine
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await env.stub().GetTaskIndexEntry(pb.GetTaskIndexEntryRequest(name=name))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND
    assert (await _reserve(env, org, "t2", "b", EXACT)).task.endswith("/t2")


async def test_list_pages_through_entries(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    for i in range(5):
        await _reserve(env, org, f"t{i}", f"b{i}", EXACT)
    seen: list[str] = []
    token = ""
    while True:
        page = await env.stub().ListTaskIndexEntries(
            pb.ListTaskIndexEntriesRequest(parent=f"organizations/{org}", page_size=2, page_token=token)
        )
        seen.extend(e.branch for e in page.task_index_entries)
        token = page.next_page_token
        if not token:
            break
    assert seen == [f"b{i}" for i in range(5)]


async def test_bad_requests_are_invalid_argument_and_non_members_are_denied(
    env: OrgEnv, tmp_path: Path
) -> None:
    org = await env.new_org(tmp_path)
    for branch, mode in (
        ("has space", EXACT),
        ("a..b", EXACT),
        ("ok", task_index_pb2.BRANCH_RESERVATION_MODE_UNSPECIFIED),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as error:
            await _reserve(env, org, "t1", branch, mode)
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await env.stub(BOB).ReserveTaskBranch(
            pb.ReserveTaskBranchRequest(
                parent=f"organizations/{org}",
                task_id="t1",
                repository=repo_name(org, "r1"),
                branch="b",
                mode=EXACT,
            )
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
