"""Long-running processes in a sandbox: started in their own process group, output captured to files,
stoppable (SIGTERM, then SIGKILL after a grace period) and killable (SIGKILL).

Captured output lives in `<sandbox root>/processes/<id>/`: `output` holds the bytes of both streams
in capture order, `index.jsonl` one line per chunk (`stream`, byte `offset` in `output`, `size`,
capture `time`), so logs can be read from any offset and filtered by stream after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import signal
import uuid
from dataclasses import dataclass
from pathlib import Path

from services.platform.clock import now
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


@dataclass
class LogChunk:
    stream: str  # stdout | stderr
    offset: int
    data: bytes
    capture_time: dt.datetime


@dataclass
class _Running:
    process: asyncio.subprocess.Process | None
    pid: int
    folder: Path
    size: int = 0
    task: asyncio.Task[None] | None = None


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

    async def create(self, key: SandboxKey, spec: ProcessSpec, request_id: str) -> Process:
        """Start `spec` (cwd relative to the checkout). A repeated `request_id` returns the first process.
        Raises InvalidArgument, NotFound, FailedPrecondition (`NO_CHECKOUT`, `PROCESS_START_FAILED`)."""
        require(bool(spec.command), "process.command", "is required")
        require(
            not spec.cwd.startswith("/") and ".." not in spec.cwd.split("/"),
            "process.cwd",
            "must be relative to the checkout and stay inside it",
        )
        require(
            not spec.tty and not spec.interactive,
            "process.tty",
            "tty and interactive processes are not supported",
        )
        if request_id:
            existing = await self.logs.find_process_by_request(key, request_id)
            if existing is not None:
                return existing
        sandbox = await self.sandboxes.with_checkout(key)
        process_id = uuid.uuid4().hex[:12]
        folder = self._folder(sandbox.provider_sandbox_id, process_id)
        await asyncio.to_thread(folder.mkdir, parents=True, exist_ok=True)
        cwd = f"{WORK}/{spec.cwd}" if spec.cwd else WORK
        try:
            proc = await self.sandboxes.provider.spawn(
                sandbox.provider_sandbox_id, [spec.command, *spec.args], cwd=cwd, env=spec.env
            )
        except OSError as exc:
            raise precondition(
                f"cannot start {spec.command}: {exc.strerror or exc}", "PROCESS_START_FAILED"
            ) from exc
        running = self._running[(key, process_id)] = _Running(proc, proc.pid, folder)
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

    async def stop(self, key: SandboxKey, process_id: str, grace_seconds: int) -> Process:
        """SIGTERM to the process group, SIGKILL after `grace_seconds` (0 means 5)."""
        process = await self.get(key, process_id)
        if process.state is not ProcessState.RUNNING:
            return process
        # STOPPING first and only while RUNNING: the exit may be recorded before this update otherwise.
        updated = await self.logs.update_process(
            key, process_id, when_state=ProcessState.RUNNING, state=ProcessState.STOPPING
        )
        _signal_group(process.pid, signal.SIGTERM)

        def kill_if_still_running() -> None:
            if (key, process_id) in self._running:
                _signal_group(process.pid, signal.SIGKILL)

        asyncio.get_running_loop().call_later(grace_seconds or 5, kill_if_still_running)
        return updated

    async def kill(self, key: SandboxKey, process_id: str) -> Process:
        """SIGKILL to the process group; returns the process once its exit is recorded (EXITED)."""
        process = await self.get(key, process_id)
        if process.state is ProcessState.EXITED:
            return process
        _signal_group(process.pid, signal.SIGKILL)
        running = self._running.get((key, process_id))
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
        """After a restart: processes still alive are polled until they exit; the others are EXITED."""
        for process in await self.logs.running_processes(self.sandboxes.replica):
            if pid_alive(process.pid):
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
        tasks = [r.task for r in self._running.values() if r.task is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._running.clear()

    async def _supervise(self, key: SandboxKey, process_id: str, running: _Running) -> None:
        proc = running.process
        if proc is None:  # adopted after a restart: no pipes, poll until it is gone
            while pid_alive(running.pid):  # noqa: ASYNC110 - no event exists for a foreign pid's exit
                await asyncio.sleep(1.0)
            code: int | None = None
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


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
