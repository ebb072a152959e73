"""Fixtures of the sandbox service tests: a running sandbox service (SQLite, in-process broker, real
gRPC on a free port, real git, the real fake agent) and a git origin to clone."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from foundry.sandbox.v1 import sandbox_pb2
from foundry.sandbox.v1 import sandbox_service_pb2 as pb
from foundry.sandbox.v1 import sandbox_service_pb2_grpc as pb_grpc

from services.platform.identity import Caller, sign
from services.platform.settings import Settings
from tests.helpers.mesh import Mesh, running
from tests.unit.sandbox.gitrepo import make_origin

TASK_SERVICE = Caller.service("task")
ORG = "organizations/acme"


@pytest.fixture
def origin(tmp_path: Path) -> Path:
    return make_origin(tmp_path)


@pytest.fixture
async def mesh(settings_factory: Callable[..., Settings]) -> AsyncIterator[Mesh]:
    async with running(settings_factory(), ["sandbox"]) as m:
        yield m


def _signed(settings: Settings, caller: Caller, details: Any, timeout: float | None) -> Any:
    metadata = sign(caller, settings.internal_auth_secret.get_secret_value())
    return grpc.aio.ClientCallDetails(
        method=details.method,
        timeout=details.timeout or timeout,
        metadata=grpc.aio.Metadata(*metadata),
        credentials=details.credentials,
        wait_for_ready=details.wait_for_ready,
    )


class _SignStreams(grpc.aio.UnaryStreamClientInterceptor):
    """Signs server-streaming calls. (grpc.aio registers an interceptor implementing several kinds,
    like the platform's `_Propagate`, for unary-unary calls only, so streams need their own.)"""

    def __init__(self, settings: Settings, caller: Caller) -> None:
        self._settings, self._caller = settings, caller

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_signed(self._settings, self._caller, details, None), request)


class _SignUnary(grpc.aio.UnaryUnaryClientInterceptor):
    """Signs unary calls, with a 30 s default deadline."""

    def __init__(self, settings: Settings, caller: Caller) -> None:
        self._settings, self._caller = settings, caller

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_signed(self._settings, self._caller, details, 30.0), request)


@contextlib.asynccontextmanager
async def sandbox_stub(
    mesh: Mesh, caller: Caller = TASK_SERVICE
) -> AsyncIterator[pb_grpc.SandboxServiceAsyncStub]:
    """A stub of the mesh's sandbox service speaking as `caller` on unary and streaming calls."""
    channel = grpc.aio.insecure_channel(
        f"127.0.0.1:{mesh.hosts['sandbox'].port}",
        interceptors=[_SignStreams(mesh.settings, caller), _SignUnary(mesh.settings, caller)],
    )
    try:
        yield pb_grpc.SandboxServiceStub(channel)
    finally:
        await channel.close()


@pytest.fixture
async def stub(mesh: Mesh) -> AsyncIterator[pb_grpc.SandboxServiceAsyncStub]:
    """The sandbox service, called as the task service would (a signed service identity)."""
    async with sandbox_stub(mesh) as s:
        yield s


async def create_sandbox(
    stub: pb_grpc.SandboxServiceAsyncStub, sandbox_id: str = "t1"
) -> sandbox_pb2.Sandbox:
    response = await stub.CreateSandbox(
        pb.CreateSandboxRequest(
            parent=ORG,
            sandbox_id=sandbox_id,
            sandbox=sandbox_pb2.Sandbox(
                task=f"{ORG}/tasks/{sandbox_id}", repository=f"{ORG}/repositories/demo"
            ),
        )
    )
    return response.sandbox


async def prepared_sandbox(
    stub: pb_grpc.SandboxServiceAsyncStub,
    origin: Path,
    *,
    sandbox_id: str = "t1",
    branch: str = "feat/new-work",
) -> sandbox_pb2.Sandbox:
    sandbox = await create_sandbox(stub, sandbox_id)
    response = await stub.PrepareRepository(
        pb.PrepareRepositoryRequest(
            name=sandbox.name,
            clone_url=str(origin),
            branch=branch,
            git_user_name="Foundry",
            git_user_email="foundry@example.com",
        )
    )
    return response.sandbox
