"""kill -9 of a process hosting the bubblewrap provider, while it starts sandbox commands: no process of
its sandboxes may outlive it (no bwrap, no command, no socat egress forwarder reparented to init).

bwrap's own `--die-with-parent` comes too late to cover this: it is set only after bwrap has started (a
service killed before it left the whole sandbox running), and the sandbox's pid 1 sets its own only
after the mounts (tens of ms during which the service's death orphans it). The host here starts
commands every few ms and SIGKILLs itself, so its death lands in those windows; before the provider
bound its commands to the service (`setpriv --pdeathsig` + `_Reaper`) several sandboxes survived it.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from services.sandbox.providers.bubblewrap import available

WHY = available()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"bubblewrap unavailable: {WHY}")
ROOT = Path(__file__).resolve().parents[3]

# Starts sandbox commands (egress on: each gets the socat forwarder) one after another without waiting
# for them, then SIGKILLs itself `kill_after` s later, mid-start of the latest ones.
_HOST = """
import asyncio, os, signal, sys
from pathlib import Path
from services.sandbox.domain.models import SandboxKey
from services.sandbox.providers.bubblewrap import BubblewrapProvider, Limits, toolchain_paths
from services.sandbox.providers.egress import EgressPolicy, EgressProxies

async def main() -> None:
    root, marker, kill_after = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    provider = BubblewrapProvider(
        root, base_env={"PATH": os.environ["PATH"]}, toolchain=toolchain_paths(), limits=Limits(),
        egress=EgressProxies(EgressPolicy.MODEL_APIS, ["api.anthropic.com"]),
    )
    ids = []
    for n in range(4):
        provider_id = await provider.create(SandboxKey(organization="acme", sandbox_id=f"s{n}"))
        (root / provider_id / "work").mkdir(exist_ok=True)
        ids.append(provider_id)
    kept = []
    await provider.spawn(ids[0], ["sleep", marker], env={"LEAK_MARKER": marker})  # fully up
    await asyncio.sleep(0.5)
    print("up", flush=True)
    loop = asyncio.get_running_loop()
    loop.call_later(kill_after, os.kill, os.getpid(), signal.SIGKILL)
    while True:
        for provider_id in ids:
            kept.append(await provider.spawn(provider_id, ["sleep", marker], env={"LEAK_MARKER": marker}))
            await asyncio.sleep(0.003)

asyncio.run(main())
"""


def _survivors(marker: str) -> list[str]:
    """Live processes of the host's sandboxes: the marker in their command line (bwrap, the command)
    or in their environment (the command and the forwarder the sandbox's shell started)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{name}/stat").read_text()
            if stat[stat.rindex(")") + 2] == "Z":
                continue
            cmdline = Path(f"/proc/{name}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            environ = b""
            with contextlib.suppress(OSError):
                environ = Path(f"/proc/{name}/environ").read_bytes()
            if marker in cmdline or f"LEAK_MARKER={marker}".encode() in environ.split(b"\0"):
                found.append(f"{name} ppid={stat[stat.rindex(')') + 2 :].split()[1]} {cmdline[:120]}")
    return found


@pytest.mark.parametrize("kill_after", [0.0, 0.015, 0.04])
def test_no_process_of_a_sandbox_outlives_the_killed_service(tmp_path: Path, kill_after: float) -> None:
    marker = str(8_000_000 + os.getpid() % 10_000 * 10 + int(kill_after * 100))
    env = {**os.environ, "GRPC_ENABLE_FORK_SUPPORT": "false"}
    host = subprocess.Popen(
        [sys.executable, "-c", _HOST, str(tmp_path / "sandboxes"), marker, str(kill_after)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = host.communicate(timeout=60)
    finally:
        if host.poll() is None:
            host.kill()
            host.wait()
    assert b"up" in out and host.returncode == -9, err.decode(errors="replace")[-3000:]
    deadline = time.monotonic() + 5
    survivors = _survivors(marker)
    while survivors and time.monotonic() < deadline:
        time.sleep(0.1)
        survivors = _survivors(marker)
    for line in survivors:  # the test's own cleanup: what the host left, found by its unique marker
        with contextlib.suppress(ProcessLookupError, PermissionError, ValueError):
            os.kill(int(line.split()[0]), 9)
    assert not survivors, "processes of the killed host's sandboxes are still running:\n" + "\n".join(
        survivors
    )
