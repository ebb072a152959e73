"""Where the time goes: sample a service process with py-spy while a benchmark runs and reduce the
collapsed stacks to the heaviest packages and functions (own time), for the result's profile notes."""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def py_spy(pid: int, out: Path, *, rate: int = 100) -> Iterator[Path | None]:
    """Record `pid` (and its threads) into `out` (collapsed stacks) until the block ends.
    Yields None when py-spy is not installed (the benchmark then runs unprofiled)."""
    exe = shutil.which("py-spy") or str(Path(__import__("sys").executable).parent / "py-spy")
    if not Path(exe).exists():
        yield None
        return
    proc = subprocess.Popen(
        # --gil: only the thread holding the GIL is sampled, i.e. where Python CPU time goes.
        [
            exe,
            "record",
            "--pid",
            str(pid),
            "--rate",
            str(rate),
            "--gil",
            "--nonblocking",
            "--format",
            "raw",
            "--output",
            str(out),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield out
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _package(frame: str) -> str:
    """`fn (sqlalchemy/orm/session.py:12)` -> `sqlalchemy`; our code -> `services.task`."""
    _, _, location = frame.partition(" (")
    path = location.rsplit(":", 1)[0]
    if "site-packages/" in path:
        path = path.split("site-packages/", 1)[1]
    parts = path.split("/")
    if parts[0] in ("services", "gateway", "bench", "load") and len(parts) > 1:
        return f"{parts[0]}.{parts[1].removesuffix('.py')}"
    return parts[0].removesuffix(".py") or "?"


def summarize(collapsed: Path, top: int = 12) -> dict[str, Any]:
    """Own-time shares of the busiest packages and functions in a py-spy raw (collapsed) file.

    Idle samples (the event loop waiting in select/epoll) are counted apart as `idle_share`."""
    own_pkg: Counter[str] = Counter()
    own_fn: Counter[str] = Counter()
    ours: Counter[str] = Counter()
    total = idle = 0
    if not collapsed.exists():
        return {"samples": 0}
    for line in collapsed.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        leaf = stack.split(";")[-1]
        total += count
        if any(word in leaf for word in ("select (", "poll (", "epoll", "run_forever", "_run_once (")):
            idle += count
            continue
        own_pkg[_package(leaf)] += count
        own_fn[leaf.split(" (")[0] + " @" + _package(leaf)] += count
        # Credit the deepest frame of our own code: which of our functions the time is spent under.
        mine = [f for f in stack.split(";") if _package(f).startswith(("services.", "gateway."))]
        if mine:
            ours[mine[-1].split(" (")[0] + " @" + _package(mine[-1])] += count
    busy = max(total - idle, 1)
    return {
        "samples": total,
        "idle_share": round(idle / max(total, 1), 3),
        "busy_by_package": {k: round(v / busy, 3) for k, v in own_pkg.most_common(top)},
        "busy_by_function": {k: round(v / busy, 3) for k, v in own_fn.most_common(top)},
        "busy_under_our_function": {k: round(v / busy, 3) for k, v in ours.most_common(top)},
    }


def notes(label: str, summary: dict[str, Any]) -> str:
    """One readable line: `<label>: idle 40%; busy: sqlalchemy 30%, asyncpg 12%, ...`."""
    if not summary.get("samples"):
        return f"{label}: not profiled (py-spy unavailable)"
    parts = ", ".join(f"{k} {v:.0%}" for k, v in list(summary["busy_by_package"].items())[:6])
    under = ", ".join(f"{k} {v:.0%}" for k, v in list(summary["busy_under_our_function"].items())[:6])
    return f"{label}: GIL-busy time by package: {parts}; under our functions: {under}"
