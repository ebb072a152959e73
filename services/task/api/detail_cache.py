"""GetTask's responses, reused while the rows they were built from are unchanged."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from foundry.task.v1 import task_service_pb2 as pb

from services.task.store.queries import TaskDetail

Build = Callable[[TaskDetail, bool], pb.GetTaskResponse]


class DetailResponses:
    """The last GetTaskResponse per (task, caller, view) and the rows it was built from.

    Every GetTask still reads the database (one statement); a read whose rows (as the driver
    returned them) compare equal to the cached ones gets the cached response, skipping the value
    conversion, the records and the protobuf building (a third of GetTask's CPU on PostgreSQL,
    bench/read_throughput.py). Equal rows mean an equal response: it is built from nothing else.
    Responses are shared, never mutated (grpc only serializes them).

    Bounded: at most MAX_ENTRIES entries (the oldest dropped first), and none for a task whose git
    state and pull request together exceed MAX_WEIGHT bytes (their rows and responses would hold
    two copies of it).
    """

    MAX_ENTRIES = 512
    MAX_WEIGHT = 64 * 1024

    def __init__(self, build: Build) -> None:
        self._build = build
        self._entries: dict[tuple[str, str, bool], tuple[Sequence[Sequence[object]], pb.GetTaskResponse]] = {}

    def response(self, name: str, detail: TaskDetail, *, full: bool) -> pb.GetTaskResponse:
        key = (name, detail.user_id, full)
        hit = self._entries.get(key)
        if hit is not None and hit[0] == detail.rows:
            return hit[1]
        response = self._build(detail, full)
        if detail.weight <= self.MAX_WEIGHT:
            if hit is None and len(self._entries) >= self.MAX_ENTRIES:
                del self._entries[next(iter(self._entries))]
            self._entries[key] = (detail.rows, response)
        return response
