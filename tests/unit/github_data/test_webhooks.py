"""Webhook deliveries with complete GitHub payloads (fixtures/*.json): recording, dedup, handling."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from foundry.github_data.v1 import github_data_service_pb2 as pb
from foundry.github_data.v1 import pull_request_pb2
from foundry.github_data.v1 import sync_status_pb2 as ss
from foundry.github_data.v1 import webhook_delivery_pb2 as wd

from services.platform.settings import Settings
from services.platform.webhook_signature import sign, verify_signature
from tests.helpers import assert_eventually
from tests.helpers.github_server import (
    PULL_REQUEST_DETAIL_FIELDS,
    REST_ONLY_REPOSITORY_FIELDS,
    GithubServer,
    GithubState,
    pull_request_json,
    repository_json,
    user_json,
    webhook_repository_json,
)
from tests.helpers.mesh import Mesh, running
from tests.unit.github_data.conftest import EventLog, stub
from tests.unit.github_data.test_github_sync import (
    STATUS,
    github_connection,
    organization,
    wait_state,
    with_api,
)

FIXTURES = Path(__file__).parent / "fixtures"


def fixture(name: str) -> bytes:
    return (FIXTURES / f"{name}.json").read_bytes()


# Every `*_url` GitHub documents on a repository object (REST answers and webhook payloads alike).
REPOSITORY_URL_FIELDS = frozenset(
    k for k in repository_json(user_json("acme", 9919, "Organization"), "widgets", 1) if k.endswith("_url")
)

# A pull request's documented link relations.
LINK_RELATIONS = (
    "self",
    "html",
    "issue",
    "comments",
    "review_comments",
    "review_comment",
    "commits",
    "statuses",
)


def _repositories(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """(path, object) of every full repository object (one with an `owner`) inside `node`."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if "full_name" in node and "owner" in node:
            found.append((path or "/", node))
        for key, value in node.items():
            found += _repositories(value, f"{path}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _repositories(value, f"{path}/{i}")
    return found


def test_fixtures_are_complete_webhook_payloads() -> None:
    """The fixtures carry what GitHub sends: every documented repository URL, no REST-only
    `permissions`, the push payload's unix-time repository dates, and the webhook pull request's
    detail fields and links."""
    assert {
        "archive_url", "assignees_url", "blobs_url", "collaborators_url", "comments_url", "compare_url",
        "contributors_url", "deployments_url", "downloads_url", "git_commits_url", "git_refs_url",
        "git_tags_url", "issue_comment_url", "issue_events_url", "labels_url", "merges_url",
        "milestones_url", "notifications_url", "releases_url", "stargazers_url", "subscribers_url",
        "subscription_url", "trees_url",
    } <= REPOSITORY_URL_FIELDS  # fmt: skip
    checked = 0
    for path in sorted(FIXTURES.glob("*.json")):
        body = json.loads(path.read_bytes())
        for where, repo in _repositories(body):
            label = f"{path.name}:{where}"
            assert REPOSITORY_URL_FIELDS <= set(repo), (label, sorted(REPOSITORY_URL_FIELDS - set(repo)))
            assert not set(REST_ONLY_REPOSITORY_FIELDS) & set(repo), label
            dates = (repo["created_at"], repo["pushed_at"])
            if path.name == "push.json":
                assert all(isinstance(d, int) for d in dates), label  # unix seconds in `push` only
                assert isinstance(repo["updated_at"], str) and repo["master_branch"] == "main"
            else:
                assert all(isinstance(d, str) for d in dates), label
            checked += 1
        pr = body.get("pull_request")
        if pr is not None:
            assert set(PULL_REQUEST_DETAIL_FIELDS) <= set(pr), path.name
            assert pr["merged"] == (pr["merged_at"] is not None), path.name
            assert set(pr["_links"]) == set(LINK_RELATIONS), path.name
    assert checked == 4 * 3 + 1  # repository, head.repo, base.repo of 4 pull_request payloads; push


def test_builders_give_the_rest_and_webhook_shapes() -> None:
    owner = user_json("acme", 9919, "Organization")
    rest = repository_json(owner, "widgets", 771001)
    assert "permissions" in rest and REPOSITORY_URL_FIELDS <= set(rest)
    hook = webhook_repository_json(rest)
    assert set(rest) - set(hook) == {"permissions"}
    kwargs: dict[str, Any] = {"title": "t", "head": "feat", "base": "main", "author": owner}
    simple = pull_request_json(rest, 1, **kwargs)
    assert not set(PULL_REQUEST_DETAIL_FIELDS) & set(simple)  # a list item is "pull request simple"
    assert simple["head"]["repo"] == rest
    full = pull_request_json(rest, 1, **kwargs, shape="full")
    assert set(full) - set(simple) == set(PULL_REQUEST_DETAIL_FIELDS) and full["head"]["repo"] == rest
    webhook = pull_request_json(rest, 1, **kwargs, state="closed", merged=True, shape="webhook")
    assert webhook["merged"] is True and webhook["merged_by"] == owner
    assert webhook["head"]["repo"] == webhook["base"]["repo"] == hook


def test_verify_signature_accepts_only_the_exact_body_under_the_secret() -> None:
    body = fixture("pull_request.opened")
    good = sign("s3cret", body)
    assert good.startswith("sha256=") and len(good) == 7 + 64
    assert verify_signature("s3cret", body, good)
    assert not verify_signature("other", body, good)  # wrong secret
    assert not verify_signature("s3cret", body + b" ", good)  # body changed by one byte
    assert not verify_signature("s3cret", body, good.replace("sha256=", "sha1="))
    assert not verify_signature("s3cret", body, None)
    assert not verify_signature("", body, sign("", body))  # an unset secret accepts nothing


@pytest.fixture(name="mesh")
async def _mesh(
    settings: Settings, rsa_keys: tuple[str, str]
) -> AsyncIterator[tuple[Mesh, EventLog, GithubState]]:
    """`acme` connected to the fake GitHub (one repository, synced), with an event log attached."""
    state = GithubState(app_id="4242", public_key=rsa_keys[1])
    organization(state, 1)
    async with GithubServer(state) as gh:
        settings = with_api(settings, gh)
        async with running(settings, ["github_data"]) as mesh:
            log = EventLog()
            await log.attach(mesh.broker, settings.name_prefix)
            await stub(mesh).ConnectOrganization(
                pb.ConnectOrganizationRequest(connection=github_connection())
            )
            await wait_state(mesh, ss.SYNC_STATE_SYNCED)
            yield mesh, log, state


async def deliver(mesh: Mesh, delivery_id: str, event: str, name: str) -> pb.RecordWebhookDeliveryResponse:
    return await stub(mesh).RecordWebhookDelivery(
        pb.RecordWebhookDeliveryRequest(delivery_id=delivery_id, event=event, payload=fixture(name))
    )


async def handled(mesh: Mesh, delivery_id: str, event: str, name: str) -> wd.WebhookDelivery:
    """Wait until the delivery left the queue; a repeat recording returns its stored state."""

    async def check() -> wd.WebhookDelivery:
        again = await deliver(mesh, delivery_id, event, name)
        assert again.duplicate and again.webhook_delivery.state != wd.WEBHOOK_DELIVERY_STATE_QUEUED
        return again.webhook_delivery

    return await assert_eventually(check)


async def test_pull_request_opened_stores_repository_and_pull_request(mesh: Any) -> None:
    m, log, _ = mesh
    first = await deliver(m, "d-open-1", "pull_request", "pull_request.opened")
    assert not first.duplicate and first.webhook_delivery.state == wd.WEBHOOK_DELIVERY_STATE_QUEUED
    assert first.webhook_delivery.action == "opened"
    done = await handled(m, "d-open-1", "pull_request", "pull_request.opened")
    assert done.state == wd.WEBHOOK_DELIVERY_STATE_HANDLED and done.organization == "organizations/acme"

    client = stub(m)
    prs = await client.ListPullRequests(
        pb.ListPullRequestsRequest(parent="organizations/acme/repositories/-", head_branch="feat/retry")
    )
    [pr] = prs.pull_requests
    assert (pr.number, pr.title, pr.state, pr.author_login) == (
        42,
        "Add retry to the widget client",
        pull_request_pb2.PULL_REQUEST_STATE_OPEN,
        "octocat",
    )
    assert pr.repository_full_name == "acme/widgets" and pr.base_branch == "main"
    assert prs.freshness.HasField("last_webhook_time")
    repo = await client.GetRepository(pb.GetRepositoryRequest(name=pr.repository))
    assert repo.repository.private and repo.repository.description == "Widgets service"

    status = (await client.GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
    assert status.last_webhook_event == "pull_request.opened" and status.HasField("last_webhook_time")
    await assert_eventually(
        lambda: _true(
            [e.pull_request.head_branch for e in log.of("github_data.pull_request.changed")] == ["feat/retry"]
            and log.of("github_data.sync.progress")[-1].sync_status.last_webhook_event
            == "pull_request.opened"
        )
    )


def _true(condition: bool) -> None:
    assert condition


async def test_merged_pull_request_is_removed_and_its_task_archived_once(mesh: Any) -> None:
    m, log, _ = mesh
    await deliver(m, "d-open-2", "pull_request", "pull_request.opened")
    await handled(m, "d-open-2", "pull_request", "pull_request.opened")
    await deliver(m, "d-merge-2", "pull_request", "pull_request.closed.merged")
    await handled(m, "d-merge-2", "pull_request", "pull_request.closed.merged")
    duplicate = await deliver(m, "d-merge-2", "pull_request", "pull_request.closed.merged")
    assert duplicate.duplicate

    async def announced() -> None:
        [removed] = log.of("github_data.pull_request.removed")
        assert removed.final_state == pull_request_pb2.PULL_REQUEST_STATE_MERGED
        assert removed.head_branch == "feat/retry" and removed.pull_request.HasField("merge_time")
        [archive] = log.of("github_data.task.archive_on_branch")
        assert (archive.branch, archive.reason) == ("feat/retry", "PR merged")
        assert archive.repository == removed.repository and archive.pull_request == removed.name
        changed = log.of("github_data.pull_request.changed")
        assert removed.version > changed[-1].version

    await assert_eventually(announced)
    prs = await stub(m).ListPullRequests(
        pb.ListPullRequestsRequest(parent="organizations/acme/repositories/-")
    )
    assert list(prs.pull_requests) == []
    status = (await stub(m).GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
    assert status.last_webhook_event == "pull_request.closed"


async def test_pull_request_converted_to_draft_is_stored_as_draft(mesh: Any) -> None:
    m, log, _ = mesh
    await deliver(m, "d-open-8", "pull_request", "pull_request.opened")
    await handled(m, "d-open-8", "pull_request", "pull_request.opened")
    first = await deliver(m, "d-draft-8", "pull_request", "pull_request.converted_to_draft")
    assert first.webhook_delivery.action == "converted_to_draft"
    done = await handled(m, "d-draft-8", "pull_request", "pull_request.converted_to_draft")
    assert done.state == wd.WEBHOOK_DELIVERY_STATE_HANDLED

    prs = await stub(m).ListPullRequests(
        pb.ListPullRequestsRequest(parent="organizations/acme/repositories/-", head_branch="feat/retry")
    )
    [pr] = prs.pull_requests
    assert (pr.number, pr.state, pr.draft) == (42, pull_request_pb2.PULL_REQUEST_STATE_DRAFT, True)
    stored = await stub(m).GetPullRequest(pb.GetPullRequestRequest(name=pr.name))
    assert stored.pull_request.state == pull_request_pb2.PULL_REQUEST_STATE_DRAFT

    def announced() -> None:
        changed = sorted(log.of("github_data.pull_request.changed"), key=lambda e: e.version)
        assert [(e.pull_request.state, e.pull_request.draft) for e in changed] == [
            (pull_request_pb2.PULL_REQUEST_STATE_OPEN, False),
            (pull_request_pb2.PULL_REQUEST_STATE_DRAFT, True),
        ]
        # The event carries the summary consumers keep, derived by github_data (its one owner).
        assert [(e.summary.name, e.summary.state, e.summary.draft) for e in changed] == [
            (pr.name, pull_request_pb2.PULL_REQUEST_STATE_OPEN, False),
            (pr.name, pull_request_pb2.PULL_REQUEST_STATE_DRAFT, True),
        ]
        assert changed[-1].summary.update_time == changed[-1].pull_request.update_time
        assert changed[-1].summary.HasField("update_time")
        assert log.of("github_data.pull_request.removed") == []
        assert log.of("github_data.task.archive_on_branch") == []

    await assert_eventually(announced)
    status = (await stub(m).GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
    assert status.last_webhook_event == "pull_request.converted_to_draft"
    assert status.open_pull_request_count == 1  # a draft is still an open pull request


async def test_closed_unmerged_pull_request_is_removed_and_its_task_archived(mesh: Any) -> None:
    m, log, _ = mesh
    await deliver(m, "d-open-9", "pull_request", "pull_request.opened")
    await handled(m, "d-open-9", "pull_request", "pull_request.opened")
    await deliver(m, "d-close-9", "pull_request", "pull_request.closed")
    done = await handled(m, "d-close-9", "pull_request", "pull_request.closed")
    assert done.state == wd.WEBHOOK_DELIVERY_STATE_HANDLED

    async def announced() -> None:
        [removed] = log.of("github_data.pull_request.removed")
        assert removed.final_state == pull_request_pb2.PULL_REQUEST_STATE_CLOSED
        assert removed.pull_request.state == pull_request_pb2.PULL_REQUEST_STATE_CLOSED
        assert removed.head_branch == "feat/retry"
        assert removed.pull_request.HasField("close_time")
        assert not removed.pull_request.HasField("merge_time")
        [archive] = log.of("github_data.task.archive_on_branch")
        assert (archive.branch, archive.reason) == ("feat/retry", "PR closed")
        assert archive.repository == removed.repository and archive.pull_request == removed.name

    await assert_eventually(announced)
    prs = await stub(m).ListPullRequests(
        pb.ListPullRequestsRequest(parent="organizations/acme/repositories/-")
    )
    assert list(prs.pull_requests) == []
    status = (await stub(m).GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
    assert status.last_webhook_event == "pull_request.closed" and status.open_pull_request_count == 0


async def test_installation_deleted_clears_state_and_requires_install(mesh: Any) -> None:
    m, log, _ = mesh
    await deliver(m, "d-open-3", "pull_request", "pull_request.opened")
    await handled(m, "d-open-3", "pull_request", "pull_request.opened")
    await deliver(m, "d-del-3", "installation", "installation.deleted")
    await handled(m, "d-del-3", "installation", "installation.deleted")
    status = (await stub(m).GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
    assert status.installation_status == ss.INSTALLATION_STATUS_INSTALL_REQUIRED
    assert (status.repository_count, status.open_pull_request_count) == (0, 0)
    assert status.last_webhook_event == "installation.deleted"
    await assert_eventually(
        lambda: _true(
            len(log.of("github_data.pull_request.removed")) == 1
            and len(log.of("github_data.repository.removed")) == 2
        )
    )


async def test_installation_suspend_clears_state_and_unsuspend_syncs_again(mesh: Any) -> None:
    m, _, _ = mesh
    client = stub(m)
    for action, delivery_id in (("suspend", "d-susp-7"), ("unsuspend", "d-unsusp-7")):
        body = json.loads(fixture("installation.deleted"))  # same complete shape; GitHub sets suspended_*
        body["action"] = action
        suspended = action == "suspend"
        body["installation"]["suspended_by"] = body["sender"] if suspended else None
        body["installation"]["suspended_at"] = "2024-06-05T10:00:00Z" if suspended else None
        request = pb.RecordWebhookDeliveryRequest(
            delivery_id=delivery_id, event="installation", payload=json.dumps(body).encode()
        )
        assert not (await client.RecordWebhookDelivery(request)).duplicate

        async def settled(request: pb.RecordWebhookDeliveryRequest = request) -> None:
            again = await client.RecordWebhookDelivery(request)
            assert again.webhook_delivery.state == wd.WEBHOOK_DELIVERY_STATE_HANDLED

        await assert_eventually(settled)
        status = (await client.GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
        assert status.last_webhook_event == f"installation.{action}"
        if suspended:
            assert status.installation_status == ss.INSTALLATION_STATUS_RECONNECT_REQUIRED
            assert (status.repository_count, status.state) == (0, ss.SYNC_STATE_PENDING)
    await assert_eventually(lambda: _generation_is(m, 2))  # unsuspend queued a full sync
    status = (await client.GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
    assert status.installation_status == ss.INSTALLATION_STATUS_CONNECTED and status.repository_count == 1


async def test_installation_created_and_repositories_added_queue_a_full_sync(mesh: Any) -> None:
    m, _, _ = mesh
    await deliver(m, "d-new-4", "installation", "installation.created")
    await handled(m, "d-new-4", "installation", "installation.created")
    assert (await wait_state(m, ss.SYNC_STATE_SYNCED)).generation >= 2
    await assert_eventually(lambda: _generation_is(m, 2))
    await deliver(m, "d-add-4", "installation_repositories", "installation_repositories.added")
    await handled(m, "d-add-4", "installation_repositories", "installation_repositories.added")
    await assert_eventually(lambda: _generation_is(m, 3))


async def _generation_is(m: Mesh, generation: int) -> None:
    status = (await stub(m).GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
    assert status.generation == generation and status.state == ss.SYNC_STATE_SYNCED


async def test_organization_member_added_and_removed_are_stored_and_announced(mesh: Any) -> None:
    m, log, _ = mesh
    client = stub(m)
    await deliver(m, "d-member-1", "organization", "organization.member_added")
    added = await handled(m, "d-member-1", "organization", "organization.member_added")
    assert added.state == wd.WEBHOOK_DELIVERY_STATE_HANDLED
    listed = await client.ListGithubMembers(pb.ListGithubMembersRequest(parent="organizations/acme"))
    assert ("mona-new", "member", "active") in [(g.login, g.role, g.state) for g in listed.github_members]

    def announced_added() -> None:
        [changed] = [c for c in log.of("github_data.member.changed") if c.github_member.login == "mona-new"]
        assert changed.name == "organizations/acme/githubMembers/5550001"

    await assert_eventually(announced_added)
    await deliver(m, "d-member-2", "organization", "organization.member_removed")
    removed = await handled(m, "d-member-2", "organization", "organization.member_removed")
    assert removed.state == wd.WEBHOOK_DELIVERY_STATE_HANDLED and removed.detail == ""
    listed = await client.ListGithubMembers(pb.ListGithubMembersRequest(parent="organizations/acme"))
    assert "mona-new" not in [g.login for g in listed.github_members]

    def announced_removed() -> None:
        [gone] = log.of("github_data.member.removed")
        [changed] = [c for c in log.of("github_data.member.changed") if c.github_member.login == "mona-new"]
        assert (gone.name, gone.login) == (changed.name, "mona-new") and gone.version > changed.version

    await assert_eventually(announced_removed)
    # Removing a member that is not stored (a repeated removal) announces nothing.
    await deliver(m, "d-member-3", "organization", "organization.member_removed")
    again = await handled(m, "d-member-3", "organization", "organization.member_removed")
    assert "not stored" in again.detail
    assert len(log.of("github_data.member.removed")) == 1


async def test_unhandled_events_and_unknown_accounts_are_recorded_as_ignored(mesh: Any) -> None:
    m, _, _ = mesh
    await deliver(m, "d-push-5", "push", "push")
    push = await handled(m, "d-push-5", "push", "push")
    assert push.state == wd.WEBHOOK_DELIVERY_STATE_IGNORED and "push" in push.detail
    stranger = json.loads(fixture("pull_request.opened"))
    for node in (stranger["repository"]["owner"], stranger["organization"]):
        node["login"] = "someone-else"
    got = await stub(m).RecordWebhookDelivery(
        pb.RecordWebhookDeliveryRequest(
            delivery_id="d-stranger-5", event="pull_request", payload=json.dumps(stranger).encode()
        )
    )
    assert not got.duplicate

    async def ignored() -> None:
        again = await stub(m).RecordWebhookDelivery(
            pb.RecordWebhookDeliveryRequest(delivery_id="d-stranger-5", event="pull_request", payload=b"{}")
        )
        assert again.webhook_delivery.state == wd.WEBHOOK_DELIVERY_STATE_IGNORED
        assert "someone-else" in again.webhook_delivery.detail

    await assert_eventually(ignored)


async def test_record_rejects_a_payload_that_is_not_a_json_object(mesh: Any) -> None:
    m, _, _ = mesh
    for payload in (b"not json", b"[1, 2]"):
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub(m).RecordWebhookDelivery(
                pb.RecordWebhookDeliveryRequest(delivery_id="d-bad-6", event="pull_request", payload=payload)
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
