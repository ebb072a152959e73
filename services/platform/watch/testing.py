"""Test support for any Watch RPC: a client model that applies `WatchEvent`s as a correct client
does and fails loudly when a stream breaks the contract.

    client = WatchClient()
    async for response in stub.WatchTask(WatchTaskRequest(resume_token=client.token)):
        client.apply(response.event)       # AssertionError on a contract violation
    assert client.resources(Task) == expected
"""

from __future__ import annotations

from typing import TypeVar

from foundry.common.v1 import watch_pb2
from google.protobuf import any_pb2
from google.protobuf.message import Message

T = TypeVar("T", bound=Message)
_RESUMABLE = (
    watch_pb2.WATCH_END_REASON_ROTATE,
    watch_pb2.WATCH_END_REASON_DRAINING,
    watch_pb2.WATCH_END_REASON_LAGGING,
)


class WatchClient:
    """Client-side state of one watched scope across any number of streams.

    `token` is what the next stream should be opened with ("" = bootstrap). Call `apply` for each
    event in order; a new stream begins implicitly after an END (or explicitly with `begin`).
    """

    def __init__(self) -> None:
        self.state: dict[str, any_pb2.Any] = {}
        self.token = ""
        self.snapshots = 0
        self.resets = 0
        self.events = 0
        self.ends: list[str] = []
        self._in_snapshot = False
        self._streaming = False
        self._resumed = False
        self._seen_snapshot_end = False

    @property
    def end_reason(self) -> str | None:
        """The reason of the last END (`rotate`, `draining`, …), or None if the last stream had none."""
        return self.ends[-1] if self.ends and not self._streaming else None

    def begin(self) -> None:
        """A new stream was opened with `self.token`."""
        self._streaming = True
        self._resumed = bool(self.token)
        self._in_snapshot = False
        self._seen_snapshot_end = self._resumed

    def apply(self, event: watch_pb2.WatchEvent) -> None:
        """Apply one event; AssertionError when it breaks the contract."""
        if not self._streaming:
            self.begin()
        self.events += 1
        kind = event.kind
        if kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT:
            assert not self._resumed, "a resumed stream must not send a snapshot"
            assert not self._seen_snapshot_end, "SNAPSHOT after SNAPSHOT_END"
            if not self._in_snapshot:
                self.state.clear()
                self.snapshots += 1
                self._in_snapshot = True
            for item in event.items:
                self.state[item.name] = item.resource
        elif kind == watch_pb2.WATCH_EVENT_KIND_SNAPSHOT_END:
            assert self._in_snapshot, "SNAPSHOT_END without SNAPSHOT"
            assert event.resume_token, "SNAPSHOT_END must carry the snapshot token"
            self._in_snapshot = False
            self._seen_snapshot_end = True
            self.token = event.resume_token
        elif kind in (watch_pb2.WATCH_EVENT_KIND_UPSERT, watch_pb2.WATCH_EVENT_KIND_DELETE):
            assert self._seen_snapshot_end, "change before the snapshot ended"
            assert len(event.items) == 1 and event.items[0].version == event.resume_token
            for item in event.items:
                if kind == watch_pb2.WATCH_EVENT_KIND_UPSERT:
                    self.state[item.name] = item.resource
                else:
                    self.state.pop(item.name, None)
            self.token = event.resume_token
        elif kind == watch_pb2.WATCH_EVENT_KIND_BOOKMARK:
            assert self._seen_snapshot_end, "BOOKMARK before the snapshot ended"
            self.token = event.resume_token
        elif kind == watch_pb2.WATCH_EVENT_KIND_RESET:
            self.resets += 1
            self.state.clear()
            self.token = ""
        elif kind == watch_pb2.WATCH_EVENT_KIND_END:
            reason = watch_pb2.WatchEndReason.Name(event.end_reason)
            assert event.end_reason != watch_pb2.WATCH_END_REASON_UNSPECIFIED, "END without a reason"
            self.ends.append(reason.removeprefix("WATCH_END_REASON_").lower())
            if event.end_reason in _RESUMABLE:
                if self._seen_snapshot_end:
                    assert event.resume_token == self.token, "END must carry the last delivered token"
                self.token = event.resume_token
            else:
                self.token = ""
            self._streaming = False
        else:  # pragma: no cover - defensive
            raise AssertionError(f"unknown event kind {kind}")

    def resources(self, cls: type[T]) -> dict[str, T]:
        """The applied state decoded as `cls` messages, by resource name."""
        decoded: dict[str, T] = {}
        for name, packed in self.state.items():
            message = cls()
            assert packed.Unpack(message), f"{name} is not a {cls.DESCRIPTOR.full_name}"
            decoded[name] = message
        return decoded
