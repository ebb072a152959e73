"""The `foundry-fake-agent` console script as a process: it serves ACP on stdio and exits on EOF."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path


def _agent_command() -> str:
    found = shutil.which("foundry-fake-agent") or str(Path(sys.executable).parent / "foundry-fake-agent")
    assert Path(found).exists(), "run `pip install -e .` so the console script exists"
    return found


async def test_fake_agent_exits_cleanly_when_stdin_closes() -> None:
    proc = await asyncio.create_subprocess_exec(
        _agent_command(),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None
    proc.stdin.write(b'{"jsonrpc":"2.0","id":1,"method":"initialize","params":{"protocolVersion":1}}\n')
    await proc.stdin.drain()
    proc.stdin.close()
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert b'"protocolVersion":1' in out and b"foundry-fake-agent" in out
