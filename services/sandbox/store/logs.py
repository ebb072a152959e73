"""Session event logs, cached git states and processes: reads, and writes that record their watch changes
and publish their events in the same transaction.

Watch scopes: `session_events:<session name>` (items: SessionEvent, upsert only) and
`processes:<sandbox name>` (items: Process; DeleteProcess is a delete), `process_output:<process name>`
(items: ProcessLogChunk of a tty process, upsert only).
Routing keys: `sandbox.session.events_appended` (SessionEventsAppended), `sandbox.git_state.updated`
(GitStateUpdated), `sandbox.processes.updated` (ProcessesUpdated).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

from foundry.sandbox.v1 import events_pb2, process_pb2
from google.protobuf.message import Message
from sqlalchemy import and_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from services.platform.db import Database
from services.platform.outbox import Outbox
from services.platform.watch import record_change
from services.sandbox import convert
from services.sandbox.domain import models as m
from services.sandbox.store import rows
from services.sandbox.store.queries import append_events, events_scope, owned_by, sandbox_where
from services.sandbox.store.tables import git_states, processes, sandboxes, session_events

GIT_STATE_UPDATED = "sandbox.git_state.updated"
PROCESSES_UPDATED = "sandbox.processes.updated"


def processes_scope(key: m.SandboxKey) -> str:
    return f"processes:{key.name}"


def output_scope(process_name: str) -> str:
    return f"process_output:{process_name}"


def output_name(process_name: str, offset: int) -> str:
    return f"{process_name}/output/{offset}"


def output_chunk(offset: int, data: bytes, capture_time: dt.datetime) -> process_pb2.ProcessLogChunk:
    """A chunk of a terminal's output (one stream: a pseudo-terminal merges them)."""
    return process_pb2.ProcessLogChunk(
        stream=process_pb2.PROCESS_OUTPUT_STREAM_STDOUT,
        offset=offset,
        data=data,
        capture_time=convert.ts(capture_time),
    )


def _events_where(key: m.SessionKey) -> Any:
    return and_(
        session_events.c.organization == key.sandbox.organization,
        session_events.c.sandbox_id == key.sandbox.sandbox_id,
        session_events.c.session_id == key.session_id,
    )


def _process_where(key: m.SandboxKey, process_id: str | None = None) -> Any:
    clause = and_(processes.c.organization == key.organization, processes.c.sandbox_id == key.sandbox_id)
    return clause if process_id is None else and_(clause, processes.c.process_id == process_id)


