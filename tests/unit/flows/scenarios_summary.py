"""Issue 5: task changes (through the task service) and pull request changes (signed webhooks through
the gateway into github-data) reach an open WatchOrganizationSummary stream, measured from the
mutating call's return to the event's arrival on the stream; and a client that disconnects and
resumes with its last token converges to the same state as a fresh bootstrap.

Latency: the issue's target (100 ms) is measured by `make bench` (event_latency, its
WatchOrganizationSummary observer), not here: speed targets live in benchmarks, not timed tests.
These tests host all four services, the gateway, the GitHub-wire server and the client in ONE event
loop on a 2-core machine, where the p50 measured 50-100 ms and the tail 100-230 ms depending on what
else ran. They assert only that every change arrived well under a second, i.e. pushed through the
outbox wake-up and the hub's notification (a regression to a polling path — outbox sweep 5 s, watch
tick 15 s — fails them), and print p50/p99 per kind.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from foundry.github_data.v1 import pull_request_pb2
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as task_svc_pb2

from services.platform.watch.testing import WatchClient
from tests.helpers.eventually import assert_eventually
from tests.unit.flows.support import Follower, following, report_latency, resources_of
from tests.unit.flows.world import FlowWorld, GithubOrganization

ROUNDS = 8  # x 6 kinds of change = 48 samples
PUSHED_SECONDS = 1.0  # far below the outbox sweep (5 s) and the watch tick (15 s)
ARCHIVING = frozenset(
    {
        task_pb2.TASK_STATUS_ARCHIVE_STOP_SESSIONS,
        task_pb2.TASK_STATUS_ARCHIVE_RELEASE_SANDBOX,
        task_pb2.TASK_STATUS_ARCHIVE_FINALIZE,
        task_pb2.TASK_STATUS_ARCHIVED,
    }
)
SETTLED = frozenset({task_pb2.TASK_STATUS_IDLE, task_pb2.TASK_STATUS_ARCHIVED, task_pb2.TASK_STATUS_VIRTUAL})


def _tasks(client: WatchClient) -> dict[str, task_pb2.TaskSummary]:
    return resources_of(client, task_pb2.TaskSummary)


def _pulls(client: WatchClient) -> dict[int, pull_request_pb2.PullRequestSummary]:
    return {p.number: p for p in resources_of(client, pull_request_pb2.PullRequestSummary).values()}


class Changes:
    """Mutations of one GitHub-backed organization, as a user and GitHub make them."""

    def __init__(self, world: FlowWorld, gh: GithubOrganization) -> None:
        self.world, self.gh = world, gh
        self.stub = world.stubs.task()

    async def create(self, prompt: str) -> task_pb2.Task:
        request = task_svc_pb2.CreateTaskRequest(
            parent=f"organizations/{self.gh.org}",
            task=task_pb2.Task(repository=self.gh.repositories["widgets"], prompt=prompt),
        )
        return (await self.stub.CreateTask(request)).task

    async def rename(self, name: str, title: str) -> None:
        await self.stub.RenameTask(task_svc_pb2.RenameTaskRequest(name=name, title=title))

    async def archive(self, name: str) -> None:
        await self.stub.ArchiveTask(task_svc_pb2.ArchiveTaskRequest(name=name, reason="done"))

    async def pull_request(self, number: int, action: str, title: str = "") -> None:
        payload = self.gh.pull_request_payload(
            "widgets", number, action, head=f"feat/pr-{number}", title=title
        )
        answer = await self.world.webhook("pull_request", payload)
        assert answer.status_code == 202, answer.text


async def _timed(
    summary: Follower, change: Awaitable[object], check: Callable[[WatchClient], object], what: str
) -> float:
    """Seconds from the change's return to the arrival of the event that made `check` true."""
    await change
    returned = time.perf_counter()
    arrived = await summary.wait(check, timeout=10, what=what)
    return max(0.0, arrived - returned)


