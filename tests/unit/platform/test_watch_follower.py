"""`follow`, the one Watch client loop (foundryctl, the benchmarks), against the real watch hub on
SQLite: it resumes across rotations with no snapshot and no gap, and stops on an END it cannot
resume."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable

import pytest
from foundry.common.v1 import watch_pb2
from foundry.task.v1 import task_service_pb2 as pb
from google.protobuf import struct_pb2
from google.protobuf.json_format import MessageToDict

from services.platform.db import Database
from services.platform.errors import PermissionDenied
from services.platform.watch import TokenCodec
from services.platform.watch.follower import WatchStopped, follow
from services.platform.watch.testing import WatchClient
from tests.unit.platform.test_watch_hub import SCOPE, ItemStore, db, running_hub  # noqa: F401

KIND = watch_pb2.WatchEventKind


def _response(event: watch_pb2.WatchEvent) -> pb.WatchTaskResponse:
    return pb.WatchTaskResponse(event=event)  # what a Watch RPC streams


async def test_follow_resumes_across_rotations_without_snapshot_or_gap(db: Database) -> None:  # noqa: F811
    store = ItemStore(db)
    await store.put("items/a", 1)
    opened: list[str] = []
    async with running_hub(db, None, max_stream_seconds=0.25) as hub:

        def open_stream(token: str) -> AsyncIterable[pb.WatchTaskResponse]:
            opened.append(token)
            return hub.stream(SCOPE, resume_token=token, snapshot=store.snapshot, wrap=_response)

        client, versions = WatchClient(), list[int]()
        codec = TokenCodec(SCOPE)

        async def writer() -> None:
            for value in range(2, 12):
                await store.put(f"items/{value % 3}", value)
                await asyncio.sleep(0.07)

        writes = asyncio.create_task(writer())
        async for event in follow(open_stream):
            client.apply(event)  # AssertionError on any contract break (a snapshot after resuming, …)
            if event.kind == KIND.WATCH_EVENT_KIND_UPSERT:
                versions.append(codec.decode(event.resume_token))
            if writes.done() and client.token == codec.encode(11):
                break
        await writes

    assert client.snapshots == 1 and opened[0] == ""  # one bootstrap, then only resumes
    assert len(opened) >= 3 and all(opened[1:]), opened  # it rotated at least twice
    assert set(client.ends) == {"rotate"} and len(client.ends) >= len(opened) - 1  # the last may be open
    assert versions == list(range(2, 12))  # every change once, in order, across the rotations
    truth = {name: MessageToDict(value) for name, value in (await store.truth()).items()}
    assert {name: MessageToDict(s) for name, s in client.resources(struct_pb2.Struct).items()} == truth


async def test_follow_stops_when_the_caller_loses_access(db: Database) -> None:  # noqa: F811
    allowed = True

    async def check() -> None:
        if not allowed:
            raise PermissionDenied("removed from organization acme")

    store = ItemStore(db)
    async with running_hub(db, None, bookmark_seconds=0.1) as hub:

        def open_stream(token: str) -> AsyncIterable[pb.WatchTaskResponse]:
            return hub.stream(
                SCOPE, resume_token=token, snapshot=store.snapshot, authorize=check, wrap=_response
            )

        kinds: list[int] = []
        with pytest.raises(WatchStopped) as stopped:
            async for event in follow(open_stream):
                kinds.append(event.kind)
                if event.kind == KIND.WATCH_EVENT_KIND_BOOKMARK:
                    allowed = False
    assert stopped.value.reason == watch_pb2.WATCH_END_REASON_UNAUTHORIZED
    assert kinds[-1] == KIND.WATCH_EVENT_KIND_END