class LogRecords:
    """The event log, git state cache and process table of the sandbox service."""

    def __init__(self, db: Database, outbox: Outbox) -> None:
        self.db = db
        self.outbox = outbox

    # -- event log -----------------------------------------------------------------------------

    async def append_events(
        self, key: m.SessionKey, turn_id: str, events: Sequence[m.NewEvent]
    ) -> list[m.SessionEvent]:
        """Append `events` to the session's log in one transaction (see `queries.append_events`)."""
        if not events:
            return []
        async with self.db.transaction() as s:
            return await append_events(s, self.outbox, key, turn_id, events)

    async def list_events(self, key: m.SessionKey, *, after_seq: int, limit: int) -> list[m.SessionEvent]:
        async with self.db.snapshot() as s:
            return await self.read_events(s, key, after_seq=after_seq, limit=limit)

    async def read_events(
        self, s: AsyncSession, key: m.SessionKey, *, after_seq: int = 0, limit: int | None = None
    ) -> list[m.SessionEvent]:
        """Events with seq > after_seq in log order, inside the caller's (snapshot) session."""
        query = select(session_events).where(_events_where(key), session_events.c.seq > after_seq)
        query = query.order_by(session_events.c.seq)
        if limit is not None:
            query = query.limit(limit)
        return [rows.event(r) for r in (await s.execute(query)).all()]

    # -- git state -----------------------------------------------------------------------------

    async def get_git_state(self, key: m.SandboxKey) -> m.GitState | None:
        async with self.db.snapshot() as s:
            row = (
                await s.execute(
                    select(git_states).where(
                        git_states.c.organization == key.organization,
                        git_states.c.sandbox_id == key.sandbox_id,
                    )
                )
            ).first()
        return rows.git_state(row) if row else None

    async def save_git_state(self, state: m.GitState, *, task: str) -> m.GitState:
        """Store `state` as the sandbox's cached git state (version + 1) and publish GitStateUpdated."""
        key = state.sandbox
        async with self.db.transaction() as s:
            where = and_(
                git_states.c.organization == key.organization, git_states.c.sandbox_id == key.sandbox_id
            )
            version = (await s.execute(select(git_states.c.version).where(where))).scalar_one_or_none()
            values = {
                "state": rows.git_state_json(state),
                "compute_time": state.compute_time,
                "version": int(version or 0) + 1,
            }
            if version is None:
                await s.execute(
                    git_states.insert().values(
                        organization=key.organization, sandbox_id=key.sandbox_id, **values
                    )
                )
            else:
                await s.execute(update(git_states).where(where).values(**values))
            state.version = values["version"]  # type: ignore[assignment]
            await self.outbox.publish(
                s,
                routing_key=GIT_STATE_UPDATED,
                message=events_pb2.GitStateUpdated(
                    name=f"{key.name}/gitState",
                    version=state.version,
                    task=task,
                    git_state=convert.git_state(state),
                ),
            )
        return state

    # -- processes -----------------------------------------------------------------------------

    async def get_process(self, key: m.SandboxKey, process_id: str) -> m.Process | None:
        async with self.db.snapshot() as s:
            row = (await s.execute(select(processes).where(_process_where(key, process_id)))).first()
        return rows.process(row) if row else None

    async def find_process_by_request(self, key: m.SandboxKey, request_id: str) -> m.Process | None:
        async with self.db.snapshot() as s:
            row = (
                await s.execute(
                    select(processes).where(_process_where(key), processes.c.request_id == request_id)
                )
            ).first()
        return rows.process(row) if row else None

    async def list_processes(
        self,
        key: m.SandboxKey,
        *,
        offset: int = 0,
        limit: int | None = None,
        states: Sequence[m.ProcessState] | None = None,
    ) -> list[m.Process]:
        async with self.db.snapshot() as s:
            return await self._processes(s, key, offset=offset, limit=limit, states=states)

    async def _processes(
        self,
        s: AsyncSession,
        key: m.SandboxKey | None,
        *,
        offset: int = 0,
        limit: int | None = None,
        states: Sequence[m.ProcessState] | None = None,
        replica: str | None = None,
    ) -> list[m.Process]:
        query = select(processes)
        if key is not None:
            query = query.where(_process_where(key))
        if replica is not None:
            query = query.where(owned_by(processes, replica))
        if states:
            query = query.where(processes.c.state.in_([st.value for st in states]))
        query = query.order_by(processes.c.create_time.desc(), processes.c.process_id.desc()).offset(offset)
        if limit is not None:
            query = query.limit(limit)
        return [rows.process(r) for r in (await s.execute(query)).all()]

    async def running_processes(self, replica: str) -> list[m.Process]:
        """Processes not EXITED of the sandboxes `replica` owns (for recovery after a restart: another
        replica's process ids mean nothing here)."""
        async with self.db.snapshot() as s:
            return await self._processes(
                s, None, states=[m.ProcessState.RUNNING, m.ProcessState.STOPPING], replica=replica
            )

    async def process_items(self, s: AsyncSession, key: m.SandboxKey) -> list[tuple[str, Message]]:
        return [(p.name, convert.process(p)) for p in await self._processes(s, key)]

    async def insert_process(self, process: m.Process) -> m.Process:
        async with self.db.transaction() as s:
            await s.execute(processes.insert().values(**rows.process_values(process)))
            await self._process_changed(s, process.sandbox, process.name, convert.process(process))
        return process

    async def update_process(
        self, key: m.SandboxKey, process_id: str, *, when_state: m.ProcessState | None = None, **changes: Any
    ) -> m.Process:
        """Apply `changes` (only while the process is in `when_state`, when given) and record the change."""
        if "state" in changes:
            changes["state"] = str(changes["state"])
        where = _process_where(key, process_id)
        if when_state is not None:
            where = and_(where, processes.c.state == when_state.value)
        async with self.db.transaction() as s:
            result = await s.execute(update(processes).where(where).values(**changes))
            current = rows.process(
                (await s.execute(select(processes).where(_process_where(key, process_id)))).one()
            )
            if result.rowcount:  # type: ignore[attr-defined]
                await self._process_changed(s, key, current.name, convert.process(current))
        return current

    async def delete_process(self, key: m.SandboxKey, process_id: str) -> None:
        async with self.db.transaction() as s:
            await s.execute(processes.delete().where(_process_where(key, process_id)))
            await self._process_changed(s, key, f"{key.name}/processes/{process_id}", None)

    async def record_output(
        self, process_name: str, offset: int, data: bytes, capture_time: dt.datetime
    ) -> None:
        """Record a chunk of a terminal's output on its watch scope (the bytes are in its log file)."""
        chunk = output_chunk(offset, data, capture_time)
        async with self.db.transaction() as s:
            await record_change(
                s, scope=output_scope(process_name), name=output_name(process_name, offset), resource=chunk
            )

    async def _process_changed(
        self, s: AsyncSession, key: m.SandboxKey, name: str, resource: Message | None
    ) -> None:
        await record_change(s, scope=processes_scope(key), name=name, resource=resource)
        version = (
            await s.execute(
                update(sandboxes)
                .where(sandbox_where(key))
                .values(processes_version=sandboxes.c.processes_version + 1)
                .returning(sandboxes.c.processes_version)
            )
        ).scalar_one()
        current = await self._processes(s, key)
        await self.outbox.publish(
            s,
            routing_key=PROCESSES_UPDATED,
            message=events_pb2.ProcessesUpdated(
                name=key.name, version=int(version), processes=[convert.process(p) for p in current]
            ),
        )


__all__ = ["LogRecords", "events_scope", "output_chunk", "output_name", "output_scope", "processes_scope"]
