"""PostgreSQL crashes and comes back under load (a server of this test's own, stopped with pg_ctl's
`immediate` mode, which is a crash, then started on the same port and data).

While it is down, writes to the organization service fail with UNAVAILABLE (which clients retry,
AIP-194), never INTERNAL, and the service process stays up; once it is back, writes succeed again
without a restart of the service, and every write that was answered OK, before or after, is in the
database: nothing acknowledged is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import time
from pathlib import Path

import asyncpg
import grpc
import pytest
from foundry.organization.v1 import organization_service_pb2 as org_pb
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc

from tests.e2e.procs.cluster import Cluster
from tests.e2e.procs.world import GATEWAY
from tests.helpers.servers import PrivatePostgres

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DOWN_SECONDS = 3.0


async def test_a_postgres_crash_loses_no_acknowledged_write_and_the_service_recovers(
    tmp_path: Path, amqp_url: str
) -> None:
    # Not under pytest's tmp_path: the server runs as the `postgres` user when we are root.
    with tempfile.TemporaryDirectory(prefix="foundry-pg-restart-") as root:
        os.chmod(root, 0o755)
        pg = PrivatePostgres(Path(root) / "pg", durable=True)
        await asyncio.to_thread(pg.start)
        try:
            admin = await asyncpg.connect(pg.admin_dsn)
            await admin.execute('CREATE DATABASE "restart"')
            await admin.close()
            url = (
                pg.admin_dsn.replace("postgresql://", "postgresql+asyncpg://").rsplit("/", 1)[0] + "/restart"
            )
            cluster = Cluster(tmp_path, url, amqp_url, replicas={"organization": 1})
            try:
                await cluster.start()
                await _scenario(cluster, pg)
            except BaseException:
                print(cluster.dump_logs())
                raise
            finally:
                await cluster.close()
        finally:
            await asyncio.to_thread(pg.stop, "immediate")


async def _scenario(cluster: Cluster, pg: PrivatePostgres) -> None:
    stub = org_grpc.OrganizationServiceStub(cluster.channel("organization", GATEWAY, timeout=5))
    acknowledged: list[str] = []  # auth session names answered OK
    ok_times: list[float] = []
    restarted_at: list[float] = []
    back = asyncio.Event()  # set by the first write answered OK after the restart
    codes: list[str] = []  # status of every failed attempt
    stop = asyncio.Event()

    async def writer() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                done = await stub.SignInLocal(org_pb.SignInLocalRequest(login=f"user{n % 5}"))
                acknowledged.append(done.auth_session.name)
                ok_times.append(time.monotonic())
                if restarted_at and ok_times[-1] > restarted_at[0]:
                    back.set()
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code().name)
            await asyncio.sleep(0.05)

    load = asyncio.create_task(writer())
    try:
        await asyncio.sleep(1.0)
        before = len(acknowledged)
        assert before > 0, codes
        await asyncio.to_thread(pg.stop, "immediate")  # a crash: no checkpoint, no goodbye to clients
        await asyncio.sleep(DOWN_SECONDS)
        failed_while_down = len(codes)
        await asyncio.to_thread(pg.start)
        restarted_at.append(restarted := time.monotonic())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(back.wait(), 30)
        recovered_after = min([t for t in ok_times if t > restarted], default=float("inf")) - restarted
        await asyncio.sleep(1.0)
    finally:
        stop.set()
        await load
    print(
        f"first OK write {recovered_after:.1f} s after PostgreSQL accepted connections again;",
        f"failures: {set(codes)}",
    )

    assert cluster["organization-0"].running, "the service died with its database"
    assert failed_while_down > 0, "the crash never reached the service"
    assert set(codes) <= {"UNAVAILABLE", "DEADLINE_EXCEEDED"}, codes
    assert recovered_after < 15, f"writes still failing {recovered_after:.1f} s after the restart"
    assert await cluster["organization-0"].is_ready()

    conn = await asyncpg.connect(pg.admin_dsn.rsplit("/", 1)[0] + "/restart")
    try:
        ids = {r["id"] for r in await conn.fetch("SELECT id FROM organization.auth_sessions")}
    finally:
        await conn.close()
    lost = [name for name in acknowledged if name.rsplit("/", 1)[1] not in ids]
    assert not lost, f"{len(lost)} acknowledged sign-ins are missing: {lost[:5]}"
