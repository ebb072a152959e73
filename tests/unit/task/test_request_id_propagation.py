"""One user action can be followed across services: the caller's `x-request-id` reaches the peers the
task service calls over gRPC and the queue handlers its outbox feeds (AMQP headers), in every log line."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from pathlib import Path
from typing import Any

import structlog
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as pb

from services.platform.settings import Settings
from tests.helpers.eventually import assert_eventually
from tests.unit.task.conftest import task_world

RID = "req-follow-me-1"


async def test_request_id_follows_create_task_through_grpc_peers_and_queue_handlers(
    fast_settings: Callable[..., Settings], tmp_path: Path
) -> None:
    with structlog.testing.capture_logs(processors=[structlog.contextvars.merge_contextvars]) as logs:
        async with task_world(fast_settings(), tmp_path) as world:
            task = task_pb2.Task(repository=world.repository, prompt="add a thing")
            request = pb.CreateTaskRequest(parent=world.organization, task=task)
            await world.stub.CreateTask(request, metadata=[("x-request-id", RID)])

            def followed() -> None:
                mine: list[MutableMapping[str, Any]] = [e for e in logs if e.get("request_id") == RID]
                served = {e["service"] for e in mine if e["event"] == "rpc"}
                assert {"task", "organization", "sandbox"} <= served, served  # gRPC hops
                handled = {e["queue"].rsplit(".", 1)[-1] for e in mine if e["event"] == "message_handled"}
                assert "summary_events" in handled, handled  # outbox event -> another service's queue

            await assert_eventually(followed, timeout=30)
