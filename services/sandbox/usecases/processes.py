"""Long-running processes in a sandbox: started in their own process group, output captured to files,
stoppable (SIGTERM, then SIGKILL after a grace period) and killable (SIGKILL).

Captured output lives in `<sandbox root>/processes/<id>/`: `output` holds the bytes of both streams
in capture order, `index.jsonl` one line per chunk (`stream`, byte `offset` in `output`, `size`,
capture `time`), so logs can be read from any offset and filtered by stream after a restart.

A tty process (a terminal) runs on a pseudo-terminal whose master end this service holds: its input is
written there (`write_input`), its size set there (`resize`), and its output, read from there, is also
recorded chunk by chunk on the watch scope `process_output:<process name>` for WatchProcessOutput (while
one chunk commits the next accumulates, so a fast producer makes few large chunks). The master end lives
in this service process only: a terminal started before a restart takes no input (its shell got SIGHUP
when the master closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import errno
import fcntl
import json
import os
import signal
import struct
import termios
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from services.platform.aio import cancel_and_log
from services.platform.clock import now
from services.platform.errors import Unavailable
from services.platform.logging import get_logger
from services.platform.paging import offset_page
from services.sandbox.domain.errors import DOMAIN, not_found, precondition, require
from services.sandbox.domain.models import WORK, Process, ProcessSpec, ProcessState, SandboxKey
from services.sandbox.domain.ports import LogRecords
from services.sandbox.usecases.sandboxes import Sandboxes
from services.sandbox.usecases.turns import pid_alive

log = get_logger(__name__)
DEFAULT_LOG_BYTES = 64 * 1024
MAX_LOG_BYTES = 1024 * 1024
MAX_INPUT_BYTES = 64 * 1024  # one WriteProcessInput
MAX_TERMINAL_CELLS = 1000  # rows and columns each
DEFAULT_TERMINAL = (24, 80)
OUTPUT_CHUNK_BYTES = 64 * 1024  # one watched output chunk at most
OUTPUT_SNAPSHOT_BYTES = 256 * 1024  # the tail a new WatchProcessOutput starts with
OUTPUT_BACKLOG_BYTES = 4 * 1024 * 1024  # unrecorded live output kept; older bytes are only in the log
INPUT_TIMEOUT_SECONDS = 5.0
TERMINAL_DRAIN_SECONDS = 1.0  # output read after a terminal's process exited


@dataclass
class LogChunk:
    stream: str  # stdout | stderr
    offset: int
    data: bytes
    capture_time: dt.datetime


@dataclass
class _Terminal:
    """The service's end of a tty process's pseudo-terminal, and its output not yet recorded."""

    master: int
    rows: int
    columns: int
    input_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    pending: bytearray = field(default_factory=bytearray)
    pending_offset: int = 0
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    eof: bool = False
    closed: bool = False

    def close(self) -> None:
        """Close the master end once (its number may be reused by the next open after that)."""
        if not self.closed:
            self.closed = True
            os.close(self.master)


@dataclass
class _Running:
    process: asyncio.subprocess.Process | None
    pid: int
    folder: Path
    size: int = 0
    task: asyncio.Task[None] | None = None
    terminal: _Terminal | None = None
    stopper: asyncio.Task[None] | None = None  # StopProcess's SIGKILL after the grace period
    kill_at: float = 0.0  # when the stopper sends it (loop time)


class Processes:
    """Use cases on processes. Processes started by this service process are supervised here; ones
    found running after a restart are polled until they exit.

    Args:
        sandboxes: sandbox lookups and the provider.
        logs: the process table.
    """

    def __init__(self, sandboxes: Sandboxes, logs: LogRecords) -> None:
        self.sandboxes = sandboxes
        self.logs = logs
        self._running: dict[tuple[SandboxKey, str], _Running] = {}

    def _folder(self, provider_id: str, process_id: str) -> Path:
        return Path(self.sandboxes.provider.root(provider_id)) / "processes" / process_id

    async def create(
        self,
        key: SandboxKey,
        spec: ProcessSpec,
        request_id: str,
        terminal_size: tuple[int, int] = (0, 0),
    ) -> Process:
        """Start `spec` (cwd relative to the checkout). A repeated `request_id` returns the first process.
        A tty process starts on a pseudo-terminal of `terminal_size` (rows, columns; 0 = 24 x 80).
        Raises InvalidArgument, NotFound, FailedPrecondition (`NO_CHECKOUT`, `PROCESS_START_FAILED`)."""
        require(bool(spec.command), "process.command", "is required")
        require(
            not spec.cwd.startswith("/") and ".." not in spec.cwd.split("/"),
            "process.cwd",
            "must be relative to the checkout and stay inside it",
        )
        require(
            spec.tty or not spec.interactive,
            "process.interactive",
            "only a tty process takes input (set tty too)",
        )
        rows, columns = terminal_size
        rows, columns = rows or DEFAULT_TERMINAL[0], columns or DEFAULT_TERMINAL[1]
        _check_size(rows, columns, "terminal_size")
        if request_id:
            existing = await self.logs.find_process_by_request(key, request_id)
            if existing is not None:
                return existing
        sandbox = await self.sandboxes.with_checkout(key)
        process_id = uuid.uuid4().hex[:12]
        folder = self._folder(sandbox.provider_sandbox_id, process_id)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        cwd = f"{WORK}/{spec.cwd}" if spec.cwd else WORK
        terminal: _Terminal | None = None
        slave: int | None = None
        env = spec.env
        if spec.tty:
            master, slave = os.openpty()
            terminal = _Terminal(master, rows, columns)
            _set_size(master, rows, columns)
            os.set_blocking(master, False)
            env = {"TERM": "xterm-256color", "COLORTERM": "truecolor", **spec.env}
        try:
            proc = await self.sandboxes.provider.spawn(
                sandbox.provider_sandbox_id, [spec.command, *spec.args], cwd=cwd, env=env, tty=slave
            )
        except OSError as exc:
            if terminal is not None:
                terminal.close()
            raise precondition(
                f"cannot start {spec.command}: {exc.strerror or exc}", "PROCESS_START_FAILED"
            ) from exc
        finally:
            if slave is not None:
                os.close(slave)  # the child has it: its last close is the terminal's end (EIO here)
        running = self._running[(key, process_id)] = _Running(proc, proc.pid, folder, terminal=terminal)
        created = await self.logs.insert_process(
            Process(
                sandbox=key,
                process_id=process_id,
                spec=spec,
                request_id=request_id,
                pid=proc.pid,
                state=ProcessState.RUNNING,
                exit_code=None,
                exit_signal=0,
                output_size_bytes=0,
                create_time=now(),
                exit_time=None,
            )
        )
        running.task = asyncio.create_task(
            self._supervise(key, process_id, running), name=f"process-{process_id}"
        )
        log.info("process_started", sandbox=key.name, process=process_id, pid=proc.pid, command=spec.command)
        return created

    async def get(self, key: SandboxKey, process_id: str) -> Process:
        process = await self.logs.get_process(key, process_id)
        if process is None:
            raise not_found("process", f"{key.name}/processes/{process_id}")
        running = self._running.get((key, process_id))
        if running is not None:
            process.output_size_bytes = running.size
        return process

    async def list_page(
        self, key: SandboxKey, *, page_size: int, page_token: str
    ) -> tuple[list[Process], str]:
        offset, limit = offset_page(page_size, page_token, default=100, maximum=1000, domain=DOMAIN)
        await self.sandboxes.get(key)
        items = await self.logs.list_processes(key, offset=offset, limit=limit + 1)
        for p in items:
            running = self._running.get((key, p.process_id))
            if running is not None:
                p.output_size_bytes = running.size
        return items[:limit], str(offset + limit) if len(items) > limit else ""

    async def read_logs(
        self, key: SandboxKey, process_id: str, *, offset: int, max_bytes: int, stream: str
    ) -> tuple[list[LogChunk], int, bool]:
        """Chunks of captured output from byte `offset` (at most `max_bytes`; 0 = 64 KiB, cap 1 MiB),
        only of `stream` when given. Returns (chunks, next offset, complete)."""
        require(offset >= 0 and max_bytes >= 0, "offset", "offset and max_bytes must not be negative")
        process = await self.get(key, process_id)
        sandbox = await self.sandboxes.get(key)
        budget = min(max_bytes or DEFAULT_LOG_BYTES, MAX_LOG_BYTES)
        folder = self._folder(sandbox.provider_sandbox_id, process_id)

        # The index and output files are read off the event loop (a large log is megabytes).
        def read() -> tuple[list[LogChunk], int, int]:
            chunks: list[LogChunk] = []
            next_offset = offset
            total = 0
            budget_left = budget
            with contextlib.suppress(FileNotFoundError):
                index = (folder / "index.jsonl").read_text().splitlines()
                with (folder / "output").open("rb") as data:
                    for line in index:
                        entry = json.loads(line)
                        start, size = int(entry["offset"]), int(entry["size"])
                        total = max(total, start + size)
                        if start + size <= next_offset or budget_left <= 0:
                            continue
                        skip = max(0, next_offset - start)
                        take = min(size - skip, budget_left)
                        if not stream or entry["stream"] == stream:
                            data.seek(start + skip)
                            chunks.append(
                                LogChunk(
                                    entry["stream"],
                                    start + skip,
                                    data.read(take),
                                    dt.datetime.fromisoformat(entry["time"]),
                                )
                            )
                            budget_left -= take
                        next_offset = start + skip + take
            return chunks, next_offset, total

        chunks, next_offset, total = await asyncio.to_thread(read)
        complete = process.state is ProcessState.EXITED and next_offset >= total
        return chunks, next_offset, complete

    async def write_input(self, key: SandboxKey, process_id: str, data: bytes) -> None:
        """Write `data` to a terminal's input. Raises InvalidArgument (empty, over 64 KiB), NotFound,
        FailedPrecondition (see `_terminal`), Unavailable (the terminal has not read its input for 5 s)."""
        require(0 < len(data) <= MAX_INPUT_BYTES, "data", f"must hold 1 to {MAX_INPUT_BYTES} bytes")
        terminal = await self._terminal(key, process_id)
        loop = asyncio.get_running_loop()
        async with terminal.input_lock:  # one write at a time: keystrokes stay in order, never interleaved
            view = memoryview(data)
            deadline = loop.time() + INPUT_TIMEOUT_SECONDS
            while view:
                try:
                    view = view[os.write(terminal.master, view) :]
                    continue
                except BlockingIOError:
                    pass
                except OSError as exc:  # the terminal closed under us
                    raise precondition(f"the terminal is gone: {exc.strerror}", "PROCESS_EXITED") from exc
                if loop.time() >= deadline or terminal.eof:
                    raise Unavailable(
                        "the terminal has not read its input for 5 s; try again",
                        reason="TERMINAL_INPUT_FULL",
                        domain=DOMAIN,
                    )
                await _ready(loop.add_writer, loop.remove_writer, terminal.master, 0.1)

    async def resize(self, key: SandboxKey, process_id: str, rows: int, columns: int) -> Process:
        """Set a terminal's window size (its foreground processes get SIGWINCH). Raises InvalidArgument
        (outside 1..1000), NotFound, FailedPrecondition (see `_terminal`)."""
        _check_size(rows, columns, "terminal_size")
        terminal = await self._terminal(key, process_id)
        _set_size(terminal.master, rows, columns)
        terminal.rows, terminal.columns = rows, columns
        return await self.get(key, process_id)

    async def output_items(self, key: SandboxKey, process_id: str) -> list[tuple[str, LogChunk]]:
        """The last 256 KiB of a process's output as watch items (name, chunk), in at most 64 KiB pieces."""
        process = await self.get(key, process_id)
        start = max(0, process.output_size_bytes - OUTPUT_SNAPSHOT_BYTES)
        chunks, _next, _complete = await self.read_logs(
            key, process_id, offset=start, max_bytes=OUTPUT_SNAPSHOT_BYTES, stream=""
        )
        merged: list[LogChunk] = []
        for chunk in chunks:
            last = merged[-1] if merged else None
            if last and last.offset + len(last.data) == chunk.offset and len(last.data) < OUTPUT_CHUNK_BYTES:
                last.data += chunk.data
                last.capture_time = chunk.capture_time
            else:
                merged.append(LogChunk("stdout", chunk.offset, chunk.data, chunk.capture_time))
        return [(f"{process.name}/output/{c.offset}", c) for c in merged]

    async def _terminal(self, key: SandboxKey, process_id: str) -> _Terminal:
        """The terminal of a running tty process. Raises NotFound, FailedPrecondition (`NOT_A_TERMINAL`,
        `PROCESS_EXITED`, `TERMINAL_GONE`: started before this service process restarted)."""
        process = await self.get(key, process_id)
        if not process.spec.tty:
            raise precondition(f"process {process.name} has no terminal (tty)", "NOT_A_TERMINAL")
        if process.state is ProcessState.EXITED:
            raise precondition(f"process {process.name} has exited", "PROCESS_EXITED")
        running = self._running.get((key, process_id))
        if running is None or running.terminal is None or running.terminal.eof:
            raise precondition(
                f"the terminal of {process.name} is gone (the sandbox service restarted); open a new one",
                "TERMINAL_GONE",
            )
        return running.terminal

    async def stop(self, key: SandboxKey, process_id: str, grace_seconds: int) -> Process:
        """SIGTERM to the process and what it started (`Provider.signal`), SIGKILL after
        `grace_seconds` (0 means 5; a later stop with a shorter grace brings the SIGKILL forward)."""
        process = await self.get(key, process_id)
        if process.state is not ProcessState.RUNNING:
            return process
        # STOPPING first and only while RUNNING: the exit may be recorded before this update otherwise.
        updated = await self.logs.update_process(
            key, process_id, when_state=ProcessState.RUNNING, state=ProcessState.STOPPING
        )
        provider = self.sandboxes.provider
        await provider.signal(process.pid, signal.SIGTERM)

        async def kill_if_still_running(grace: float) -> None:
            await asyncio.sleep(grace)
            if (key, process_id) in self._running:
                await provider.signal(process.pid, signal.SIGKILL)

        running = self._running.get((key, process_id))
        grace = grace_seconds or 5
        kill_at = asyncio.get_running_loop().time() + grace
        if running is not None and (running.stopper is None or kill_at < running.kill_at):
            if running.stopper is not None:
                running.stopper.cancel()
            running.kill_at = kill_at
            running.stopper = asyncio.create_task(kill_if_still_running(grace), name=f"stop-{process_id}")
        return updated

    async def kill(self, key: SandboxKey, process_id: str) -> Process:
        """SIGKILL to the process and what it started; returns the process once its exit is recorded
        (EXITED)."""
        process = await self.get(key, process_id)
        if process.state is ProcessState.EXITED:
            return process
        # Looked up first: while the signal is sent the supervisor may see the exit and drop the entry
        # before the EXITED row is written.
        running = self._running.get((key, process_id))
        await self.sandboxes.provider.signal(process.pid, signal.SIGKILL)
        if running is not None and running.task is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(running.task), 10)
        return await self.get(key, process_id)

    async def delete(self, key: SandboxKey, process_id: str) -> None:
        """Delete an exited process and its output. Raises FailedPrecondition (`PROCESS_RUNNING`)."""
        process = await self.get(key, process_id)
        if process.state is not ProcessState.EXITED:
            raise precondition(
                f"process {process.name} is {process.state.value}; stop or kill it first", "PROCESS_RUNNING"
            )
        sandbox = await self.sandboxes.get(key)
        await self.sandboxes.provider.remove(sandbox.provider_sandbox_id, f"processes/{process_id}")
        await self.logs.delete_process(key, process_id)

    async def remove_all(self, key: SandboxKey) -> None:
        """Kill every process of the sandbox and forget them (before the sandbox is destroyed)."""
        for process in await self.logs.list_processes(key):
            if process.state is not ProcessState.EXITED:
                await self.kill(key, process.process_id)
            await self.logs.delete_process(key, process.process_id)

    async def recover(self) -> None:
        """After a restart: processes still alive are polled until they exit; the others are EXITED.
        A terminal still alive is killed: its master end closed with the old service process, so
        nobody can type into it any more (and the workbench would keep offering it)."""
        for process in await self.logs.running_processes(self.sandboxes.replica):
            if pid_alive(process.pid):
                if process.spec.tty:
                    await self.sandboxes.provider.signal(process.pid, signal.SIGKILL)
                running = self._running[(process.sandbox, process.process_id)] = _Running(
                    None, process.pid, Path()
                )
                running.task = asyncio.create_task(
                    self._supervise(process.sandbox, process.process_id, running)
                )
            else:
                await self.logs.update_process(
                    process.sandbox, process.process_id, state=ProcessState.EXITED, exit_time=now()
                )

    async def close(self) -> None:
        """Stop supervising (the processes keep running; a restart adopts them)."""
        tasks = [t for r in self._running.values() for t in (r.task, r.stopper) if t is not None]
        # Bounded: a swallowed cancel must not hang the shutdown.
        await cancel_and_log(tasks, log, "process_supervisors_ignored_cancel")
        for running in self._running.values():
            if running.terminal is not None:
                running.terminal.close()
        self._running.clear()

    async def _supervise(self, key: SandboxKey, process_id: str, running: _Running) -> None:
        proc = running.process
        if proc is None:  # adopted after a restart: no pipes, poll until it is gone
            while pid_alive(running.pid):  # noqa: ASYNC110 - no event exists for a foreign pid's exit
                await asyncio.sleep(1.0)
            code: int | None = None
        elif running.terminal is not None:
            # The terminal ends with its process: output still buffered is read for a moment, then the
            # master end closes, which hangs up whatever it left behind holding the terminal (a
            # background job in its own process group, which the process-group kill does not reach).
            pump = asyncio.create_task(self._pump_terminal(key, process_id, running, running.terminal))
            try:
                code = await proc.wait()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(pump), TERMINAL_DRAIN_SECONDS)
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
        else:
            with (
                (running.folder / "output").open("ab") as output,
                (running.folder / "index.jsonl").open("a") as index,
            ):
                lock = asyncio.Lock()
                await asyncio.gather(
                    *(
                        self._pump(stream, name, output, index, running, lock)
                        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))
                        if stream is not None
                    )
                )
            code = await proc.wait()
        self._running.pop((key, process_id), None)
        if running.stopper is not None:
            running.stopper.cancel()  # ended: no SIGKILL to send (the pid may be reused)
        exit_code, exit_signal = (None, -code) if code is not None and code < 0 else (code, 0)
        await self.logs.update_process(
            key,
            process_id,
            state=ProcessState.EXITED,
            exit_code=exit_code,
            exit_signal=exit_signal,
            exit_time=now(),
            output_size_bytes=running.size,
        )
        log.info(
            "process_exited", sandbox=key.name, process=process_id, exit_code=exit_code, signal=exit_signal
        )

    async def _pump_terminal(
        self, key: SandboxKey, process_id: str, running: _Running, terminal: _Terminal
    ) -> None:
        """Copy a terminal's output to its log files and, through `_record_output`, to its watch scope,
        until every slave end is closed; then close the master end."""
        recorder = asyncio.create_task(self._record_output(f"{key.name}/processes/{process_id}", terminal))
        loop = asyncio.get_running_loop()
        try:
            with (
                (running.folder / "output").open("ab") as output,
                (running.folder / "index.jsonl").open("a") as index,
            ):
                while True:
                    try:
                        data = os.read(terminal.master, 65536)
                    except BlockingIOError:
                        await _ready(loop.add_reader, loop.remove_reader, terminal.master, None)
                        continue
                    except OSError as exc:
                        if exc.errno != errno.EIO:  # EIO: the last slave end closed (the shell exited)
                            raise
                        data = b""
                    if not data:
                        break
                    entry = {
                        "stream": "stdout",
                        "offset": running.size,
                        "size": len(data),
                        "time": now().isoformat(),
                    }
                    output.write(data)
                    output.flush()
                    index.write(json.dumps(entry) + "\n")
                    index.flush()
                    running.size += len(data)
                    terminal.pending += data
                    if len(terminal.pending) > OUTPUT_BACKLOG_BYTES:  # the database is far behind: skip
                        drop = len(terminal.pending) - OUTPUT_BACKLOG_BYTES
                        del terminal.pending[:drop]
                        terminal.pending_offset += drop
                    terminal.wake.set()
        finally:
            terminal.eof = True
            terminal.wake.set()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(recorder)
            terminal.close()

    async def _record_output(self, process_name: str, terminal: _Terminal) -> None:
        """Record the terminal's pending output as watch changes, at most 64 KiB each, until its end."""
        while True:
            await terminal.wake.wait()
            terminal.wake.clear()
            while terminal.pending:
                data = bytes(terminal.pending[:OUTPUT_CHUNK_BYTES])
                offset = terminal.pending_offset
                del terminal.pending[: len(data)]
                terminal.pending_offset += len(data)
                try:
                    await self.logs.record_output(process_name, offset, data, now())
                except Exception as exc:  # the bytes stay in the log; only their live delivery is lost
                    log.warning("terminal_output_not_recorded", process=process_name, error=str(exc))
            if terminal.eof:
                return

    @staticmethod
    async def _pump(
        stream: asyncio.StreamReader,
        name: str,
        output: object,
        index: object,
        running: _Running,
        lock: asyncio.Lock,
    ) -> None:
        while data := await stream.read(65536):
            async with lock:
                entry = {"stream": name, "offset": running.size, "size": len(data), "time": now().isoformat()}
                output.write(data)  # type: ignore[attr-defined]
                output.flush()  # type: ignore[attr-defined]
                index.write(json.dumps(entry) + "\n")  # type: ignore[attr-defined]
                index.flush()  # type: ignore[attr-defined]
                running.size += len(data)


def _check_size(rows: int, columns: int, field_name: str) -> None:
    require(
        0 < rows <= MAX_TERMINAL_CELLS and 0 < columns <= MAX_TERMINAL_CELLS,
        field_name,
        f"rows and columns must be 1 to {MAX_TERMINAL_CELLS}, got {rows} x {columns}",
    )


def _set_size(fd: int, rows: int, columns: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))


async def _ready(add: Any, remove: Any, fd: int, timeout: float | None) -> None:
    """Wait until `fd` is readable (loop.add_reader) or writable (add_writer), at most `timeout` s."""
    ready = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    add(fd, wake)
    try:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(ready, timeout)
    finally:
        remove(fd)
