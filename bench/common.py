"""Shared pieces of the benchmarks: machine info, latency statistics, the result file and the
signed caller metadata used by every client.

Every benchmark's `run(quick: bool) -> dict` returns (and writes to bench/results/<name>.json)

    {"benchmark": name, "quick": bool, "machine": {...}, "inputs": {...}, "figures": {...},
     "targets": {key: {"target": text, "value": number, "met": bool}}, "profile_notes": text}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from services.platform.identity import Caller, sign
from services.platform.settings import Settings

RESULTS = Path(os.environ.get("FOUNDRY_BENCH_RESULTS") or Path(__file__).parent / "results")


def machine() -> dict[str, Any]:
    """nproc, CPU model, Python and platform of this machine."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def percentile(values: list[float], p: float) -> float:
    """The `p`-th percentile (0..100) by linear interpolation; 0.0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    k = (len(ordered) - 1) * p / 100
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def latency_summary(seconds: list[float]) -> dict[str, float]:
    """{n, p50_ms, p99_ms, mean_ms, max_ms} of latencies given in seconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 2),
        "p99_ms": round(percentile(ms, 99), 2),
        "mean_ms": round(statistics.fmean(ms), 2) if ms else 0.0,
        "max_ms": round(max(ms), 2) if ms else 0.0,
    }


def target(text: str, value: float, met: bool) -> dict[str, Any]:
    return {"target": text, "value": value, "met": bool(met)}


def write(
    name: str,
    *,
    quick: bool,
    inputs: dict[str, Any],
    figures: dict[str, Any],
    targets: dict[str, dict[str, Any]],
    profile_notes: str = "",
) -> dict[str, Any]:
    """Write bench/results/<name>.json and return its content."""
    result = {
        "benchmark": name,
        "quick": quick,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "inputs": inputs,
        "figures": figures,
        "targets": targets,
        "profile_notes": profile_notes,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def caller_metadata(caller: Caller, ttl_seconds: float = 3600) -> tuple[tuple[str, str], ...]:
    """Signed identity metadata for `caller` under this machine's FOUNDRY_INTERNAL_AUTH_SECRET."""
    return sign(caller, Settings().internal_auth_secret.get_secret_value(), ttl_seconds=ttl_seconds)


@contextlib.contextmanager
def scratch(prefix: str) -> Iterator[str]:
    """A temporary directory for one benchmark (logs, SQLite, repos); kept and printed when
    FOUNDRY_BENCH_KEEP=1, for looking at the service logs afterwards."""
    if os.environ.get("FOUNDRY_BENCH_KEEP") == "1":
        path = tempfile.mkdtemp(prefix=prefix)
        print(f"bench: keeping {path}", flush=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as path:
        yield path
