"""Running turns: one at a time per session (a claim on the session row), in queue order, with every
ACP update recorded; and recovery of turns left behind by a crashed process.

The claim (`agent_sessions.current_turn`) is taken and released in the database, so several
workers (or replicas) may receive RunTurn messages for one session: the one holding the claim runs
the queued turns one after the other; the others find the claim taken and stop. A runner re-checks
the queue after each release, so a turn queued while the claim was held is never stranded.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import uuid
from collections import Counter
from collections.abc import Callable
from functools import partial

from services.platform.aio import periodically
from services.platform.clock import now
from services.platform.errors import FoundryError
from services.platform.logging import get_logger
from services.sandbox.domain.models import (
    EventKind,
    EventSender,
    NewEvent,
    Opened,
    SessionKey,
    SessionState,
    Turn,
    TurnState,
)
from services.sandbox.domain.ports import Agents, LiveSession, LogRecords, SandboxRecords
from services.sandbox.usecases.sandboxes import Sandboxes

log = get_logger(__name__)
HEARTBEAT_SECONDS = 5.0
STALE_AFTER = dt.timedelta(seconds=60)
RESTARTED = (
    "interrupted: the sandbox service stopped while this turn was running, and the agent process "
    "with it; the next message restarts the agent"
)
ABANDONED = (
    "interrupted: the sandbox service stopped running this turn after an internal error (see its "
    "log); the next message goes on in this session"
)


def runner_id() -> str:
    """`host:pid:instance` of this service process (recorded on the turns it runs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def prompt_blocks(turn: Turn) -> list[str]:
    """The prompt's text blocks: the text, then one `@ <file>:<line>` block per attachment."""
    blocks = [turn.text] if turn.text else []
    blocks += [f"@ {a.file_path}:{a.line_number}\n{a.line_content}" for a in turn.attachments]
    return blocks


def failure_events(message: str) -> list[NewEvent]:
    """The log entries that end a failed turn: an ERROR with the message, then TURN_COMPLETED."""
    return [
        NewEvent(EventKind.ERROR, EventSender.SERVICE, message, {"message": message}),
        NewEvent(EventKind.TURN_COMPLETED, EventSender.SERVICE, "", {"state": "failed", "error": message}),
    ]


def interrupted_events(message: str) -> list[NewEvent]:
    """The log entries that end an interrupted turn: a NOTICE with the message, then TURN_COMPLETED."""
    return [
        NewEvent(EventKind.NOTICE, EventSender.SERVICE, message, {"notice": "turn_interrupted"}),
        NewEvent(EventKind.TURN_COMPLETED, EventSender.SERVICE, "", {"state": "interrupted"}),
    ]


def unsent_notice(why: str, code: str) -> NewEvent:
    """The NOTICE ending a queued turn that was never sent to the agent (cancelled, or failed)."""
    return NewEvent(EventKind.NOTICE, EventSender.SERVICE, f"not sent to the agent: {why}", {"notice": code})


def reopened_notice(agent: str, opened: Opened) -> NewEvent | None:
    """The NOTICE saying how an agent session whose agent process was gone goes on, if it was."""
    if opened is Opened.LOADED:
        text = (
            f"agent {agent} restarted and resumed this session (session/load): it remembers the conversation"
        )
        return NewEvent(EventKind.NOTICE, EventSender.SERVICE, text, {"notice": "session_loaded"})
    if opened is Opened.REPLACED:
        text = (
            f"agent {agent} restarted and cannot resume sessions (no session/load): a new agent session "
            "goes on from here; the transcript above is kept, the agent does not remember it"
        )
        return NewEvent(EventKind.NOTICE, EventSender.SERVICE, text, {"notice": "session_replaced"})
    return None


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class TurnRunner:
    """Runs the queued turns of sessions (the `sandbox.turn` worker) and recovers orphaned ones.

    Args:
        sandboxes: sandbox lookups.
        records: sessions and turns.
        logs: the event logs (for turns that end without a live recorder).
        agents: agent processes of this service process.
        runner: this process's runner id (`runner_id()`).
        is_alive: whether a process id is alive on this host (tests may replace it).
    """

    def __init__(
        self,
        sandboxes: Sandboxes,
        records: SandboxRecords,
        logs: LogRecords,
        agents: Agents,
        *,
        runner: str,
        is_alive: Callable[[int], bool] = pid_alive,
    ) -> None:
        self.sandboxes = sandboxes
        self.records = records
        self.logs = logs
        self.agents = agents
        self.runner = runner
        self.host = runner.split(":", 1)[0]
        self.is_alive = is_alive
        # Sessions this process is running turns of now: a RUNNING turn claimed by this runner for a
        # session not in here was abandoned (an unexpected error), and `recover` ends it.
        self._running: Counter[SessionKey] = Counter()

    async def run_session(self, key: SessionKey) -> int:
        """Run the session's queued turns one after the other while this runner holds the claim.
        Returns the number of turns run (0 when another runner holds the claim or none is queued)."""
        sandbox = await self.records.get_sandbox(key.sandbox)
        if sandbox is not None and not self.sandboxes.owns(sandbox):
            # Never claim (and so never fail) another replica's turn; its own queue carries the work.
            log.warning("turn_for_other_replica", session=key.name, owner=sandbox.replica)
            return 0
        count = 0
        self._running[key] += 1  # before the claim: `recover` must never see a claim it is about to run
        try:
            while (turn := await self.records.claim_next_turn(key, self.runner)) is not None:
                await self._run(turn)
                count += 1
        finally:
            self._running[key] -= 1
            if not self._running[key]:
                del self._running[key]
        return count

    async def _run(self, turn: Turn) -> None:
        key = turn.session
        log_ = log.bind(turn=turn.name)
        try:
            sandbox = await self.sandboxes.with_checkout(key.sandbox)
            session = await self.records.get_session(key)
            assert session is not None
            live, opened = await self.agents.open(sandbox, session)
            if live.acp_session_id != session.acp_session_id:
                await self.records.update_session(key, acp_session_id=live.acp_session_id)
        except FoundryError as exc:
            log_.warning("turn_not_started", error=exc.message)
            await self._fail_before_start(turn, exc.message)
            return
        await self.records.update_turn(key, turn.turn_id, agent_pid=live.pid)
        recorder = live.recorder
        recorder.turn_id = turn.turn_id
        if (notice := reopened_notice(session.agent, opened)) is not None:
            recorder.put(notice)
        recorder.put(
            NewEvent(
                EventKind.USER_MESSAGE,
                EventSender.CLIENT,
                turn.text,
                {"prompt": [{"type": "text", "text": b} for b in prompt_blocks(turn)], "user": turn.user},
            )
        )
        heartbeat = periodically(
            HEARTBEAT_SECONDS, partial(self._heartbeat, turn, live, []), name=f"heartbeat-{turn.turn_id}"
        )
        try:
            async with heartbeat:  # never cut off in its write
                stop_reason = await live.prompt(prompt_blocks(turn))
        except Exception as exc:  # the agent failed or died: the turn fails with its message
            message = await live.failure(exc)
            dead = not live.alive
            log_.warning("turn_failed", error=message, agent_alive=not dead)
            await recorder.flush()
            await self.records.finish_turn(
                turn,
                state=TurnState.FAILED,
                error=message,
                session_state=SessionState.ERROR if dead else SessionState.IDLE,
                session_error=message if dead else "",
                events=failure_events(message),
            )
            if dead:
                await self.agents.close_session(key)
                await self._fail_queued(key, f"the agent of this session failed: {message}")
            return
        finally:
            recorder.turn_id = ""
        await recorder.flush()
        state = TurnState.CANCELLED if stop_reason == "cancelled" else TurnState.COMPLETED
        await self.records.finish_turn(
            turn,
            state=state,
            stop_reason=stop_reason,
            events=[NewEvent(EventKind.TURN_COMPLETED, EventSender.SERVICE, "", {"stopReason": stop_reason})],
        )
        log_.info("turn_completed", stop_reason=stop_reason)

    async def _heartbeat(self, turn: Turn, live: LiveSession, cancel_sent: list[bool]) -> None:
        """Prove the turn is alive, and forward (once: `cancel_sent`) a cancel requested through
        another replica. A failed write is logged; the next beat tries again."""
        try:
            await self.records.update_turn(turn.session, turn.turn_id, heartbeat_time=now())
            current = await self.records.get_turn(turn.session, turn.turn_id)
        except Exception:
            log.warning("turn_heartbeat_failed", session=turn.session.name, turn=turn.turn_id, exc_info=True)
            return
        if current is not None and current.cancel_requested and not cancel_sent:
            cancel_sent.append(True)
            with contextlib.suppress(Exception):
                await live.cancel()

    async def _fail_before_start(self, turn: Turn, message: str) -> None:
        await self.records.finish_turn(
            turn,
            state=TurnState.FAILED,
            error=message,
            session_state=SessionState.ERROR,
            session_error=message,
            events=failure_events(message),
        )
        await self._fail_queued(turn.session, message)

    async def _fail_queued(self, key: SessionKey, message: str) -> None:
        for queued in await self.records.turns_in([TurnState.QUEUED], key):
            await self.records.finish_turn(
                queued,
                state=TurnState.FAILED,
                error=message,
                events=[unsent_notice(message, "queued_message_failed")],
                only_if=TurnState.QUEUED,
            )

    # -- recovery --------------------------------------------------------------------------------

    def orphaned(self, turn: Turn) -> bool:
        """True when nobody runs `turn` any more: its runner was on this host and that process is gone
        (or it is an earlier incarnation of this process, as in a container where the service is
        always the same pid) or its agent process is gone; or, from another host, its heartbeat is
        stale. An agent that outlives its runner briefly does not keep the turn: its stdio was
        connected to the dead runner, and it exits at end of input. A turn of this very runner is
        orphaned when this process no longer runs its session (its run stopped on an unexpected
        error, the claim left behind)."""
        if turn.runner == self.runner:
            return not self._running[turn.session]
        host, _, rest = turn.runner.partition(":")
        if host == self.host:
            pid = rest.split(":", 1)[0]
            runner_pid = int(pid) if pid.isdigit() else 0
            if (
                runner_pid == os.getpid()
                or not self.is_alive(runner_pid)
                or not self.is_alive(turn.agent_pid)
            ):
                return True
        last = turn.heartbeat_time or turn.start_time or turn.create_time
        return now() - last > STALE_AFTER if turn.runner else True

    async def recover(self) -> int:
        """End orphaned RUNNING turns INTERRUPTED with a readable notice (the session goes back to
        IDLE and keeps its ACP session id: the next turn restarts the agent and resumes the session,
        see `Agents.open`) and kick sessions that have queued turns. Returns the turns interrupted."""
        interrupted = 0
        # Only this replica's sandboxes: another's turns run (and are recovered) where their agents are.
        mine = self.sandboxes.replica
        for turn in await self.records.turns_in([TurnState.RUNNING], replica=mine):
            if not self.orphaned(turn):
                continue
            log.warning("turn_orphaned", turn=turn.name, runner=turn.runner, agent_pid=turn.agent_pid)
            why = ABANDONED if turn.runner == self.runner else RESTARTED
            await self.records.finish_turn(
                turn, state=TurnState.INTERRUPTED, error=why, events=interrupted_events(why)
            )
            interrupted += 1
        kicked: set[SessionKey] = set()
        for turn in await self.records.turns_in([TurnState.QUEUED], replica=mine):
            if turn.session not in kicked:
                kicked.add(turn.session)
                await self.records.kick(turn.session)
        return interrupted
