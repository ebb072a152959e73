"""github_data with the `local` provider: real git repositories in a temp directory, SQLite, in-process
broker, real gRPC."""

from __future__ import annotations

import shutil
from pathlib import Path

import grpc
import pytest
from foundry.github_data.v1 import connection_pb2
from foundry.github_data.v1 import github_data_service_pb2 as pb
from foundry.github_data.v1 import github_data_service_pb2_grpc as pb_grpc
from foundry.github_data.v1 import sync_status_pb2 as ss

from services.platform.settings import Settings
from tests.helpers import assert_eventually
from tests.helpers.mesh import ALICE, running
from tests.unit.github_data.conftest import EventLog, make_repo, stub

ORG = "local-work"


def local_connection(root: Path, org: str = ORG) -> connection_pb2.Connection:
    return connection_pb2.Connection(
        name=f"organizations/{org}/connection",
        provider=ss.PROVIDER_LOCAL,
        local=connection_pb2.LocalSettings(root_path=str(root)),
    )


@pytest.fixture(name="root")
def _root(tmp_path: Path) -> Path:
    root = tmp_path / "repos"
    make_repo(root, "api", "main")
    make_repo(root, "web", "trunk")
    make_repo(root, "infra.git", "develop", bare=True)
    (root / "notes").mkdir()  # a directory that is not a repository
    (root / "README.txt").write_text("not a repo")
    return root


async def synced(client: pb_grpc.GithubDataServiceAsyncStub, org: str = ORG) -> pb.GetSyncStatusResponse:
    async def check() -> pb.GetSyncStatusResponse:
        got = await client.GetSyncStatus(pb.GetSyncStatusRequest(name=f"organizations/{org}/syncStatus"))
        assert got.sync_status.state == ss.SYNC_STATE_SYNCED, got.sync_status
        return got

    return await assert_eventually(check, timeout=15)


async def test_connect_local_answers_pending_then_lists_repositories_within_seconds(
    settings: Settings, root: Path
) -> None:
    async with running(settings, ["github_data"]) as mesh:
        client = stub(mesh)
        connected = await client.ConnectOrganization(
            pb.ConnectOrganizationRequest(connection=local_connection(root))
        )
        assert connected.sync_status.state == ss.SYNC_STATE_PENDING  # answered before the sync ran
        assert connected.sync_status.generation == 1
        assert connected.connection.installation_status == ss.INSTALLATION_STATUS_CONNECTED

        status = (await synced(client)).sync_status
        assert status.label == "Synced 3 repositories"
        assert (status.repository_count, status.open_pull_request_count) == (3, 0)
        assert status.HasField("last_sync_time") and status.connected_account == str(root)

        listed = await client.ListRepositories(pb.ListRepositoriesRequest(parent=f"organizations/{ORG}"))
        found = {r.full_name: (r.default_branch, r.clone_url) for r in listed.repositories}
        assert found == {
            "api": ("main", str(root / "api")),
            "infra.git": ("develop", str(root / "infra.git")),
            "web": ("trunk", str(root / "web")),
        }
        assert listed.freshness.state == ss.SYNC_STATE_SYNCED and listed.freshness.generation == 1
        one = await client.GetRepository(pb.GetRepositoryRequest(name=listed.repositories[0].name))
        assert one.repository.full_name == "api" and one.freshness.HasField("last_sync_time")


async def test_sync_publishes_every_phase_in_order(settings: Settings, root: Path) -> None:
    async with running(settings, ["github_data"]) as mesh:
        log = EventLog()
        await log.attach(mesh.broker, settings.name_prefix)
        client = stub(mesh)
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=local_connection(root)))
        await synced(client)

        def phases() -> list[int]:
            seen: list[int] = []
            for event in log.of("github_data.sync.progress"):
                if event.sync_status.phase and (not seen or seen[-1] != event.sync_status.phase):
                    seen.append(event.sync_status.phase)
            return seen

        async def finished() -> None:
            progress = log.of("github_data.sync.progress")
            assert progress and progress[-1].sync_status.state == ss.SYNC_STATE_SYNCED
            versions = [e.version for e in progress]
            assert versions == sorted(versions) and len(set(versions)) == len(versions)

        await assert_eventually(finished)
        assert phases() == [
            ss.SYNC_PHASE_DISCOVERING_REPOSITORIES,
            ss.SYNC_PHASE_SYNCING_REPOSITORIES,
            ss.SYNC_PHASE_SYNCING_MEMBERS,
            ss.SYNC_PHASE_SYNCING_PULL_REQUESTS,
        ]
        assert sorted(e.repository.full_name for e in log.of("github_data.repository.changed")) == [
            "api",
            "infra.git",
            "web",
        ]


async def test_removed_directory_is_swept_by_the_next_sync(settings: Settings, root: Path) -> None:
    async with running(settings, ["github_data"]) as mesh:
        log = EventLog()
        await log.attach(mesh.broker, settings.name_prefix)
        client = stub(mesh)
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=local_connection(root)))
        await synced(client)
        web = next(
            r
            for r in (
                await client.ListRepositories(pb.ListRepositoriesRequest(parent=f"organizations/{ORG}"))
            ).repositories
            if r.full_name == "web"
        )
        shutil.rmtree(root / "web")
        make_repo(root, "docs")

        again = await client.RequestSync(
            pb.RequestSyncRequest(name=f"organizations/{ORG}/syncStatus", reason="manual reload")
        )
        assert again.enqueued and again.sync_status.generation == 2

        async def swept() -> None:
            status = (await synced(client)).sync_status
            assert status.generation == 2
            listed = await client.ListRepositories(pb.ListRepositoriesRequest(parent=f"organizations/{ORG}"))
            assert [r.full_name for r in listed.repositories] == ["api", "docs", "infra.git"]

        await assert_eventually(swept, timeout=15)
        await assert_eventually(
            lambda: _assert([e.name for e in log.of("github_data.repository.removed")] == [web.name])
        )
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await client.GetRepository(pb.GetRepositoryRequest(name=web.name))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND


