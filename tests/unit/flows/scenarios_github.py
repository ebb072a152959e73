"""Issue 4 against the GitHub-wire test server: connecting returns before the (slowed) sync, the
repositories and open pull requests arrive on WatchOrganizationSummary with each unowned pull
request as a VIRTUAL task summary, and a signed `pull_request` webhook (closed + merged, through the
real gateway) for the branch of a real task archives that task (seen on WatchTask)."""

from __future__ import annotations

from foundry.github_data.v1 import pull_request_pb2
from foundry.github_data.v1 import sync_status_pb2 as ss
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as task_svc_pb2

from services.platform.watch.testing import WatchClient
from tests.unit.flows.support import Follower, following, resources_of, the_task
from tests.unit.flows.world import FlowWorld

SYNC_DELAY = 1.0


def _tasks(client: WatchClient) -> dict[str, task_pb2.TaskSummary]:
    return resources_of(client, task_pb2.TaskSummary)


def _pulls(client: WatchClient) -> dict[int, pull_request_pb2.PullRequestSummary]:
    return {p.number: p for p in resources_of(client, pull_request_pb2.PullRequestSummary).values()}


def _by_branch(client: WatchClient, branch: str) -> task_pb2.TaskSummary:
    [task] = [t for t in _tasks(client).values() if t.branch == branch]
    return task


async def pull_requests_become_virtual_tasks_and_a_merge_archives(world: FlowWorld) -> None:
    gh = await world.github_organization(
        ["widgets"], pulls={"widgets": [(7, "feat/virtual")]}, sync_delay=SYNC_DELAY
    )
    # ConnectOrganization only stored the connection and enqueued the sync, which took longer.
    assert gh.connected is not None
    assert gh.connected.sync_status.state == ss.SYNC_STATE_PENDING, gh.connected.sync_status
    assert gh.connect_seconds < 0.5, f"ConnectOrganization took {gh.connect_seconds:.3f} s"
    assert gh.sync_seconds >= SYNC_DELAY
    print(
        f"\n[sync] GitHub ConnectOrganization answered in {gh.connect_seconds * 1000:.1f} ms; "
        f"the synced repositories were on the summary stream after {gh.sync_seconds:.3f} s"
    )
    widgets = gh.repositories["widgets"]
    summary = world.stubs.summary(gh.org)
    async with following(summary):
        virtual = await _virtual_task_for(summary, "feat/virtual")
        assert 7 in _pulls(summary.client)
        assert virtual.repository == widgets and virtual.pull_request.number == 7

        task = (
            await world.stubs.task().CreateTask(
                task_svc_pb2.CreateTaskRequest(
                    parent=f"organizations/{gh.org}",
                    task=task_pb2.Task(repository=widgets, prompt="Retry the client", branch="feat/real"),
                )
            )
        ).task
        assert task.branch == "feat/real"
        watch = world.stubs.task_watch(task.name)
        async with following(watch):
            await watch.wait(
                lambda c: the_task(watch, task.name).status == task_pb2.TASK_STATUS_IDLE,
                timeout=60,
                what="the task to be ready",
            )
            opened = await world.webhook(
                "pull_request", gh.pull_request_payload("widgets", 8, "opened", head="feat/real")
            )
            assert opened.status_code == 202, opened.text
            await summary.wait(
                lambda c: _tasks(c)[task.name].pull_request.number == 8 and 8 in _pulls(c),
                what="PR 8 on the real task's summary",
            )
            # The real task owns its branch: its pull request made no virtual task.
            assert [t.name for t in _tasks(summary.client).values() if t.branch == "feat/real"] == [task.name]
            await watch.wait(lambda c: the_task(watch, task.name).pull_request.number == 8, what="PR 8")

            merged = gh.pull_request_payload("widgets", 8, "closed", head="feat/real", merged=True)
            forged = await world.webhook("pull_request", merged, signature="sha256=" + "0" * 64)
            assert forged.status_code == 401  # an unsigned delivery is refused and has no effect
            accepted = await world.webhook("pull_request", merged)
            assert accepted.status_code == 202, accepted.text
            await watch.wait(
                lambda c: the_task(watch, task.name).status == task_pb2.TASK_STATUS_ARCHIVED,
                timeout=30,
                what="the task archived by the merge",
            )
            archived = the_task(watch, task.name)
            assert archived.HasField("end_time")
        await summary.wait(
            lambda c: _tasks(c)[task.name].status == task_pb2.TASK_STATUS_ARCHIVED and 8 not in _pulls(c),
            what="the archived task and the merged PR gone from the summary",
        )
        # Closing the other pull request drops its virtual task.
        closed = await world.webhook(
            "pull_request", gh.pull_request_payload("widgets", 7, "closed", head="feat/virtual")
        )
        assert closed.status_code == 202
        await summary.wait(
            lambda c: virtual.name not in c.state and 7 not in _pulls(c), what="the virtual task dropped"
        )


async def _virtual_task_for(summary: Follower, branch: str) -> task_pb2.TaskSummary:
    await summary.wait(lambda c: _by_branch(c, branch).virtual, what=f"a virtual task for {branch}")
    found = _by_branch(summary.client, branch)
    assert found.status == task_pb2.TASK_STATUS_VIRTUAL, found
    return found
