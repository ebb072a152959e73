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

from tests.e2e.procs.cluster import Cluster, Replica
from tests.e2e.procs.world import GATEWAY
from tests.helpers.servers import PrivatePostgres

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DOWN_SECONDS = 3.0
# Concurrent writers: with one, a crash rarely catches a call while it connects (a reset or EOF then,
# not a refused connect), which is where the unrecognised errors were.
WRITERS = 6
EXPECTED = {"UNAVAILABLE", "DEADLINE_EXCEEDED"}


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
    unexpected: list[str] = []  # code and message of each failure outside EXPECTED
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                done = await stub.SignInLocal(org_pb.SignInLocalRequest(login=f"user{w}x{n % 5}"))
                acknowledged.append(done.auth_session.name)
                ok_times.append(time.monotonic())
                if restarted_at and ok_times[-1] > restarted_at[0]:
                    back.set()
            except grpc.aio.AioRpcError as exc:
                codes.append(exc.code().name)
                if exc.code().name not in EXPECTED:
                    unexpected.append(f"{exc.code().name}: {exc.details()}")
            await asyncio.sleep(0.05)

    load = asyncio.gather(*(writer(w) for w in range(WRITERS)))
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
    assert set(codes) <= EXPECTED, _unexpected_failures(codes, unexpected, cluster["organization-0"])
    assert recovered_after < 15, f"writes still failing {recovered_after:.1f} s after the restart"
    assert await cluster["organization-0"].is_ready()

    conn = await asyncpg.connect(pg.admin_dsn.rsplit("/", 1)[0] + "/restart")
    try:
        ids = {r["id"] for r in await conn.fetch("SELECT id FROM organization.auth_sessions")}
    finally:
        await conn.close()
    lost = [name for name in acknowledged if name.rsplit("/", 1)[1] not in ids]
    assert not lost, f"{len(lost)} acknowledged sign-ins are missing: {lost[:5]}"


def _unexpected_failures(codes: list[str], unexpected: list[str], replica: Replica) -> str:
    """Why calls failed with a code outside EXPECTED: what the client got, and from the replica's
    whole log (not its tail) the `rpc` lines of those calls and the tracebacks the ErrorMapping
    interceptor logs (`rpc_internal_error`) for errors it does not recognise, plus any output that
    is not a JSON line (e.g. a traceback Python printed itself)."""
    lines = [f"failures: {sorted(set(codes))} ({len(codes)}); client saw:", *unexpected[:10]]
    events = replica.events()
    rpcs = [e for e in events if e.get("event") == "rpc" and e.get("code") not in ("OK", *EXPECTED)]
    lines.append(f"--- {replica.label}: {len(rpcs)} rpc lines with such a code ---")
    lines += [str(e) for e in rpcs[:10]]
    internal = [e for e in events if e.get("event") == "rpc_internal_error"]
    lines.append(f"--- {replica.label}: {len(internal)} rpc_internal_error lines (unrecognised errors) ---")
    for e in internal[:5]:
        lines += [str({k: v for k, v in e.items() if k != "exception"}), str(e.get("exception"))]
    mapped = sorted({str(e.get("error")) for e in events if e.get("event") == "rpc_database_error"})
    lines.append(f"--- {replica.label}: database errors answered UNAVAILABLE (distinct) ---")
    lines += mapped[:10]
    other = [e for e in events if "exception" in e and e.get("event") != "rpc_internal_error"]
    lines.append(f"--- {replica.label}: {len(other)} other lines with a traceback (their error) ---")
    lines += [f"{e.get('event')}: {_last_error_line(str(e['exception']))}" for e in other[:10]]
    raw = [line for line in replica.log.read_text(errors="replace").splitlines() if not line.startswith("{")]
    lines.append(f"--- {replica.label}: {len(raw)} non-JSON lines (last 60) ---")
    lines += raw[-60:]
    return "\n".join(lines)


def _last_error_line(traceback: str) -> str:
    """The `Type: message` line a traceback ends with (SQLAlchemy adds `[SQL: …]`, `(Background …)`)."""
    tops = [line for line in traceback.splitlines() if line and not line[0].isspace() and line[0] not in "[("]
    return tops[-1] if tops else traceback.strip()[-200:]