async def changes_reach_an_open_summary_stream(world: FlowWorld, backend: str) -> None:
    gh = await world.github_organization(["widgets"])
    changes = Changes(world, gh)
    summary = world.stubs.summary(gh.org)
    samples: dict[str, list[float]] = {
        k: [] for k in ("create", "rename", "archive", "pr opened", "pr edited", "pr closed")
    }
    async with following(summary):
        await summary.wait(lambda c: c.token != "", what="the snapshot")
        for i in range(ROUNDS):
            await _task_round(summary, changes, i, samples)
            await _pull_request_round(summary, changes, 100 + i, samples)
    for kind, values in samples.items():
        report_latency(f"{backend} {kind}", values)
    everything = [v for values in samples.values() for v in values]
    p50, p99 = report_latency(f"{backend} all changes", everything)
    assert max(everything) < PUSHED_SECONDS, (
        f"p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms on {backend}; samples (s): {samples}"
    )


async def _task_round(summary: Follower, changes: Changes, i: int, samples: dict[str, list[float]]) -> None:
    """Create, rename and archive one task, timing each; provisioning and the archive flow run to
    their end untimed in between, so each change is measured on a settled system."""
    created: list[task_pb2.Task] = []

    async def create() -> None:
        created.append(await changes.create(f"Change number {i}"))

    samples["create"].append(
        await _timed(summary, create(), lambda c: created[0].name in _tasks(c), "the created task")
    )
    name, title = created[0].name, f"Renamed {i}"
    await summary.wait(lambda c: _tasks(c)[name].status == task_pb2.TASK_STATUS_IDLE, what="ready")
    samples["rename"].append(
        await _timed(summary, changes.rename(name, title), lambda c: _tasks(c)[name].title == title, "rename")
    )
    samples["archive"].append(
        await _timed(summary, changes.archive(name), lambda c: _tasks(c)[name].status in ARCHIVING, "archive")
    )
    await summary.wait(lambda c: _tasks(c)[name].status == task_pb2.TASK_STATUS_ARCHIVED, what="archived")


async def _pull_request_round(
    summary: Follower, changes: Changes, number: int, samples: dict[str, list[float]]
) -> None:
    """Open, edit and close one pull request by webhook, timing each."""
    samples["pr opened"].append(
        await _timed(summary, changes.pull_request(number, "opened"), lambda c: number in _pulls(c), "PR")
    )
    edited = f"Edited {number}"
    samples["pr edited"].append(
        await _timed(
            summary,
            changes.pull_request(number, "edited", title=edited),
            lambda c: _pulls(c)[number].title == edited,
            "PR edit",
        )
    )
    samples["pr closed"].append(
        await _timed(
            summary, changes.pull_request(number, "closed"), lambda c: number not in _pulls(c), "PR close"
        )
    )


async def resumed_stream_converges(world: FlowWorld) -> None:
    gh = await world.github_organization(["widgets"])
    changes = Changes(world, gh)
    resumed = world.stubs.summary(gh.org)
    resumed.start()
    first = await changes.create("The first task")
    await resumed.wait(lambda c: first.name in _tasks(c), what="the first task")
    live: list[str] = [first.name]
    for round_ in range(3):  # drop the connection, change things meanwhile, resume with the token
        await resumed.stop()
        token = resumed.client.token
        created = await changes.create(f"Offline change {round_}")
        await changes.rename(live[-1], f"Renamed offline {round_}")
        if round_ == 1:
            await changes.archive(first.name)
        await changes.pull_request(300 + round_, "opened")
        if round_:
            await changes.pull_request(300 + round_ - 1, "closed")
        live.append(created.name)
        resumed.start()
        assert resumed.client.token == token
    fresh = world.stubs.summary(gh.org)
    async with following(fresh):
        try:
            await fresh.wait(lambda c: _final(c, live, first.name), timeout=60, what="the final state")

            def converged() -> None:
                assert resumed.error is None and fresh.error is None
                assert resumed.client.state == fresh.client.state

            await assert_eventually(converged, timeout=20)
        finally:
            await resumed.stop()
    assert resumed.client.snapshots == 1 and resumed.client.resets == 0, "resumes send no snapshot"
    assert fresh.client.snapshots == 1


def _final(client: WatchClient, live: list[str], archived: str) -> bool:
    tasks = _tasks(client)
    assert set(live) <= set(tasks)
    assert tasks[archived].status == task_pb2.TASK_STATUS_ARCHIVED
    assert tasks[live[-2]].title == "Renamed offline 2"
    assert set(_pulls(client)) == {302}
    assert all(t.status in SETTLED for t in tasks.values()), [t.status for t in tasks.values()]
    return True
