"""Issue 3's PublishPullRequest and GitHub git credentials, observed through Watch streams:

- a task of a GitHub organization whose repository is served over git smart HTTP by the GitHub-wire
  test server (which, like github.com, refuses git without a valid token) reaches READY: the
  provisioning step fetched an installation token from github-data (GenerateRepositoryAccessToken,
  minted at `POST /app/installations/{id}/access_tokens`) and the sandbox cloned with it, without
  writing it into `.git/config`;
- PublishPullRequest returns at once with the publication PUBLISHING; in the background the branch
  is pushed (the served bare repository gets the branch at the sandbox's commit) and the pull
  request opened; WatchTask shows PUBLISHED with the pull request, github-data stores it and the
  organization summary lists it;
- a retry with the same request id, a new request and a redelivered background run never open a
  second pull request;
- on a `local` organization, PublishPullRequest is FAILED_PRECONDITION at once.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from pathlib import Path

import grpc
import pytest
from foundry.github_data.v1 import github_data_service_pb2 as gd_pb2
from foundry.github_data.v1 import pull_request_pb2
from foundry.organization.v1 import organization_summary_pb2 as summary_pb2
from foundry.task.v1 import events_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as task_svc_pb2
from sqlalchemy import update

from services.platform.errors import from_rpc_error
from services.platform.watch.testing import WatchClient
from services.task.store.tables import tasks
from services.task.usecases.deps import Deps
from tests.helpers.mesh import ALICE
from tests.unit.flows.support import Follower, following, git_repo, resources_of, the_task
from tests.unit.flows.world import FlowWorld


def _idle(task: task_pb2.Task) -> bool:
    assert task.status == task_pb2.TASK_STATUS_IDLE, (task.status, task.status_message)
    assert task.sandbox.cwd
    return True


def _git(*args: str, cwd: str | Path) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True)
    return done.stdout.strip()


def _pulls(client: WatchClient) -> dict[int, pull_request_pb2.PullRequestSummary]:
    return {p.number: p for p in resources_of(client, pull_request_pb2.PullRequestSummary).values()}


def _task_deps(world: FlowWorld) -> Deps:
    wiring = world.mesh.hosts["task"].wiring
    assert wiring is not None
    deps: Deps = wiring.servicers[0].impl.deps
    return deps


async def _publish_again(
    world: FlowWorld, watch: Follower, task: task_pb2.Task, *, what: str, new_request_id: bool = False
) -> task_pb2.Task:
    """A worker crashed after the pull request was opened but before it recorded the outcome: put
    the publication back to PUBLISHING and deliver its command again (with a request id github_data
    never saw when `new_request_id`); returns the task once the rerun recorded its outcome."""
    deps = _task_deps(world)
    recorded = task.publication.update_time.ToDatetime()
    values: dict[str, str] = {"publish_state": "publishing"}
    if new_request_id:
        values["publish_request_id"] = str(uuid.uuid4())
    async with deps.db.transaction() as session:
        await session.execute(update(tasks).where(tasks.c.id == task.name.rsplit("/", 1)[1]).values(**values))
        await deps.outbox.enqueue(
            session,
            queue=deps.queue("command"),
            message=events_pb2.RunTaskCommand(
                name=task.name, command=events_pb2.TASK_COMMAND_PUBLISH_PULL_REQUEST, reason="redelivered"
            ),
        )
    await watch.wait(
        lambda c: the_task(watch, task.name).publication.update_time.ToDatetime() > recorded,
        timeout=30,
        what=what,
    )
    return the_task(watch, task.name)


async def publish_on_github_pushes_and_opens_one_pull_request(world: FlowWorld) -> None:
    gh = await world.github_organization(["widgets"], serve_git=True)
    state = gh.state
    full = gh.full_name("widgets")
    bare = state.git_repos[full]
    widgets = gh.repositories["widgets"]

    # The internal token RPC: service callers only; a token minted by the App's endpoint.
    minted_before = state.count(f"/app/installations/{gh.installation_id}/access_tokens")
    token = await world.stubs.github_data().GenerateRepositoryAccessToken(
        gd_pb2.GenerateRepositoryAccessTokenRequest(name=widgets)
    )
    assert state.installation_tokens.get(token.access_token) == gh.installation_id
    assert token.HasField("expire_time")
    assert state.count(f"/app/installations/{gh.installation_id}/access_tokens") == minted_before + 1
    with pytest.raises(grpc.aio.AioRpcError) as denied:
        await world.stubs.github_data(ALICE).GenerateRepositoryAccessToken(
            gd_pb2.GenerateRepositoryAccessTokenRequest(name=widgets)
        )
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED

    branch = f"feat/publish-{uuid.uuid4().hex[:6]}"
    task = (
        await world.stubs.task().CreateTask(
            task_svc_pb2.CreateTaskRequest(
                parent=f"organizations/{gh.org}",
                task=task_pb2.Task(repository=widgets, prompt="Publish me", branch=branch),
            )
        )
    ).task
    watch = world.stubs.task_watch(task.name)
    summary = world.stubs.summary(gh.org)
    async with following(watch, summary):
        await watch.wait(lambda c: _idle(the_task(watch, task.name)), timeout=60, what="the task ready")
        ready = the_task(watch, task.name)
        # Cloned over HTTP with an installation token, which git never wrote down.
        config = (Path(ready.sandbox.cwd) / ".git" / "config").read_text()
        assert state.serve_git(full, bare) in config
        assert not [t for t in state.installation_tokens if t in config]
        fetches = [kind for line, kind in state.git_requests if "git-upload-pack" in line]
        assert "installation" in fetches and set(fetches) <= {"anonymous", "installation"}, fetches
        assert not _git("branch", "--list", branch, cwd=bare)  # not on the remote yet

        # What an agent leaves behind: an edit and a new file, neither committed.
        (Path(ready.sandbox.cwd) / "PUBLISHED.md").write_text("published by the flow test\n")
        before = _git("rev-parse", "HEAD", cwd=ready.sandbox.cwd)

        request_id = str(uuid.uuid4())
        ask = task_svc_pb2.PublishPullRequestRequest(
            name=task.name, title="feat: publish me", body="Body", request_id=request_id
        )
        started = time.perf_counter()
        answer = await world.stubs.task().PublishPullRequest(ask)
        took = time.perf_counter() - started
        assert answer.task.publication.state == task_pb2.PUBLICATION_STATE_PUBLISHING, answer.task.publication
        assert answer.task.publication.request_id == request_id
        assert not answer.task.HasField("pull_request")
        print(f"\n[publish] PublishPullRequest answered in {took * 1000:.1f} ms")

        await watch.wait(
            lambda c: the_task(watch, task.name).publication.state == task_pb2.PUBLICATION_STATE_PUBLISHED,
            timeout=30,
            what="the publication PUBLISHED",
        )
        done = the_task(watch, task.name)
        pr = done.pull_request
        assert pr.head_branch == branch and pr.title == "feat: publish me" and pr.number >= 1, pr
        # The uncommitted work was committed with the pull request's title, then pushed with a token:
        # the remote's branch is that commit.
        committed = _git("rev-parse", "HEAD", cwd=ready.sandbox.cwd)
        assert committed != before and _git("rev-parse", "HEAD~1", cwd=ready.sandbox.cwd) == before
        assert _git("log", "-1", "--format=%s", cwd=ready.sandbox.cwd) == "feat: publish me"
        assert not _git("status", "--porcelain", cwd=ready.sandbox.cwd)
        assert done.publication.head_commit == committed
        assert _git("rev-parse", f"refs/heads/{branch}", cwd=bare) == committed
        assert _git("show", f"{branch}:PUBLISHED.md", cwd=bare) == "published by the flow test"
        pushes = [kind for line, kind in state.git_requests if "git-receive-pack" in line]
        assert "installation" in pushes, pushes
        # Opened once on GitHub, stored by github-data, and on the organization summary.
        assert [p["number"] for p in state.pulls[full] if p["head"]["ref"] == branch] == [pr.number]
        stored = await world.stubs.github_data(ALICE).ListPullRequests(
            gd_pb2.ListPullRequestsRequest(parent=widgets, head_branch=branch)
        )
        assert [p.number for p in stored.pull_requests] == [pr.number]
        await summary.wait(
            lambda c: (
                resources_of(c, task_pb2.TaskSummary)[task.name].pull_request.number == pr.number
                and pr.number in _pulls(c)
            ),
            what="the pull request on the organization summary",
        )
        opened = state.count(f"POST /repos/{full}/pulls")
        assert opened == 1

        # A retry of the same request: the same publication, nothing new.
        again = await world.stubs.task().PublishPullRequest(ask)
        assert again.task.publication.request_id == request_id
        assert again.task.publication.state == task_pb2.PUBLICATION_STATE_PUBLISHED
        # A new request while the pull request is open.
        with pytest.raises(grpc.aio.AioRpcError) as exists:
            await world.stubs.task().PublishPullRequest(
                task_svc_pb2.PublishPullRequestRequest(name=task.name, request_id=str(uuid.uuid4()))
            )
        assert exists.value.code() == grpc.StatusCode.ALREADY_EXISTS, exists.value.details()
        assert from_rpc_error(exists.value).reason == "PULL_REQUEST_ALREADY_EXISTS"

        # Redelivery: the worker crashed after the pull request was opened but before it recorded
        # the outcome, and its message comes again. It must record the same pull request.
        rerun = await _publish_again(world, watch, done, what="the redelivered publication recorded")
        assert rerun.publication.state == task_pb2.PUBLICATION_STATE_PUBLISHED, rerun.publication
        assert rerun.pull_request.number == pr.number
        assert state.count(f"POST /repos/{full}/pulls") == opened
        assert [p["number"] for p in state.pulls[full] if p["head"]["ref"] == branch] == [pr.number]

        # The same crash, but the run's request id is one github_data never saw: it answers
        # ALREADY_EXISTS (the branch has an open pull request), and the task records that one (its
        # summary as github_data derives it), never a second.
        found = await _publish_again(
            world, watch, rerun, what="the publication with a new request id recorded", new_request_id=True
        )
        assert found.publication.state == task_pb2.PUBLICATION_STATE_PUBLISHED, found.publication
        assert (found.pull_request.name, found.pull_request.title) == (pr.name, pr.title)
        assert (found.pull_request.head_branch, found.pull_request.url) == (branch, pr.url)
        assert state.count(f"POST /repos/{full}/pulls") == opened
        assert [p["number"] for p in state.pulls[full] if p["head"]["ref"] == branch] == [pr.number]


async def publish_on_a_local_organization_fails_at_once(world: FlowWorld, root: Path) -> None:
    git_repo(root, "demo")
    org, _, _ = await world.local_organization(root)
    summary = world.stubs.summary(org)
    async with following(summary):
        await summary.wait(
            lambda c: any(
                r.full_name == "demo" for r in resources_of(c, summary_pb2.RepositorySummary).values()
            ),
            timeout=10,
            what="repository demo",
        )
        [repository] = resources_of(summary.client, summary_pb2.RepositorySummary)
    # A local organization needs no credentials: an empty token.
    listed = await world.stubs.github_data().GenerateRepositoryAccessToken(
        gd_pb2.GenerateRepositoryAccessTokenRequest(name=repository)
    )
    assert listed.access_token == "" and not listed.HasField("expire_time")
    task = (
        await world.stubs.task().CreateTask(
            task_svc_pb2.CreateTaskRequest(
                parent=f"organizations/{org}", task=task_pb2.Task(repository=repository, prompt="Local")
            )
        )
    ).task
    watch = world.stubs.task_watch(task.name)
    async with following(watch):
        await watch.wait(lambda c: _idle(the_task(watch, task.name)), timeout=60, what="the task ready")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await world.stubs.task().PublishPullRequest(
                task_svc_pb2.PublishPullRequestRequest(name=task.name, request_id=str(uuid.uuid4()))
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert from_rpc_error(refused.value).reason == "PROVIDER_HAS_NO_PULL_REQUESTS"
        assert "local organization" in (refused.value.details() or ""), refused.value.details()
        current = (await world.stubs.task().GetTask(task_svc_pb2.GetTaskRequest(name=task.name))).task
        assert not current.HasField("publication")  # nothing was recorded or enqueued
