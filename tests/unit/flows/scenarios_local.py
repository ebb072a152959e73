"""Issues 3 and 4 on a `local` organization, observed only through Watch streams:

- ConnectLocalOrganization answers before the repository sync ran, and the repositories show on
  WatchOrganizationSummary within seconds;
- a task on a real git repository reaches READY with its branch checked out, a message to the
  offline agent changes a file, the transcript (SandboxService.WatchSessionEvents) shows the turn
  and WatchTask shows the diff.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from asyncio.subprocess import PIPE
from pathlib import Path

from foundry.github_data.v1 import github_data_service_pb2 as gd_pb2
from foundry.github_data.v1 import sync_status_pb2 as ss
from foundry.organization.v1 import organization_summary_pb2 as summary_pb2
from foundry.sandbox.v1 import git_state_pb2
from foundry.sandbox.v1 import session_event_pb2 as ev
from foundry.task.v1 import session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as task_svc_pb2

from services.platform.watch.testing import WatchClient
from tests.helpers.mesh import ALICE
from tests.unit.flows.support import Follower, following, git_repo, resources_of, the_task
from tests.unit.flows.world import FlowWorld, sync_status

MESSAGE = "write hello.txt: hi"


def _repositories(client: WatchClient) -> dict[str, summary_pb2.RepositorySummary]:
    return {r.full_name: r for r in resources_of(client, summary_pb2.RepositorySummary).values()}


async def local_organization_lists_its_repositories_without_waiting(world: FlowWorld, root: Path) -> str:
    """Connect a directory of two repositories; returns the organization id."""
    for name in ("demo", "tools"):
        git_repo(root, name)
    asked = time.perf_counter()
    org, answer, took = await world.local_organization(root)
    # The answer comes from the organization's own transaction (the connection to github-data is
    # only enqueued there), so it can never have waited for the sync.
    assert answer.organization.sync_status.state == ss.SYNC_STATE_PENDING, answer.organization.sync_status
    assert took < 1.0, f"ConnectLocalOrganization took {took:.3f} s"
    summary = world.stubs.summary(org)
    async with following(summary):
        listed_at = await summary.wait(
            lambda c: (
                set(_repositories(c)) == {"demo", "tools"} and sync_status(c).state == ss.SYNC_STATE_SYNCED
            ),
            timeout=10,
            what="the repositories on the summary",
        )
    print(
        f"\n[sync] ConnectLocalOrganization answered in {took * 1000:.1f} ms; the repositories were "
        f"on the summary stream {listed_at - asked:.3f} s after asking"
    )
    listed = await world.stubs.github_data(ALICE).ListRepositories(
        gd_pb2.ListRepositoriesRequest(parent=f"organizations/{org}")
    )
    assert [r.full_name for r in listed.repositories] == ["demo", "tools"]
    assert listed.freshness.state == ss.SYNC_STATE_SYNCED and listed.freshness.HasField("last_sync_time")
    return org


async def task_turn_changes_a_file(world: FlowWorld, root: Path) -> None:
    """Issue 3: create → READY with the branch checked out → message → transcript and diff."""
    git_repo(root, "demo")
    org, _, _ = await world.local_organization(root)
    summary = world.stubs.summary(org)
    async with following(summary):
        await summary.wait(lambda c: "demo" in _repositories(c), timeout=10, what="repository demo")
        repository = _repositories(summary.client)["demo"].name
        task = (
            await world.stubs.task().CreateTask(
                task_svc_pb2.CreateTaskRequest(
                    parent=f"organizations/{org}",
                    task=task_pb2.Task(repository=repository, prompt="Add a hello file"),
                )
            )
        ).task
        assert task.status == task_pb2.TASK_STATUS_INIT_ENQUEUE_PROVISION and task.branch
        watch = world.stubs.task_watch(task.name)
        async with following(watch):
            await watch.wait(
                lambda c: _ready(the_task(watch, task.name)), timeout=60, what="the task to be ready"
            )
            ready = the_task(watch, task.name)
            assert ready.git_state.branch == task.branch
            assert ready.provisioning.stage == task_pb2.PROVISIONING_STAGE_READY
            git = await asyncio.create_subprocess_exec(
                "git", "rev-parse", "--abbrev-ref", "HEAD", cwd=ready.sandbox.cwd, stdout=PIPE
            )
            head, _ = await git.communicate()
            assert head.decode().strip() == task.branch  # the working copy is on the task's branch
            await _turn(world, watch, ready)
        # The organization summary lists the task on its repository.
        await summary.wait(
            lambda c: (
                resources_of(c, task_pb2.TaskSummary)[task.name].status == task_pb2.TASK_STATUS_IDLE
                and _repositories(c)["demo"].task_count == 1
            ),
            timeout=10,
            what="the task on the summary",
        )


def _ready(task: task_pb2.Task) -> bool:
    assert task.status == task_pb2.TASK_STATUS_IDLE, (task.status, task.status_message)
    # IDLE, not READY: the task's prompt was the session's first turn, and it has ended.
    assert task.sessions[0].status == session_pb2.SESSION_STATUS_IDLE
    assert task.sandbox.cwd and task.git_state.branch
    return True


async def _turn(world: FlowWorld, watch: Follower, ready: task_pb2.Task) -> None:
    name = ready.sessions[0].name
    tab = world.stubs.session_watch(name)
    async with following(tab):
        await tab.wait(lambda c: _session(tab, name).sandbox_session, what="the agent session")
        agent_session = _session(tab, name).sandbox_session
    transcript = world.stubs.session_events(agent_session)
    async with following(transcript):
        # Everything below is awaited on the streams; nothing re-reads the task or the transcript.
        running = asyncio.create_task(
            watch.wait(
                lambda c: the_task(watch, ready.name).status == task_pb2.TASK_STATUS_RUNNING,
                what="RUNNING",
            )
        )
        sent = await world.stubs.task().SendMessage(
            task_svc_pb2.SendMessageRequest(name=name, text=MESSAGE, request_id=str(uuid.uuid4()))
        )
        assert sent is not None
        await transcript.wait(
            lambda c: _turn_completed(transcript.resources(ev.SessionEvent), MESSAGE),
            timeout=30,
            what="the completed turn in the transcript",
        )
        events = sorted(transcript.resources(ev.SessionEvent).values(), key=lambda e: e.seq)
        first, prompt = [e for e in events if e.kind == ev.SESSION_EVENT_KIND_USER_MESSAGE]
        assert events[0] == first and first.text == "Add a hello file"  # the task's prompt, first
        assert prompt.text == MESSAGE and prompt.sender == ev.SESSION_EVENT_SENDER_CLIENT
        turn = [e for e in events if e.turn == prompt.turn]
        kinds = [e.kind for e in turn]
        assert ev.SESSION_EVENT_KIND_TOOL_CALL in kinds and kinds[-1] == ev.SESSION_EVENT_KIND_TURN_COMPLETED
        assert [e.seq for e in events] == list(range(1, len(events) + 1))  # the log has no gaps
        await running
        await watch.wait(
            lambda c: _changed(the_task(watch, ready.name)), timeout=30, what="the diff on WatchTask"
        )
        done = the_task(watch, ready.name)
        assert done.sessions[0].used


def _session(tab: Follower, name: str) -> session_pb2.Session:
    return tab.resources(session_pb2.Session)[name]


def _turn_completed(events: dict[str, ev.SessionEvent], text: str) -> bool:
    """Whether the turn of the user message `text` has completed."""
    prompts = [e for e in events.values() if e.kind == ev.SESSION_EVENT_KIND_USER_MESSAGE and e.text == text]
    return any(
        e.kind == ev.SESSION_EVENT_KIND_TURN_COMPLETED and e.turn == p.turn
        for p in prompts
        for e in events.values()
    )


def _changed(task: task_pb2.Task) -> bool:
    assert task.status == task_pb2.TASK_STATUS_IDLE
    changes = {c.path: c for c in task.git_state.file_changes}
    assert changes["hello.txt"].type == git_state_pb2.FILE_CHANGE_TYPE_ADDED
    assert changes["hello.txt"].added_lines == 1
    diffs = {d.path: d.unified_diff for d in task.git_state.diffs}
    assert "+hi" in diffs["hello.txt"].splitlines()
    return True
