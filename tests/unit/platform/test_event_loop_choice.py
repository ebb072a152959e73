"""Which event loop a process runs on (`services.platform.process.loop_runner`): uvloop where it is
fork-safe, except in processes that host the sandbox service, whose many short children (git,
bubblewrap) start ~6x faster with asyncio's vfork than with uvloop's fork."""

from __future__ import annotations

import asyncio

import pytest
import uvloop

from services.platform.process import loop_runner


def test_services_run_on_uvloop_when_grpc_fork_support_is_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", "false")
    assert loop_runner(spawns_processes=False) is uvloop.run


def test_a_process_hosting_the_sandbox_service_keeps_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GRPC_ENABLE_FORK_SUPPORT", "false")
    assert loop_runner(spawns_processes=True) is asyncio.run


def test_asyncio_while_grpc_fork_support_is_on(monkeypatch: pytest.MonkeyPatch) -> None:
    # uvloop's fork() would run gRPC's fork handlers in every child (see `_uvloop_is_safe`).
    monkeypatch.delenv("GRPC_ENABLE_FORK_SUPPORT", raising=False)
    assert loop_runner(spawns_processes=False) is asyncio.run
