"""`python -m bench --quick` end to end: every benchmark runs its small version against real
processes and writes a result file with machine info, inputs, figures and judged targets."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.servers import SERVERS

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
FIGURES = {
    "create_task_latency": {"create_task", "bare_insert", "p99_ratio"},
    "event_latency": {"grpc_watch", "sse_gateway"},
    "summary_latency": {"overall", "per_kind", "archive_final", "provisioning"},
    "read_throughput": {"get_task_rps", "bare_echo_rps", "ratio"},
    "sse_fanout": {"upstream_streams", "gateway_kb_per_subscriber", "fanout_one_change"},
    "task_throughput": {"tasks_per_second", "tasks_ready", "create_task_latency"},
    "sandbox_confinement": {"local", "bubblewrap"},
    "first_output": {"returned", "session_ready", "first_output"},
}


def test_quick_bench_writes_every_result_with_figures_and_targets(tmp_path: Path) -> None:
    # Two `python -m bench --quick --only …` runs side by side: quick figures mean nothing, so the
    # two groups may share the machine; the suite saves about half this test's time.
    env = {
        **os.environ,
        "GRPC_VERBOSITY": "ERROR",
        "FOUNDRY_BENCH_RESULTS": str(tmp_path),
        "FOUNDRY_BENCH_PG_ADMIN_DSN": SERVERS.postgres_dsn(),  # the run's server, not the machine's
    }
    names = list(FIGURES)
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "bench", "--quick", "--only", ",".join(names[i::2])],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for i in range(2)
    ]
    stdout = ""
    for proc in runs:
        out, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, out[-3000:] + err[-3000:]
        stdout += out
    for name, figures in FIGURES.items():
        result = json.loads((tmp_path / f"{name}.json").read_text())
        assert result["benchmark"] == name and result["quick"] is True
        assert result["machine"]["nproc"] >= 1 and result["machine"]["python"]
        assert result["inputs"], name
        assert figures <= result["figures"].keys(), (name, result["figures"].keys())
        for key, judged in result["targets"].items():
            assert isinstance(judged["met"], bool) and isinstance(judged["value"], (int, float)), (name, key)
        assert "profile_notes" in result
    fanout = json.loads((tmp_path / "sse_fanout.json").read_text())["figures"]
    assert fanout["upstream_streams"] == 1, "subscribers of one organization must share one upstream Watch"
    assert fanout["fanout_one_change"]["received"] == fanout["subscribers_attached"]
    summary = json.loads((tmp_path / "summary_latency.json").read_text())["figures"]
    kinds = ("create", "rename", "archive", "pr_opened", "pr_edited", "pr_closed")
    assert {kind: summary["per_kind"][kind]["n"] for kind in kinds} == dict.fromkeys(kinds, 3)
    assert summary["overall"]["n"] == 18 and summary["provisioning"]["n"] == 3
    assert "task_throughput" in stdout and "target" in stdout  # the printed tables
