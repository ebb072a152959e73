"""The organization summary projection, fed by events on the in-process broker and read over gRPC."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from foundry.github_data.v1 import pull_request_pb2, sync_status_pb2
from foundry.organization.v1 import organization_service_pb2 as pb
from foundry.organization.v1 import organization_summary_pb2 as summary_pb2
from foundry.organization.v1 import task_index_pb2
from foundry.task.v1 import task_pb2
from prometheus_client import REGISTRY

from tests.helpers import assert_eventually
from tests.helpers.mesh import BOB
from tests.unit.organization.support import (
    OrgEnv,
    SummaryWatcher,
    pr_changed,
    pr_removed,
    repo_changed,
    repo_name,
    repo_removed,
    sync_progress,
    task_removed,
    task_updated,
)


async def _tasks(env: OrgEnv, org: str) -> dict[str, task_pb2.TaskSummary]:
    summary = (await env.summary(org)).organization_summary
    return {t.name: t for t in summary.task_summaries}


async def _repos(env: OrgEnv, org: str) -> dict[str, summary_pb2.RepositorySummary]:
    summary = (await env.summary(org)).organization_summary
    return {r.name: r for r in summary.repositories}


async def test_task_summary_event_shows_in_summary_newest_first_with_repository_counts(
    env: OrgEnv, tmp_path: Path
) -> None:
    org = await env.new_org(tmp_path)
    await env.publish(
        task_updated(org, "t1", 1, at=10),
        task_updated(org, "t2", 1, at=20, repo="r2"),
        task_updated(org, "t3", 1, at=30),
    )

    async def three() -> summary_pb2.OrganizationSummary:
        summary = (await env.summary(org)).organization_summary
        assert len(summary.task_summaries) == 3
        return summary

    summary = await assert_eventually(three)
    assert [t.name.rsplit("/", 1)[1] for t in summary.task_summaries] == ["t3", "t2", "t1"]
    assert all(not s.unread for t in summary.task_summaries for s in t.sessions), "shared copy has no unread"
    repos = {r.name: r for r in summary.repositories}
    assert repos[repo_name(org, "r1")].task_count == 2
    assert repos[repo_name(org, "r1")].latest_activity_time.seconds == 1_800_000_030
    assert repos[repo_name(org, "r2")].task_count == 1
    assert [r.name for r in summary.repositories] == [repo_name(org, "r1"), repo_name(org, "r2")]


async def test_repeated_and_older_versions_of_a_task_are_ignored(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    name = f"organizations/{org}/tasks/t1"
    await env.publish(task_updated(org, "t1", 3, title="third"))

    async def title_is(expected: str) -> None:
        task = (await _tasks(env, org)).get(name)
        assert task is not None and task.title == expected

    await assert_eventually(lambda: title_is("third"))
    await env.publish(
        task_updated(org, "t1", 2, title="second"),
        task_updated(org, "t1", 3, title="again"),
        task_updated(org, "t1", 4, title="fourth"),
    )
    await assert_eventually(lambda: title_is("fourth"))  # 4 applied after 2 and the repeated 3 were seen


async def test_projection_updates_are_timed_by_routing_key_and_outcome(env: OrgEnv, tmp_path: Path) -> None:
    """foundry_projection_update_seconds: one sample per event handled, `stale` for a repeated or
    older version."""
    org = await env.new_org(tmp_path)
    key = task_updated(org, "t1", 1)[0]

    def count(outcome: str) -> float:
        labels = {"projection": "organization_summary", "routing_key": key, "outcome": outcome}
        return REGISTRY.get_sample_value("foundry_projection_update_seconds_count", labels) or 0.0

    applied, stale = count("applied"), count("stale")
    await env.publish(task_updated(org, "t1", 3))

    def counted(expected_applied: float, expected_stale: float) -> None:
        assert (count("applied") - applied, count("stale") - stale) == (expected_applied, expected_stale)

    await assert_eventually(lambda: counted(1, 0))
    await env.publish(task_updated(org, "t1", 2), task_updated(org, "t1", 3), task_updated(org, "t1", 4))
    await assert_eventually(lambda: counted(2, 2))


async def test_removed_task_leaves_summary_and_a_late_older_update_does_not_revive_it(
    env: OrgEnv, tmp_path: Path
) -> None:
    org = await env.new_org(tmp_path)
    await env.publish(task_updated(org, "t1", 1), task_updated(org, "t2", 1))
    await assert_eventually(lambda: _count(env, org, 2))
    await env.publish(task_removed(org, "t1", 5), task_updated(org, "t1", 4), task_updated(org, "t2", 2))

    async def only_t2_v2() -> None:
        tasks = await _tasks(env, org)
        assert list(tasks) == [f"organizations/{org}/tasks/t2"]
        assert tasks[f"organizations/{org}/tasks/t2"].update_time.seconds == 1_800_000_002

    await assert_eventually(only_t2_v2)
    assert (await _repos(env, org))[repo_name(org, "r1")].task_count == 1


async def _count(env: OrgEnv, org: str, n: int) -> None:
    assert len(await _tasks(env, org)) == n


async def test_archived_task_stays_listed_but_is_not_counted(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    await env.publish(
        task_updated(org, "t1", 1),
        task_updated(org, "t2", 1),
        task_updated(org, "t2", 2, status=task_pb2.TASK_STATUS_ARCHIVED),
    )

    async def counted_one() -> None:
        assert len(await _tasks(env, org)) == 2
        assert (await _repos(env, org))[repo_name(org, "r1")].task_count == 1

    await assert_eventually(counted_one)


async def test_pull_request_on_unowned_branch_becomes_virtual_task_until_it_closes(
    env: OrgEnv, tmp_path: Path
) -> None:
    org = await env.new_org(tmp_path)
    await env.publish(pr_changed(org, 7, 1, branch="feature", title="Add things"))

    async def virtual() -> task_pb2.TaskSummary:
        summary = (await env.summary(org)).organization_summary
        assert [p.number for p in summary.open_pull_requests] == [7]
        (task,) = summary.task_summaries
        return task

    task = await assert_eventually(virtual)
    assert task.virtual and task.status == task_pb2.TASK_STATUS_VIRTUAL
    assert (task.title, task.branch, task.pull_request.number) == ("Add things", "feature", 7)
    entry = (
        await env.stub().GetTaskIndexEntry(
            pb.GetTaskIndexEntryRequest(name=task.name.replace("/tasks/", "/taskIndexEntries/"))
        )
    ).task_index_entry
    assert entry.virtual and entry.branch == "feature"

    await env.publish(pr_changed(org, 7, 2, branch="feature", title="Renamed"))
    await assert_eventually(lambda: _title(env, org, task.name, "Renamed"))
    await env.publish(pr_removed(org, 7, 3, branch="feature"))

    async def gone() -> None:
        summary = (await env.summary(org)).organization_summary
        assert not summary.open_pull_requests and not summary.task_summaries

    await assert_eventually(gone)


async def _title(env: OrgEnv, org: str, name: str, title: str) -> None:
    task = (await _tasks(env, org)).get(name)
    assert task is not None and task.title == title


async def test_pull_request_on_a_reserved_branch_creates_no_virtual_task(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    await env.stub().ReserveTaskBranch(
        pb.ReserveTaskBranchRequest(
            parent=f"organizations/{org}",
            task_id="real",
            repository=repo_name(org, "r1"),
            branch="mine",
            mode=task_index_pb2.BRANCH_RESERVATION_MODE_EXACT,
            title="Real task",
        )
    )
    await env.publish(pr_changed(org, 8, 1, branch="mine"))

    async def pr_recorded_on_entry() -> None:
        entry = (
            await env.stub().GetTaskIndexEntry(
                pb.GetTaskIndexEntryRequest(name=f"organizations/{org}/taskIndexEntries/real")
            )
        ).task_index_entry
        assert entry.pull_request.number == 8 and not entry.virtual

    await assert_eventually(pr_recorded_on_entry)
    summary = (await env.summary(org)).organization_summary
    assert [p.number for p in summary.open_pull_requests] == [8]
    assert not summary.task_summaries


async def test_repositories_and_sync_status_come_from_github_data_events(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    await env.publish(
        repo_changed(org, "a", 1, at=5),
        repo_changed(org, "b", 1, at=9),
        sync_progress(org, 1, repositories=2),
    )

    async def listed() -> summary_pb2.OrganizationSummary:
        summary = (await env.summary(org)).organization_summary
        assert [r.full_name for r in summary.repositories] == ["acme/b", "acme/a"]
        assert summary.sync_status.state == sync_status_pb2.SYNC_STATE_SYNCED
        return summary

    summary = await assert_eventually(listed)
    assert summary.repositories[0].task_count == 0 and summary.repositories[0].default_branch == "main"
    await env.publish(repo_removed(org, "b", 2))

    async def only_a() -> None:
        assert list(await _repos(env, org)) == [repo_name(org, "a")]

    await assert_eventually(only_a)


async def test_watch_streams_projection_changes_after_the_snapshot(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    await env.publish(task_updated(org, "t1", 1))
    await assert_eventually(lambda: _count(env, org, 1))
    watcher = SummaryWatcher(env, org).start()
    try:
        await assert_eventually(lambda: _has(watcher, task_pb2.TaskSummary, 1))
        assert watcher.client.snapshots == 1
        await env.publish(
            task_updated(org, "t2", 1),
            pr_changed(org, 3, 1, branch="pr-branch"),
            task_updated(org, "t1", 2, title="renamed"),
        )

        def streamed() -> None:
            tasks = watcher.resources(task_pb2.TaskSummary)
            assert len(tasks) == 3  # t1, t2 and the virtual task of PR 3
            assert tasks.get(f"organizations/{org}/tasks/t1", task_pb2.TaskSummary()).title == "renamed"
            prs = watcher.resources(pull_request_pb2.PullRequestSummary)
            assert [p.number for p in prs.values()] == [3]
            repos = watcher.resources(summary_pb2.RepositorySummary)
            assert repos.get(repo_name(org, "r1"), summary_pb2.RepositorySummary()).task_count == 3

        await assert_eventually(streamed)
        await env.publish(task_removed(org, "t2", 2))
        await assert_eventually(lambda: _has(watcher, task_pb2.TaskSummary, 2))
    finally:
        await watcher.stop()


def _has(watcher: SummaryWatcher, cls: type, n: int) -> None:
    assert len(watcher.resources(cls)) == n


async def test_resume_with_last_token_converges_to_a_fresh_bootstrap(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    await env.publish(task_updated(org, "t1", 1), repo_changed(org, "r1", 1))
    first = SummaryWatcher(env, org).start()
    await assert_eventually(lambda: _has(first, task_pb2.TaskSummary, 1))
    await first.stop()  # the connection drops; changes keep coming
    await env.publish(
        task_updated(org, "t2", 1),
        task_updated(org, "t1", 2, title="new"),
        pr_changed(org, 4, 1, branch="x"),
        sync_progress(org, 1),
        task_removed(org, "t2", 2),
    )
    await assert_eventually(lambda: _count(env, org, 2))  # t1 and the virtual task of PR 4

    resumed = SummaryWatcher(env, org, client=first.client).start()
    fresh = SummaryWatcher(env, org).start()
    try:

        def converged() -> None:
            assert resumed.client.state == fresh.client.state
            assert len(fresh.resources(task_pb2.TaskSummary)) == 2

        await assert_eventually(converged)
        assert resumed.client.snapshots == 1, "a resumed stream sends no snapshot"
    finally:
        await resumed.stop()
        await fresh.stop()


async def test_get_summary_token_resumes_the_watch_without_snapshot(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    response = await env.summary(org)
    watcher = SummaryWatcher(env, org)
    watcher.client.token = response.resume_token
    watcher.start()
    try:
        await env.publish(task_updated(org, "t1", 1))
        await assert_eventually(lambda: _has(watcher, task_pb2.TaskSummary, 1))
        assert watcher.client.snapshots == 0
    finally:
        await watcher.stop()


async def test_user_of_another_organization_is_refused(env: OrgEnv, tmp_path: Path) -> None:
    org = await env.new_org(tmp_path)
    with pytest.raises(grpc.aio.AioRpcError) as get_error:
        await env.summary(org, caller=BOB)
    assert get_error.value.code() == grpc.StatusCode.PERMISSION_DENIED
    call = env.stub(BOB).WatchOrganizationSummary(
        pb.WatchOrganizationSummaryRequest(name=f"organizations/{org}/summary"),
    )
    with pytest.raises(grpc.aio.AioRpcError) as watch_error:
        async for _ in call:
            pass
    assert watch_error.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_malformed_summary_name_is_invalid_argument(env: OrgEnv) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await env.stub().GetOrganizationSummary(pb.GetOrganizationSummaryRequest(name="organizations/Bad_Id"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
