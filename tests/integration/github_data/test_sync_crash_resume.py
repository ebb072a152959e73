"""A github_data process killed with SIGKILL in the middle of a sync (PostgreSQL + RabbitMQ): a new
process finishes the same sync; the status is never left stuck at `syncing`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import grpc
import pytest
from foundry.github_data.v1 import github_data_service_pb2 as pb
from foundry.github_data.v1 import github_data_service_pb2_grpc as pb_grpc
from foundry.github_data.v1 import sync_status_pb2 as ss
from grpc_health.v1 import health_pb2

from services.platform.channels import open_channel
from services.platform.identity import Caller
from services.platform.settings import Settings
from tests.helpers import assert_eventually, free_port, make_pg_database, unique_name
from tests.helpers.github_server import GithubServer, GithubState, app_key_pair
from tests.helpers.procs import health_status, spawn
from tests.unit.github_data.test_github_sync import STATUS, github_connection, organization

pytestmark = pytest.mark.integration


async def wait_serving(port: int, proc: subprocess.Popen[bytes]) -> None:
    async def check() -> None:
        if proc.poll() is not None:  # not an AssertionError: stop waiting at once
            raise RuntimeError(f"github_data exited with {proc.returncode}")
        try:
            status = await health_status(port, "readiness")
        except grpc.aio.AioRpcError as exc:
            raise AssertionError(str(exc)) from exc
        assert status == health_pb2.HealthCheckResponse.SERVING

    await assert_eventually(check, timeout=60, interval=0.2)


async def test_sync_killed_with_sigkill_is_finished_by_the_next_process(
    amqp_url: str, tmp_path: Path
) -> None:
    private, public = app_key_pair()
    state = GithubState(app_id="4242", public_key=public)
    organization(state, 120)
    state.add_pull("acme/repo-110", 9, head="feat/last")
    state.delay["/pulls"] = 0.3
    port = free_port()
    async with make_pg_database() as db_url, GithubServer(state, prefix="/api/v3") as gh:
        env = {
            "FOUNDRY_DATABASE_URL": db_url,
            "FOUNDRY_AMQP_URL": amqp_url,
            "FOUNDRY_NAME_PREFIX": unique_name("gd"),
            "FOUNDRY_GITHUB_DATA_PORT": str(port),
            "FOUNDRY_METRICS_PORT": "0",
            "FOUNDRY_LOG_FORMAT": "console",
            "FOUNDRY_DATA_DIR": str(tmp_path),
            "FOUNDRY_GITHUB__API_URL": gh.url,
            "FOUNDRY_GITHUB__APP_ID": "4242",
            "FOUNDRY_GITHUB__APP_PRIVATE_KEY": private,
        }
        settings = Settings(_env_file=None)
        first = spawn("services.github_data", env, log_path=tmp_path / "first.log")
        second: subprocess.Popen[bytes] | None = None
        channel = open_channel(f"127.0.0.1:{port}", settings, Caller.service("organization"), timeout=10)
        try:
            await wait_serving(port, first)
            client = pb_grpc.GithubDataServiceStub(channel)
            await client.ConnectOrganization(pb.ConnectOrganizationRequest(connection=github_connection()))

            async def midway() -> None:
                got = (await client.GetSyncStatus(pb.GetSyncStatusRequest(name=STATUS))).sync_status
                assert (
                    got.phase == ss.SYNC_PHASE_SYNCING_PULL_REQUESTS and got.processed_repository_count >= 30
                )

            await assert_eventually(midway, timeout=60)
            first.kill()  # SIGKILL: no drain, the delivery stays unacked, the job row says `running`
            first.wait()
            state.delay["/pulls"] = 0.0

            second = spawn("services.github_data", env, log_path=tmp_path / "second.log")
            await wait_serving(port, second)

            async def finished() -> ss.SyncStatus:
                # wait_for_ready: this channel saw the first process die and may still be in its
                # reconnect backoff (up to 2 s) when the second process is already serving.
                request = pb.GetSyncStatusRequest(name=STATUS)
                got = (await client.GetSyncStatus(request, wait_for_ready=True)).sync_status
                assert got.state == ss.SYNC_STATE_SYNCED, got
                return got

            status = await assert_eventually(finished, timeout=60)
            assert status.generation == 1
            assert (status.repository_count, status.open_pull_request_count) == (120, 1)
            assert state.count("/pulls?") < 2 * 120  # resumed from the cursor, not restarted
        finally:
            await channel.close()
            for proc in (first, second):
                if proc is not None and proc.poll() is None:
                    proc.terminate()
                    proc.wait(30)
