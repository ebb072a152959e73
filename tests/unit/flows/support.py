"""Shared wiring of the cross-service flow tests (embedded default and PostgreSQL + RabbitMQ).

`Follower` reads one Watch RPC into a `WatchClient` in the background and lets a test await a
condition on the streamed state: the condition is checked after every received event, so the test
never polls a unary read, and `wait` returns the moment (time.perf_counter) the event that made it
true arrived — which is how the latency tests measure mutation → stream delay.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import statistics
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import grpc
from foundry.github_data.v1 import github_data_service_pb2_grpc as gd_grpc
from foundry.organization.v1 import organization_service_pb2 as org_pb2
from foundry.organization.v1 import organization_service_pb2_grpc as org_grpc
from foundry.sandbox.v1 import sandbox_service_pb2 as sb_pb2
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as sb_grpc
from foundry.task.v1 import task_pb2
from foundry.task.v1 import task_service_pb2 as task_svc_pb2
from foundry.task.v1 import task_service_pb2_grpc as task_grpc
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from services.platform.identity import Caller
from services.platform.watch.testing import WatchClient
from tests.helpers.mesh import ALICE, Mesh

M = TypeVar("M", bound=Message)
Check = Callable[[WatchClient], object]
# github_data's ConnectOrganization and RecordWebhookDelivery are for service callers only.
ORGANIZATION_SERVICE = Caller.service("organization")


def fast_messaging() -> dict[str, Any]:
    """Retry quickly so a transient failure costs a test tenths of a second, not minutes."""
    return {"max_attempts": 3, "retry_delay_seconds": 0.1, "retry_delay_max_seconds": 0.5}


def git_repo(root: Path, name: str, branch: str = "main") -> Path:
    """A real git repository `root/name` with one commit on `branch`."""
    path = root / name
    path.mkdir(parents=True)

    def git(*args: str) -> None:
        subprocess.run(["git", *args], cwd=path, check=True, capture_output=True)

    git("init", "-q", "-b", branch)
    (path / "README.md").write_text(f"# {name}\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "init")
    return path


class Follower:
    """One Watch RPC followed into `client`, reconnectable (`stop` then `start` resumes by token).

    Args:
        open_stream: opens the RPC with a resume token ("" bootstraps) and returns the call.
    """

    def __init__(self, open_stream: Callable[[str], Any], client: WatchClient | None = None) -> None:
        self.open_stream = open_stream
        self.client = client or WatchClient()
        self.error: BaseException | None = None
        self.received = 0
        self._call: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._waiters: list[tuple[Check, asyncio.Future[float]]] = []

    def start(self) -> Follower:
        self.client.begin()
        self._call = self.open_stream(self.client.token)
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        try:
            async for response in self._call:
                arrived = time.perf_counter()
                self.received += 1
                self.client.apply(response.event)
                for check, future in list(self._waiters):
                    if not future.done() and self._holds(check):
                        future.set_result(arrived)
        except asyncio.CancelledError:
            raise
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                self._fail(exc)
        except BaseException as exc:  # a contract violation (AssertionError) fails every waiter
            self._fail(exc)

    def _fail(self, exc: BaseException) -> None:
        self.error = exc
        for _, future in self._waiters:
            if not future.done():
                future.set_exception(exc)

    def _holds(self, check: Check) -> bool:
        try:
            return bool(check(self.client))
        except (AssertionError, KeyError, IndexError, ValueError):  # "not yet"
            return False

    async def wait(self, check: Check, *, timeout: float = 30.0, what: str = "") -> float:
        """Wait until `check(client)` is truthy (AssertionError, KeyError, IndexError or ValueError
        count as false: the item is not there yet).

        Returns the perf_counter time at which the event that made it true was received (now, if it
        already held). Raises AssertionError after `timeout` seconds, or the stream's error.
        """
        if self.error is not None:
            raise self.error
        if self._holds(check):
            return time.perf_counter()
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        entry = (check, future)
        self._waiters.append(entry)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            raise AssertionError(
                f"timed out after {timeout}s waiting for {what or check}; "
                f"{self.received} events, items: {sorted(self.client.state)}"
            ) from None
        finally:
            self._waiters.remove(entry)

    async def stop(self) -> None:
        """Disconnect (the client keeps its state and token)."""
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, grpc.RpcError):
                await self._reader
        self._call = self._reader = None

    def resources(self, cls: type[M]) -> dict[str, M]:
        """The streamed items of one message type (a scope may mix several), by resource name."""
        return resources_of(self.client, cls)


def resources_of(client: WatchClient, cls: type[M]) -> dict[str, M]:
    decoded: dict[str, M] = {}
    for name, packed in client.state.items():
        # types-protobuf: a message's DESCRIPTOR may be the upb Descriptor, Any.Is names only the other.
        if packed.Is(cast(Descriptor, cls.DESCRIPTOR)):
            message = cls()
            packed.Unpack(message)
            decoded[name] = message
    return decoded


@dataclass
class Stubs:
    """Real gRPC stubs into a running mesh: users speak as ALICE, github_data as a service."""

    mesh: Mesh

    def org(self, caller: Caller = ALICE) -> org_grpc.OrganizationServiceAsyncStub:
        return org_grpc.OrganizationServiceStub(self.mesh.channel("organization", caller))

    def task(self, caller: Caller = ALICE) -> task_grpc.TaskServiceAsyncStub:
        return task_grpc.TaskServiceStub(self.mesh.channel("task", caller))

    def sandbox(self, caller: Caller = ALICE) -> sb_grpc.SandboxServiceAsyncStub:
        return sb_grpc.SandboxServiceStub(self.mesh.channel("sandbox", caller))

    def github_data(self, caller: Caller = ORGANIZATION_SERVICE) -> gd_grpc.GithubDataServiceAsyncStub:
        return gd_grpc.GithubDataServiceStub(self.mesh.channel("github_data", caller))

    def summary(self, org: str, client: WatchClient | None = None) -> Follower:
        """A follower of WatchOrganizationSummary of `org` (an organization id), not yet started."""
        stub = self.org()
        return Follower(
            lambda token: stub.WatchOrganizationSummary(
                org_pb2.WatchOrganizationSummaryRequest(
                    name=f"organizations/{org}/summary", resume_token=token
                )
            ),
            client,
        )

    def task_watch(self, name: str) -> Follower:
        """A follower of WatchTask of the task `name`, not yet started."""
        stub = self.task()
        return Follower(
            lambda token: stub.WatchTask(task_svc_pb2.WatchTaskRequest(name=name, resume_token=token))
        )

    def session_watch(self, name: str) -> Follower:
        """A follower of TaskService.WatchSession of the session `name`, not yet started."""
        stub = self.task()
        return Follower(
            lambda token: stub.WatchSession(task_svc_pb2.WatchSessionRequest(name=name, resume_token=token))
        )

    def session_events(self, agent_session: str) -> Follower:
        """A follower of SandboxService.WatchSessionEvents (the transcript), not yet started."""
        stub = self.sandbox()
        return Follower(
            lambda token: stub.WatchSessionEvents(
                sb_pb2.WatchSessionEventsRequest(parent=agent_session, resume_token=token)
            )
        )


@contextlib.asynccontextmanager
async def following(*followers: Follower) -> AsyncIterator[None]:
    """Start the followers; stop them however the block ends."""
    for f in followers:
        f.start()
    try:
        yield
    finally:
        for f in followers:
            await f.stop()


def the_task(follower: Follower, name: str) -> task_pb2.Task:
    """The Task item of a WatchTask follower (KeyError until it was streamed)."""
    return follower.resources(task_pb2.Task)[name]


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) by the nearest-rank method."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def report_latency(label: str, seconds: list[float]) -> tuple[float, float]:
    """Print n, p50, p99 and max in milliseconds (`pytest -s` shows it); returns (p50, p99) in s."""
    p50, p99 = percentile(seconds, 0.5), percentile(seconds, 0.99)
    print(
        f"\n[latency] {label}: n={len(seconds)} p50={p50 * 1000:.1f} ms p99={p99 * 1000:.1f} ms "
        f"max={max(seconds) * 1000:.1f} ms mean={statistics.fmean(seconds) * 1000:.1f} ms"
    )
    return p50, p99