def _assert(condition: bool) -> None:
    assert condition


async def test_connecting_again_with_same_settings_starts_no_second_sync(
    settings: Settings, root: Path
) -> None:
    async with running(settings, ["github_data"]) as mesh:
        client = stub(mesh)
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=local_connection(root)))
        await synced(client)
        again = await client.ConnectOrganization(
            pb.ConnectOrganizationRequest(connection=local_connection(root))
        )
        assert again.sync_status.generation == 1 and again.sync_status.state == ss.SYNC_STATE_SYNCED


async def test_pages_repositories_with_tokens(settings: Settings, tmp_path: Path) -> None:
    root = tmp_path / "many"
    for i in range(7):
        make_repo(root, f"r{i}", bare=True)
    async with running(settings, ["github_data"]) as mesh:
        client = stub(mesh)
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=local_connection(root)))
        await synced(client)
        names: list[str] = []
        token = ""
        while True:
            page = await client.ListRepositories(
                pb.ListRepositoriesRequest(parent=f"organizations/{ORG}", page_size=3, page_token=token)
            )
            names += [r.full_name for r in page.repositories]
            token = page.next_page_token
            if not token:
                break
        assert names == [f"r{i}" for i in range(7)]
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await client.ListRepositories(
                pb.ListRepositoriesRequest(parent=f"organizations/{ORG}", page_token="zz")
            )
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("path", ["relative/dir", "/does/not/exist"])
async def test_connect_rejects_a_root_that_is_not_an_absolute_directory(
    settings: Settings, path: str
) -> None:
    async with running(settings, ["github_data"]) as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub(mesh).ConnectOrganization(
                pb.ConnectOrganizationRequest(connection=local_connection(Path(path)))
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unknown_organization_reads_fail_clearly(settings: Settings) -> None:
    async with running(settings, ["github_data"]) as mesh:
        client = stub(mesh)
        with pytest.raises(grpc.aio.AioRpcError) as not_found:
            await client.GetSyncStatus(pb.GetSyncStatusRequest(name="organizations/nobody/syncStatus"))
        assert not_found.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as not_connected:
            await client.RequestSync(pb.RequestSyncRequest(name="organizations/nobody/syncStatus"))
        assert not_connected.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        with pytest.raises(grpc.aio.AioRpcError) as bad_name:
            await client.ListRepositories(pb.ListRepositoriesRequest(parent="orgs/x"))
        assert bad_name.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_webhook_recording_is_for_services_only(settings: Settings) -> None:
    async with running(settings, ["github_data"]) as mesh:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub(mesh, ALICE).RecordWebhookDelivery(
                pb.RecordWebhookDeliveryRequest(delivery_id="d-1", event="push", payload=b"{}")
            )
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_local_organizations_cannot_publish_pull_requests(settings: Settings, root: Path) -> None:
    async with running(settings, ["github_data"]) as mesh:
        client = stub(mesh)
        await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=local_connection(root)))
        await synced(client)
        repo = (
            await client.ListRepositories(pb.ListRepositoriesRequest(parent=f"organizations/{ORG}"))
        ).repositories[0]
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await client.PublishPullRequest(
                pb.PublishPullRequestRequest(parent=repo.name, head_branch="task/x", title="X")
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "no pull requests" in (refused.value.details() or "")


async def test_a_symlink_out_of_the_organization_root_is_not_a_repository(tmp_path: Path) -> None:
    """A user who can write in their connected directory must not make another directory on the host
    (another user's repository, another task's checkout) a repository of their organization."""
    from load.world import make_git_repos
    from services.github_data.providers.local import LocalProvider

    root = make_git_repos(tmp_path / "mine", ("own",))
    elsewhere = make_git_repos(tmp_path / "theirs", ("secret",)) / "secret"
    (root / "stolen").symlink_to(elsewhere)
    (root / "inside").symlink_to(root / "own")  # a link that stays inside the root is fine
    listed = await LocalProvider(str(root)).list_repositories()
    assert sorted(r.full_name for r in listed) == ["inside", "own"]


async def test_a_root_swapped_for_a_symlink_after_connecting_is_refused(tmp_path: Path) -> None:
    """The organization recorded its resolved directory; replacing that directory by a link to
    someone else's must not make their repositories the organization's."""
    import pytest

    from load.world import make_git_repos
    from services.github_data.domain.ports import ProviderError
    from services.github_data.providers.local import LocalProvider

    mine = make_git_repos(tmp_path / "mine", ("own",))
    theirs = make_git_repos(tmp_path / "theirs", ("private",))
    provider_root = str(mine)
    assert [r.full_name for r in await LocalProvider(provider_root).list_repositories()] == ["own"]
    mine.rename(tmp_path / "old")
    mine.symlink_to(theirs)
    with pytest.raises(ProviderError, match="symlink"):
        await LocalProvider(provider_root).list_repositories()
