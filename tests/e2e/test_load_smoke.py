"""`python -m load --spawn` end to end: a short headless locust run against an embedded mesh it
starts itself writes the CSV/HTML reports, with every request type of the mix present and none failed."""

from __future__ import annotations

import csv
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from load import mesh

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
MAIN_REQUESTS = {
    ("grpc", "OrganizationService/GetOrganizationSummary"),
    ("grpc", "TaskService/GetTask"),
    ("grpc-watch", "TaskService/WatchTask"),
    ("GET", "/v1/[org]/summary"),
    ("GET", "/v1/[task]"),
    ("SSE", "/v1/stream"),
}


def test_short_spawned_load_run_writes_reports_without_failures(tmp_path: Path) -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "load",
            "--spawn",
            "--users",
            "4",
            "--spawn-rate",
            "4",
            "--run-time",
            "12s",
            "--stream-seconds",
            "2",
            "--results",
            str(tmp_path),
            "--",
            "--exit-code-on-error",
            "1",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=150,
        env={**_env(), "FOUNDRY_LOAD_WAIT_SECONDS": "0.5"},
    )
    output = run.stdout[-4000:] + run.stderr[-4000:]
    assert run.returncode == 0, output
    [report] = list(tmp_path.iterdir())
    assert (report / "report.html").stat().st_size > 0
    with (report / "load_stats.csv").open() as f:
        rows = {(r["Type"], r["Name"]): r for r in csv.DictReader(f)}
    missing = MAIN_REQUESTS - rows.keys()
    assert not missing, f"request types never made: {missing}\n{output}"
    failed = {key: row["Failure Count"] for key, row in rows.items() if row["Failure Count"] != "0"}
    assert not failed, f"failed requests: {failed}\n{output}"
    assert int(rows[("", "Aggregated")]["Request Count"]) > 30


def _env() -> dict[str, str]:
    import os

    return {**os.environ, "GRPC_VERBOSITY": "ERROR"}


@pytest.mark.parametrize("listener", ["task", "gateway"])
def test_the_embedded_mesh_starts_again_on_new_ports_when_one_was_taken(
    monkeypatch: pytest.MonkeyPatch, listener: str
) -> None:
    """`EmbeddedMesh.start` (what `--spawn` and the benchmarks use): another process holds the task
    service's (gRPC) or the gateway's (HTTP) port (CI: a port chosen, then taken before the bind); the
    mesh starts on new ports, and when every start meets a taken port, the error names it."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        made: list[mesh.Ports] = []
        real = mesh.Ports

        def ports(first_taken: bool) -> mesh.Ports:
            chosen = real()
            if not (first_taken and made):
                if listener == "gateway":
                    chosen.gateway = taken
                else:
                    chosen.services["task"] = taken
            made.append(chosen)
            return chosen

        monkeypatch.setattr(mesh, "Ports", lambda: ports(True))
        started = mesh.EmbeddedMesh.start()
        try:
            assert len(made) == 2 and taken not in (started.ports.gateway, *started.ports.services.values())
            assert started.proc.poll() is None
        finally:
            started.stop()

        made.clear()
        monkeypatch.setattr(mesh, "Ports", lambda: ports(False))
        with pytest.raises(RuntimeError, match=f"127.0.0.1:{taken}"):
            mesh.EmbeddedMesh.start(attempts=2)
        assert len(made) == 2
