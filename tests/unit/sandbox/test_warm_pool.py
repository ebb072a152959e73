"""The warm pool (services/sandbox/usecases/warm_pool.py) against the real sandbox service: real git,
the real fake agent, the configured provider (bubblewrap where the kernel allows it). Which path a
sandbox took is read from its record (`from_warm_pool`), never from timing."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from foundry.sandbox.v1 import sandbox_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc

from services.platform.db import Database
from services.platform.settings import Settings
from services.sandbox.domain.models import SandboxKey
from services.sandbox.store.warm_pool import PREPARING, WARM, PoolTarget
from services.sandbox.usecases.warm_pool import REFILL_AFTER_CLAIM_SECONDS, WarmPool
from tests.helpers.eventually import assert_eventually
from tests.helpers.mesh import Mesh, running
from tests.unit.sandbox.conftest import ORG, sandbox_stub
from tests.unit.sandbox.gitrepo import git, make_origin

REPO = f"{ORG}/repositories/demo"
ORG_ID = ORG.rsplit("/", 1)[-1]


def pool_of(mesh: Mesh) -> WarmPool:
    host = mesh.hosts["sandbox"]
    assert host.wiring is not None
    (drain,) = host.wiring.on_drain
    pool = drain.__self__  # type: ignore[attr-defined]
    assert isinstance(pool, WarmPool)
    return pool


async def warm_rows(
    mesh: Mesh, *, organization: str = ORG_ID, repository: str = REPO, state: str = WARM
) -> list[Any]:
    pool = pool_of(mesh)
    rows = await pool.records.unclaimed(pool.replica, organization, repository)
    return [r for r in rows if r.pool == state]


async def create(
    stub: pb_grpc.SandboxServiceAsyncStub,
    sandbox_id: str,
    *,
    org: str = ORG,
    repository: str = REPO,
    egress: str = "",
) -> pb.CreateSandboxResponse:
    return await stub.CreateSandbox(
        pb.CreateSandboxRequest(
            parent=org,
            sandbox_id=sandbox_id,
            sandbox=sandbox_pb2.Sandbox(task=f"{org}/tasks/{sandbox_id}", repository=repository),
            egress_policy=egress,
        )
    )


async def prepare(
    stub: pb_grpc.SandboxServiceAsyncStub, name: str, origin: Path, branch: str
) -> sandbox_pb2.Sandbox:
    response = await stub.PrepareRepository(
        pb.PrepareRepositoryRequest(
            name=name,
            clone_url=str(origin),
            branch=branch,
            base_branch="main",
            git_user_name="Foundry",
            git_user_email="foundry@example.com",
        )
    )
    return response.sandbox


async def one_warm(mesh: Mesh, **kw: Any) -> list[Any]:
    async def ready() -> list[Any]:
        rows = await warm_rows(mesh, **kw)
        assert len(rows) == 1, rows
        return rows

    return await assert_eventually(ready, timeout=30)


def pool_settings(settings_factory: Callable[..., Settings], **sandbox: Any) -> Settings:
    return settings_factory(sandbox={"warm_pool_size": 1, "warm_pool_refill_seconds": 0.2, **sandbox})


@pytest.fixture
async def mesh(settings_factory: Callable[..., Settings]) -> AsyncIterator[Mesh]:
    async with running(pool_settings(settings_factory), ["sandbox"]) as m:
        yield m


@pytest.fixture
async def stub(mesh: Mesh) -> AsyncIterator[pb_grpc.SandboxServiceAsyncStub]:
    async with sandbox_stub(mesh) as s:
        yield s


async def test_a_task_claims_the_warm_sandbox_switched_to_its_branch_and_the_pool_refills(
    mesh: Mesh, stub: pb_grpc.SandboxServiceAsyncStub, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path)
    # No pool before a task of the repository was prepared.
    first = await create(stub, "t1")
    assert not first.sandbox.from_warm_pool
    await prepare(stub, first.sandbox.name, origin, "feat/one")
    (warm,) = await one_warm(mesh)
    assert warm.task == "" and warm.checkout.branch == ""  # detached at main's head
    # Unclaimed warm sandboxes are the pool's: ListSandboxes shows the task's sandbox only.
    listed = await stub.ListSandboxes(pb.ListSandboxesRequest(parent=ORG, show_destroyed=True))
    assert [s.name for s in listed.sandboxes] == [first.sandbox.name]

    claimed = await create(stub, "t2")
    assert claimed.created and claimed.sandbox.from_warm_pool
    assert claimed.sandbox.name == f"{ORG}/sandboxes/t2" and claimed.sandbox.task == f"{ORG}/tasks/t2"
    assert claimed.sandbox.provider_sandbox_id == warm.provider_sandbox_id
    # Redelivered: the same task finds its own sandbox, and takes no second warm one.
    again = await create(stub, "t2")
    assert not again.created and again.sandbox.provider_sandbox_id == warm.provider_sandbox_id
    switched = await prepare(stub, claimed.sandbox.name, origin, "feat/two")
    assert switched.checkout.branch == "feat/two" and switched.checkout.base_branch == "main"
    assert switched.checkout.head_commit == git("rev-parse", "main", cwd=origin).strip()
    # The task owner's identity was written with the switch (a warm checkout has none).
    work = Path(switched.checkout.path)
    assert git("config", "user.name", cwd=work).strip() == "Foundry"
    assert git("config", "user.email", cwd=work).strip() == "foundry@example.com"
    # The warm agent (started before the claim, with no keys) serves the task's session.
    started = await stub.StartAgent(pb.StartAgentRequest(parent=claimed.sandbox.name, agent="agents/fake"))
    assert started.agent_connection.start_time.ToDatetime() < claimed.sandbox.update_time.ToDatetime()
    session = await stub.StartAgentSession(
        pb.StartAgentSessionRequest(parent=claimed.sandbox.name, session_id="s1", agent="agents/fake")
    )
    assert session.agent_session.name == f"{claimed.sandbox.name}/sessions/s1"

    # Refilled after the claim; the next claim follows a head that moved meanwhile (fetch, then switch).
    (refill,) = await one_warm(mesh)
    assert refill.key.sandbox_id != warm.key.sandbox_id
    seed = tmp_path / "moved"
    git("clone", "-q", str(origin), str(seed), cwd=tmp_path)
    (seed / "NEW.md").write_text("moved\n")
    git("add", ".", cwd=seed)
    git("commit", "-q", "-m", "moved", cwd=seed)
    git("push", "-q", "origin", "main", cwd=seed)
    third = await create(stub, "t3")
    assert third.sandbox.from_warm_pool
    moved = await prepare(stub, third.sandbox.name, origin, "feat/three")
    assert moved.checkout.head_commit == git("rev-parse", "main", cwd=origin).strip()
    # A task branch that exists on the remote is checked out from it.
    await one_warm(mesh)
    fourth = await create(stub, "t4")
    assert fourth.sandbox.from_warm_pool
    existing = await prepare(stub, fourth.sandbox.name, origin, "feature/existing")
    assert existing.checkout.branch_existed
    assert existing.checkout.head_commit == git("rev-parse", "feature/existing", cwd=origin).strip()


async def test_a_warm_sandbox_never_serves_another_organization_repository_or_egress_policy(
    mesh: Mesh, stub: pb_grpc.SandboxServiceAsyncStub, tmp_path: Path
) -> None:
    origin = make_origin(tmp_path)
    first = await create(stub, "t1")
    await prepare(stub, first.sandbox.name, origin, "feat/one")
    (warm,) = await one_warm(mesh)
    # Another organization asking for a repository of the same name, and another repository of
    # the same organization: both get sandboxes of their own; the warm one stays.
    other_org = "organizations/mallory"
    stolen = await create(stub, "m1", org=other_org, repository=f"{other_org}/repositories/demo")
    assert not stolen.sandbox.from_warm_pool
    assert stolen.sandbox.provider_sandbox_id != warm.provider_sandbox_id
    other_repo = await create(stub, "t2", repository=f"{ORG}/repositories/other")
    assert not other_repo.sandbox.from_warm_pool
    assert [w.key for w in await warm_rows(mesh)] == [warm.key]
    # The organization's egress policy changed since the warm one was made: it is discarded, never
    # handed out, and the pool is refilled under the new policy.
    offline = await create(stub, "t3", egress="none")
    assert not offline.sandbox.from_warm_pool
    gone = await pool_of(mesh).records.records.get_sandbox(warm.key)
    assert gone is not None and gone.pool == "discarded" and gone.state.value == "destroyed"
    (fresh,) = await one_warm(mesh)
    assert fresh.egress == "none"
    claimed = await create(stub, "t5", egress="none")
    assert claimed.sandbox.from_warm_pool
    # And back: the refilled offline one is not handed to a task under the default policy.
    (offline_warm,) = await one_warm(mesh)
    assert not (await create(stub, "t4")).sandbox.from_warm_pool
    gone = await pool_of(mesh).records.records.get_sandbox(offline_warm.key)
    assert gone is not None and gone.pool == "discarded"
    # Model API keys are never baked into a warm agent: a claimant giving keys gets its agent
    # started again with them (after the claim), not the warm one.
    await prepare(stub, claimed.sandbox.name, origin, "feat/five")
    keyed = await stub.StartAgent(
        pb.StartAgentRequest(
            parent=claimed.sandbox.name, agent="agents/fake", environment={"ANTHROPIC_API_KEY": "sk-org"}
        )
    )
    assert keyed.agent_connection.start_time.ToDatetime() >= claimed.sandbox.update_time.ToDatetime()


async def test_no_refill_starts_within_a_second_of_a_claim_even_with_frequent_refill_passes(
    mesh: Mesh, stub: pb_grpc.SandboxServiceAsyncStub, tmp_path: Path
) -> None:
    """The claiming task's switch and session run before the refill's clone and agent start
    compete with them for the CPU: the periodic pass (every 0.2 s here) waits out the hold too."""
    origin = make_origin(tmp_path)
    first = await create(stub, "t1")
    await prepare(stub, first.sandbox.name, origin, "feat/one")
    await one_warm(mesh)
    claimed = await create(stub, "t2")
    assert claimed.sandbox.from_warm_pool
    claimed_at = claimed.sandbox.update_time.ToDatetime(tzinfo=dt.UTC)

    async def refill_started() -> Any:
        pool = pool_of(mesh)
        (row,) = await pool.records.unclaimed(pool.replica, ORG_ID, REPO)
        return row

    refill = await assert_eventually(refill_started, timeout=30)
    held = (refill.create_time - claimed_at).total_seconds()
    assert held >= REFILL_AFTER_CLAIM_SECONDS - 0.05, held


async def test_drain_stops_refilling_and_cancels_preparations_in_flight(
    settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    origin = make_origin(tmp_path)
    settings = pool_settings(settings_factory, create_delay_seconds=30.0)
    async with running(settings, ["sandbox"]) as mesh:
        pool = pool_of(mesh)
        await pool.records.register(PoolTarget(ORG_ID, REPO, pool.replica, str(origin), "main", "", "fake"))
        pool.wake.set()
        (preparing,) = await assert_eventually(lambda: one_warm(mesh, state=PREPARING), timeout=10)
        assert pool.in_flight() == 1
        await mesh.hosts["sandbox"].begin_drain()
        assert pool.draining and pool.in_flight() == 0
        await asyncio.sleep(0.6)  # three refill intervals: nothing new is started
        rows = await pool.records.unclaimed(pool.replica)
        assert [(r.key, r.pool) for r in rows] == [(preparing.key, PREPARING)]  # left for the next start
        assert await pool.claim(SandboxKey(ORG_ID, "t9"), f"{ORG}/tasks/t9", REPO, "") is None
    # The next start reclaims (destroys) what the drained process left, then refills.
    async with running(settings, ["sandbox"]) as mesh:
        pool = pool_of(mesh)

        async def reclaimed() -> None:
            row = await pool.records.records.get_sandbox(preparing.key)
            assert row is not None and row.pool == "discarded"

        await assert_eventually(reclaimed, timeout=10)


@pytest.mark.integration
async def test_two_claimers_racing_on_postgres_take_each_warm_sandbox_once(
    settings_factory: Callable[..., Settings], pg_url: str, tmp_path: Path
) -> None:
    """Two replicas' connections claim at once: every warm row goes to exactly one task, and one task
    racing itself gets exactly one row."""
    settings = settings_factory(database_url=pg_url, sandbox={"warm_pool_size": 0})
    async with running(settings, ["sandbox"]) as mesh:
        pool = pool_of(mesh)
        db = mesh.hosts["sandbox"].db
        assert db is not None and not db.is_sqlite
        other = Database(db.url, schema=db.schema)
        try:
            from services.sandbox.store.warm_pool import WarmPoolRecords

            rival = WarmPoolRecords(other, pool.records.records)
            for round_ in range(10):
                warm = await _warm_row(pool, f"w{round_}")
                a, b = SandboxKey(ORG_ID, f"a{round_}"), SandboxKey(ORG_ID, f"b{round_}")
                won = await asyncio.gather(
                    pool.records.claim(
                        warm, a, task=f"{ORG}/tasks/{a.sandbox_id}", repository=REPO, egress="", replica=""
                    ),
                    rival.claim(
                        warm, b, task=f"{ORG}/tasks/{b.sandbox_id}", repository=REPO, egress="", replica=""
                    ),
                )
                assert sum(c is not None for c in won) == 1, won
                # One task, two warm rows, two claimers: one row is the task's, the other stays warm.
                x, y = await _warm_row(pool, f"x{round_}"), await _warm_row(pool, f"y{round_}")
                task = SandboxKey(ORG_ID, f"same{round_}")
                both = await asyncio.gather(
                    pool.records.claim(
                        x, task, task=f"{ORG}/tasks/{task.sandbox_id}", repository=REPO, egress="", replica=""
                    ),
                    rival.claim(
                        y, task, task=f"{ORG}/tasks/{task.sandbox_id}", repository=REPO, egress="", replica=""
                    ),
                )
                assert sum(c is not None for c in both) == 1, both
                left = {r.key for r in await pool.records.unclaimed("", ORG_ID, REPO)}
                assert len(left & {x, y}) == 1
                for key in left:
                    await pool.records.mark(key, expected=WARM, pool="discarded")
        finally:
            await other.dispose()


async def _warm_row(pool: WarmPool, sandbox_id: str) -> SandboxKey:
    """A warm row (no provider sandbox behind it: the claim is a row operation)."""
    from services.platform.clock import now
    from services.sandbox.domain.models import Sandbox, SandboxState

    key = SandboxKey(ORG_ID, f"warm-{sandbox_id}")
    t = now()
    await pool.records.records.insert_sandbox(
        Sandbox(
            key=key,
            task="",
            repository=REPO,
            provider="local",
            provider_sandbox_id="",
            state=SandboxState.RUNNING,
            checkout=None,
            error_message="",
            create_time=t,
            update_time=t,
            destroy_time=None,
            version=1,
            pool=WARM,
        )
    )
    return key
