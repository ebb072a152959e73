"""`python -m bench` (`make bench`): run every benchmark, write bench/results/<name>.json, print a table.

    python -m bench [--quick] [--only NAME[,NAME...]]

`--quick` runs small versions (seconds each, for CI); the full run takes a few minutes. The
organization summary benchmark (bench/org_summary.py, issue 5) is included when present; its
`run()` gets `quick=` if it accepts it, and is skipped under --quick otherwise (it loads 10k tasks).
Exit code 0 even when a target is missed (the table and JSON say so); 1 when a benchmark crashed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import os
import sys
import tempfile
import time
import traceback
from typing import Any

ORDER = (
    "create_task_latency",
    "org_summary",
    "event_latency",
    "summary_latency",
    "read_throughput",
    "sse_fanout",
    "task_throughput",
    "sandbox_confinement",
    "first_output",
    "agent_ready",
)

# The meshes started here connect organizations in temporary directories (the dev default allows
# only the home directory); their processes inherit this.
os.environ.setdefault("FOUNDRY_LOCAL_ROOTS", json.dumps([tempfile.gettempdir()]))
# As `make bench` (the Makefile exports it): the meshes' processes then run on uvloop, as deployed
# (services.platform.process._uvloop_is_safe); without it a direct `python -m bench` measured them on
# asyncio's pure-Python loop.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")


def headline(result: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, target, met) rows of one result, from its `targets` (or org_summary's own shape)."""
    rows = []
    for key, t in (result.get("targets") or {}).items():
        rows.append((f"{key} = {t['value']}", t["target"], "yes" if t["met"] else "NO"))
    if not rows and result.get("benchmark") == "org_summary":
        calls = result.get("cross_service_calls")
        points = result.get("get_organization_summary") or []
        last = points[-1] if points else {}
        rows.append(
            (
                f"{last.get('tasks')} tasks: {last.get('get_summary_median_ms')} ms, calls={calls}",
                "linear in size, 0 calls into the task service",
                "yes" if calls == 0 else "NO",
            )
        )
    return rows


def run_one(name: str, quick: bool) -> dict[str, Any] | None:
    if importlib.util.find_spec(f"bench.{name}") is None:
        return None
    module = importlib.import_module(f"bench.{name}")
    accepts_quick = "quick" in inspect.signature(module.run).parameters
    if quick and not accepts_quick:
        print(f"bench: {name} skipped under --quick (its run() has no quick mode)", flush=True)
        return {"benchmark": name, "skipped": "no quick mode"}
    result: dict[str, Any] = module.run(quick=quick) if accepts_quick else module.run()
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description="Run the benchmarks.")
    p.add_argument("--quick", action="store_true", help="small versions for CI")
    p.add_argument("--only", default="", help="comma-separated benchmark names")
    args = p.parse_args(argv)
    names = [n for n in ORDER if not args.only or n in args.only.split(",")]
    table: list[tuple[str, str, str, str, str]] = []
    crashed = False
    for name in names:
        print(f"bench: {name} ...", flush=True)
        began = time.perf_counter()
        try:
            result = run_one(name, args.quick)
        except Exception:
            traceback.print_exc()
            crashed = True
            table.append((name, "CRASHED", "", "", f"{time.perf_counter() - began:.0f}s"))
            continue
        seconds = f"{time.perf_counter() - began:.0f}s"
        if result is None or "skipped" in (result or {}):
            table.append((name, "skipped", "", "", seconds))
            continue
        for i, (figure, goal, met) in enumerate(headline(result) or [("(no targets)", "", "")]):
            table.append((name if i == 0 else "", figure, goal, met, seconds if i == 0 else ""))
    widths = [
        max(len(row[i]) for row in [("benchmark", "figure", "target", "met", "time"), *table])
        for i in range(5)
    ]
    for row in [("benchmark", "figure", "target", "met", "time"), *table]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 1 if crashed else 0


if __name__ == "__main__":
    sys.exit(main())
