"""gRPC users: `MeshGrpcUser` runs the unary mix straight against the services; `GrpcWatchUser`
holds long-lived Watch streams and reports each as a `grpc-watch` request whose response time is the
time to the first event and whose response length is the number of events received."""

from __future__ import annotations

import time
import uuid
from collections import deque
from typing import Any

import grpc
from foundry.organization.v1 import organization_service_pb2 as org_pb
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.task.v1 import session_pb2, task_pb2
from foundry.task.v1 import task_service_pb2 as task_pb
from foundry.task.v1 import task_service_pb2_grpc as task_grpc
from locust import User, between, task

from load.config import stream_seconds, wait_seconds
from load.users.grpc_support import SignedCaller, open_channel
from load.users.shared import push_bounded, targets, world

KEEP_TASKS = 2  # live tasks per user: older ones are archived so sandboxes do not pile up
KEEP_SESSIONS = 3


class MeshGrpcUser(User):
    """The browser's request mix, made directly over gRPC as a signed-in user."""

    weight = 3
    wait_time = between(0.05, wait_seconds())

    def on_start(self) -> None:
        self.world = world()
        t = targets()
        self.org_channel = open_channel(t.organization, self.environment, self.world.caller, t.secret)
        self.task_channel = open_channel(t.task, self.environment, self.world.caller, t.secret)
        self.org_api = org_grpc.OrganizationServiceStub(self.org_channel)
        self.task_api = task_grpc.TaskServiceStub(self.task_channel)
        self.my_tasks: deque[str] = deque()
        self.my_sessions: deque[str] = deque()
        self.sent = 0

    def on_stop(self) -> None:
        self.org_channel.close()
        self.task_channel.close()

    def _call(self, rpc: Any, request: Any) -> Any:
        """Make a unary call; failures are already reported by the interceptor, so swallow them."""
        try:
            return rpc(request, timeout=30)
        except grpc.RpcError:
            return None

    @task(5)
    def organization_summary(self) -> None:
        self._call(
            self.org_api.GetOrganizationSummary,
            org_pb.GetOrganizationSummaryRequest(name=f"{self.world.organization}/summary"),
        )

    @task(8)
    def get_task(self) -> None:
        name = self.my_tasks[-1] if self.my_tasks and self.sent % 2 else self.world.task
        self._call(self.task_api.GetTask, task_pb.GetTaskRequest(name=name))

    @task(1)
    def create_task(self) -> None:
        request = task_pb.CreateTaskRequest(
            parent=self.world.organization,
            task=task_pb2.Task(repository=self.world.repository, prompt="load test: say hello"),
            request_id=str(uuid.uuid4()),
        )
        created = self._call(self.task_api.CreateTask, request)
        if created is not None:
            old = push_bounded(self.my_tasks, created.task.name, KEEP_TASKS)
            if old:
                self._call(
                    self.task_api.ArchiveTask, task_pb.ArchiveTaskRequest(name=old, reason="load test")
                )

    @task(1)
    def create_session(self) -> None:
        request = task_pb.CreateSessionRequest(
            parent=self.world.task,
            session=session_pb2.Session(display_name="load"),
            request_id=str(uuid.uuid4()),
        )
        created = self._call(self.task_api.CreateSession, request)
        if created is not None:
            old = push_bounded(self.my_sessions, created.session.name, KEEP_SESSIONS)
            if old:
                self._call(self.task_api.CloseSession, task_pb.CloseSessionRequest(name=old))

    @task(2)
    def send_message(self) -> None:
        self.sent += 1
        request = task_pb.SendMessageRequest(
            name=self.world.session, text=f"load test message {self.sent}", request_id=str(uuid.uuid4())
        )
        self._call(self.task_api.SendMessage, request)


class GrpcWatchUser(User):
    """Holds WatchTask / WatchOrganizationSummary streams open for FOUNDRY_LOAD_STREAM_SECONDS each."""

    weight = 1
    wait_time = between(0.1, 0.5)

    def on_start(self) -> None:
        self.world = world()
        t = targets()
        self.signer = SignedCaller(self.world.caller, t.secret)
        # Plain channels: streams are reported by `_hold`, not by the unary interceptor.
        self.org_channel = grpc.insecure_channel(t.organization)
        self.task_channel = grpc.insecure_channel(t.task)
        self.org_api = org_grpc.OrganizationServiceStub(self.org_channel)
        self.task_api = task_grpc.TaskServiceStub(self.task_channel)

    def on_stop(self) -> None:
        self.org_channel.close()
        self.task_channel.close()

    @task(2)
    def watch_task(self) -> None:
        self._hold(
            "TaskService/WatchTask", self.task_api.WatchTask, task_pb.WatchTaskRequest(name=self.world.task)
        )

    @task(1)
    def watch_organization_summary(self) -> None:
        request = org_pb.WatchOrganizationSummaryRequest(name=f"{self.world.organization}/summary")
        self._hold(
            "OrganizationService/WatchOrganizationSummary", self.org_api.WatchOrganizationSummary, request
        )

    def _hold(self, name: str, rpc: Any, request: Any) -> None:
        """Read one stream until its deadline; report time to first event and events received."""
        hold = stream_seconds()
        began = time.perf_counter()
        first: float | None = None
        events = 0
        exception: BaseException | None = None
        call = rpc(request, timeout=hold, metadata=self.signer.metadata())
        try:
            for _ in call:  # iterate; never .result() on a stream under gevent
                events += 1
                if first is None:
                    first = time.perf_counter() - began
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # the deadline is how a hold ends
                exception = exc
        finally:
            call.cancel()
        if first is None and exception is None:
            exception = RuntimeError(f"no event within {hold:g} s")
        self.environment.events.request.fire(
            request_type="grpc-watch",
            name=name,
            response_time=(first if first is not None else time.perf_counter() - began) * 1000,
            response_length=events,
            response=None,
            context=None,
            exception=exception,
        )
