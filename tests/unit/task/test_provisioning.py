"""The durable provisioning workflow against the real sandbox service, observed through WatchTask,
GetTask and the sandbox service's own records."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from foundry.sandbox.v1 import agent_session_pb2, sandbox_pb2, session_event_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.task.v1 import events_pb2, session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as pb
from prometheus_client import REGISTRY

from services.platform.errors import Unavailable
from services.platform.messaging.broker import queue_name
from services.platform.messaging.memory import MemoryBroker
from services.platform.settings import Settings
from services.task.app import build_deps
from services.task.store import queries
from services.task.usecases import provisioning
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import TaskWorld, task_world

STAGES = task_pb2.ProvisioningStage
TURN_COMPLETED = session_event_pb2.SESSION_EVENT_KIND_TURN_COMPLETED


async def _ready(world: TaskWorld, name: str) -> task_pb2.Task:
    """The task once settled: provisioned, the turn of its prompt ended, and the git state the
    sandbox computed after that turn cached on it (the last change that turn causes)."""

    async def ready() -> task_pb2.Task:
        got = await world.get(name)
        assert got.provisioning.stage == STAGES.Value("PROVISIONING_STAGE_READY"), got.status_message
        assert got.status == task_pb2.TASK_STATUS_IDLE, got.status_message
        first = (await world.stub.GetSession(pb.GetSessionRequest(name=got.sessions[0].name))).session
        listed = await world.sandbox_stub().ListSessionEvents(
            sb_pb2.ListSessionEventsRequest(parent=first.sandbox_session)
        )
        ended = [e.create_time.ToDatetime() for e in listed.session_events if e.kind == TURN_COMPLETED]
        assert ended, "the prompt's turn has not ended"
        assert got.git_state.compute_time.ToDatetime() >= ended[-1], "no git state after the turn yet"
        return got

    return await assert_eventually(ready, timeout=30)


async def test_provisioning_reaches_ready_through_every_stage(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        provision = queue_name(world.mesh.settings.name_prefix, "task", "provision")
        handled = {"service": "task", "queue": provision, "outcome": "ack"}
        before = REGISTRY.get_sample_value("foundry_messages_handled_total", handled) or 0.0
        task = await world.create("Add a hello file")
        task_id = task.name.rsplit("/", 1)[-1]
        watch = world.watch(task.name)
        try:

            def ready() -> None:
                assert watch.task.status == task_pb2.TASK_STATUS_IDLE, watch.task.status_message
                assert watch.task.provisioning.stage == STAGES.Value("PROVISIONING_STAGE_READY")

            await assert_eventually(ready, timeout=30)
            final = watch.task
            # IDLE, not READY: the task's prompt was the session's first turn, and it has ended.
            assert final.sessions[0].status == session_pb2.SESSION_STATUS_IDLE
            assert final.sandbox.name == f"{world.organization}/sandboxes/{task_id}"
            # Stages only move forward, in order (a late watcher may have missed early ones).
            seen = [t.provisioning.stage for t in watch.history]
            assert seen == sorted(seen)
        finally:
            await watch.close()
        # One delivery ran every step: each completion claimed the next (no queue hop per step).
        after = REGISTRY.get_sample_value("foundry_messages_handled_total", handled) or 0.0
        assert after - before == 1
        # The sandbox service holds exactly one running sandbox, checked out on the task's branch
        # where the task says, and one agent session: the task's first session.
        (box,) = await world.sandboxes()
        running = sandbox_pb2.SANDBOX_STATE_RUNNING
        assert (box.name, box.task, box.state) == (final.sandbox.name, task.name, running)
        assert box.checkout.branch == task.branch and final.sandbox.cwd == box.checkout.path
        session_id = final.sessions[0].name.rsplit("/", 1)[-1]
        assert await world.agent_session_rows() == [session_id]
        first = (await world.stub.GetSession(pb.GetSessionRequest(name=final.sessions[0].name))).session
        agent = (
            await world.sandbox_stub().GetAgentSession(
                sb_pb2.GetAgentSessionRequest(name=first.sandbox_session)
            )
        ).agent_session
        assert agent.name == f"{box.name}/sessions/{session_id}"
        assert agent.state == agent_session_pb2.AGENT_SESSION_STATE_IDLE


async def test_redelivered_provision_message_has_no_second_effect(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(), tmp_path) as world:
        task = await world.create("Add a hello file")
        ready = await _ready(world, task.name)
        (box,) = await world.sandboxes()
        sessions = await world.agent_session_rows()
        queue = queue_name(world.mesh.settings.name_prefix, "task", "provision")
        for i in range(3):
            await world.mesh.broker.publish(
                exchange="",
                routing_key=queue,
                message_id=f"dup-{i}",
                body=events_pb2.ProvisionTask(name=task.name).SerializeToString(),
            )
        host = world.mesh.hosts["task"]
        assert host.runtime is not None

        def drained() -> None:
            assert host.runtime is not None and host.runtime.worker.active == 0

        await assert_eventually(drained)
        # Neither the task (a step run would rewrite its status and update time) nor the sandbox
        # service's records changed.
        assert await world.get(task.name) == ready
        assert await world.sandboxes() == [box]
        assert await world.agent_session_rows() == sessions


async def test_timed_out_step_sets_error_with_a_readable_message(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    settings = fast_settings(sandbox={"step_timeout_seconds": 0.3, "create_delay_seconds": 5.0})
    async with task_world(settings, tmp_path) as world:
        task = await world.create("Add a hello file")

        async def errored() -> task_pb2.Task:
            got = await world.get(task.name)
            assert got.status == task_pb2.TASK_STATUS_ERROR
            return got

        failed = await assert_eventually(errored, timeout=10)
        assert failed.status_message == "create sandbox timed out after 0.3 s"
        assert failed.provisioning.failed_stage == STAGES.Value("PROVISIONING_STAGE_SANDBOX_ALLOCATED")
        assert failed.sessions[0].status == session_pb2.SESSION_STATUS_ERROR


async def test_send_message_on_a_pending_session_fails_precondition(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    async with task_world(fast_settings(sandbox={"create_delay_seconds": 30.0}), tmp_path) as world:
        task = await world.create("Add a hello file")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await world.stub.SendMessage(pb.SendMessageRequest(name=task.sessions[0].name, text="write a: b"))
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "SESSION_NOT_READY" in str(err.value.trailing_metadata()) or "not ready" in (
            err.value.details() or ""
        )
        assert await world.agent_session_rows() == []


async def test_the_organization_egress_policy_reaches_its_new_sandboxes(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    """An admin turns the organization's sandboxes offline; a task created after that gets a sandbox
    whose processes have no proxy and no network (the bubblewrap provider records and enforces it)."""
    from foundry.organization.v1 import organization_pb2
    from foundry.organization.v1 import organization_service_pb2 as org_pb2
    from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
    from foundry.sandbox.v1 import process_pb2
    from google.protobuf import field_mask_pb2

    async with task_world(fast_settings(), tmp_path) as world:
        orgs = org_grpc.OrganizationServiceStub(world.mesh.channel("organization", world.alice))
        updated = await orgs.UpdateOrganization(
            org_pb2.UpdateOrganizationRequest(
                organization=organization_pb2.Organization(
                    name=world.organization, sandbox_egress=organization_pb2.SANDBOX_EGRESS_NONE
                ),
                update_mask=field_mask_pb2.FieldMask(paths=["sandbox_egress"]),
            )
        )
        assert updated.organization.sandbox_egress == organization_pb2.SANDBOX_EGRESS_NONE
        task = await _ready(world, (await world.create("offline work")).name)
        from services.sandbox.providers.bubblewrap import available

        if (why := available()) is not None:
            pytest.skip(f"bubblewrap unavailable: {why}")
        process = (
            await world.sandbox_stub().CreateProcess(
                sb_pb2.CreateProcessRequest(
                    parent=task.sandbox.name,
                    process=process_pb2.Process(command="/bin/sh", args=["-c", "env | grep -ci proxy"]),
                )
            )
        ).process

        async def output() -> str:
            logs = await world.sandbox_stub().GetProcessLogs(sb_pb2.GetProcessLogsRequest(name=process.name))
            assert logs.complete
            return b"".join(c.data for c in logs.chunks).decode()

        assert (await assert_eventually(output, timeout=15)).strip() == "0"
        # The bubblewrap provider keeps the policy beside the checkout, out of the sandbox's reach.
        assert (Path(task.sandbox.cwd).parent / "egress").read_text() == "none"


async def test_a_chained_step_that_fails_transiently_gets_a_work_item_of_its_own(
    fast_settings: Callable[..., Settings], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The delivery's last attempt ran the first step; the chained second step hits a transient
    error: it is not recorded as ERROR (its retries were never spent), the lease is given back and
    a fresh work item carries the step on to READY."""
    async with task_world(fast_settings(), tmp_path) as world:
        host = world.mesh.hosts["task"]
        assert host.runtime is not None
        await host.runtime.worker.stop_consuming()  # the steps run here, one delivery at a time
        deps = build_deps(host.runtime)
        real = deps.sandbox.prepare_repository
        failures: list[str] = []

        async def blip(request: sb_pb2.PrepareRepositoryRequest, *, deadline: float) -> object:
            if not failures:
                failures.append(request.name)
                raise Unavailable("the sandbox service is restarting")
            return await real(request, deadline=deadline)

        monkeypatch.setattr(deps.sandbox, "prepare_repository", blip)
        task = await world.create("Add a hello file")
        await provisioning.run_next_step(deps, task.name, last_attempt=True)
        assert failures, "the chained step did not run"
        async with deps.db.snapshot() as s:
            row = await queries.get_task(s, task_id=task.name.rsplit("/", 1)[-1])
        assert row is not None
        assert (row.stage, row.status, row.lease_owner) == (
            "sandbox_allocated",
            "init_prepare_repository",
            None,
        )
        broker = world.mesh.broker
        assert isinstance(broker, MemoryBroker)
        queue = queue_name(world.mesh.settings.name_prefix, "task", "provision")

        def handed_off() -> None:  # CreateTask's work item (run by hand above) and the fresh one
            assert broker.ready_count(queue) == 2, broker.ready_count(queue)

        await assert_eventually(handed_off)
        await provisioning.run_next_step(deps, task.name, last_attempt=True)  # the fresh work item's run
        got = await world.get(task.name)
        assert got.provisioning.stage == STAGES.Value("PROVISIONING_STAGE_READY"), got.status_message
