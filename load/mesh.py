"""Start mesh processes on free ports for a load test or a benchmark and wait until they serve.

`EmbeddedMesh.start()` runs `python -m services.embedded` (the four services and the gateway in one
process, SQLite under a temporary data directory); `spawn()` starts any `python -m <module>`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from load.ports import free_port
from services.platform.settings import SERVICE_NAMES

__all__ = ["ROOT", "EmbeddedMesh", "Ports", "free_port", "spawn", "stop", "wait_ready"]

ROOT = Path(__file__).resolve().parents[1]
# What a listener's log says when its port was taken (grpc.aio; the gateway's and admin's HTTP
# listeners), lower case.
BIND_FAILED = ("failed to bind to address", "address already in use")


@dataclass
class Ports:
    """One free port per service, the gateway and the admin (/metrics) listener."""

    services: dict[str, int] = field(default_factory=lambda: {name: free_port() for name in SERVICE_NAMES})
    gateway: int = field(default_factory=free_port)
    admin: int = field(default_factory=free_port)

    def env(self) -> dict[str, str]:
        """FOUNDRY_* variables that make a process use these ports."""
        env = {f"FOUNDRY_{name.upper()}_PORT": str(port) for name, port in self.services.items()}
        env["FOUNDRY_GATEWAY_PORT"] = str(self.gateway)
        env["FOUNDRY_METRICS_PORT"] = str(self.admin)
        return env

    def load_env(self) -> dict[str, str]:
        """FOUNDRY_LOAD_* variables that point the load users at these ports."""
        return {
            "FOUNDRY_LOAD_ORGANIZATION_TARGET": f"127.0.0.1:{self.services['organization']}",
            "FOUNDRY_LOAD_TASK_TARGET": f"127.0.0.1:{self.services['task']}",
            "FOUNDRY_LOAD_GITHUB_DATA_TARGET": f"127.0.0.1:{self.services['github_data']}",
            "FOUNDRY_LOAD_GATEWAY_URL": f"http://127.0.0.1:{self.gateway}",
        }


def spawn(
    module: str, env: Mapping[str, str], *, log_path: Path, args: Sequence[str] = ()
) -> subprocess.Popen[bytes]:
    """Start `python -m module *args` from the repository root with `env` over ours; output to `log_path`."""
    full_env = {**os.environ, "GRPC_VERBOSITY": "ERROR", **env}
    with log_path.open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", module, *args],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """SIGTERM (the process drains), then SIGKILL after `timeout` seconds."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def grpc_ready(target: str) -> bool:
    """True when the service at `target` answers the `readiness` health check with SERVING."""
    try:
        with grpc.insecure_channel(target) as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service="readiness"), timeout=2
            )
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def http_ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/readyz", timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_ready(
    grpc_targets: list[str], http_urls: list[str], proc: subprocess.Popen[bytes] | None, timeout: float = 90
) -> None:
    """Block until every target is ready.

    Raises RuntimeError if `proc` exits first, TimeoutError after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    pending = [*grpc_targets, *http_urls]
    while pending:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited early with code {proc.returncode}")
        pending = [t for t in pending if not (http_ready(t) if t.startswith("http") else grpc_ready(t))]
        if pending and time.monotonic() > deadline:
            raise TimeoutError(f"not ready after {timeout:g} s: {pending}")
        if pending:
            time.sleep(0.2)


class _PortTaken(RuntimeError):
    """The embedded mesh exited because another process held one of its ports."""


@dataclass
class EmbeddedMesh:
    """A `python -m services.embedded` process on free ports with its own data directory."""

    ports: Ports
    proc: subprocess.Popen[bytes]
    workdir: Path
    owns_workdir: bool

    @property
    def log(self) -> Path:
        return self.workdir / "embedded.log"

    @staticmethod
    def start(
        env: Mapping[str, str] | None = None, *, workdir: Path | None = None, attempts: int = 3
    ) -> EmbeddedMesh:
        """Start the process (extra FOUNDRY_* settings in `env`) and wait until all five listeners serve.
        A port another process took between its choice and the bind starts it again on new ports, up
        to `attempts` starts. Raises RuntimeError (with the log's tail) when it does not start."""
        if attempts < 1:
            raise ValueError(f"attempts must be at least 1, not {attempts}")
        for _ in range(attempts - 1):
            try:
                return EmbeddedMesh._start(env, workdir)
            except _PortTaken as exc:
                print(f"{exc}\nstarting again on new ports", file=sys.stderr)
        return EmbeddedMesh._start(env, workdir)

    @staticmethod
    def _start(env: Mapping[str, str] | None, workdir: Path | None) -> EmbeddedMesh:
        owns = workdir is None
        workdir = workdir or Path(tempfile.mkdtemp(prefix="foundry-mesh-"))
        workdir.mkdir(parents=True, exist_ok=True)
        ports = Ports()
        full = {
            **ports.env(),
            "FOUNDRY_DATA_DIR": str(workdir / "data"),
            "FOUNDRY_LOG_FORMAT": "console",
            "FOUNDRY_LOG_LEVEL": "WARNING",
            "FOUNDRY_GATEWAY__PUBLIC_URL": f"http://127.0.0.1:{ports.gateway}",
            **(env or {}),
        }
        proc = spawn("services.embedded", full, log_path=workdir / "embedded.log")
        mesh = EmbeddedMesh(ports, proc, workdir, owns)
        try:
            wait_ready(
                [f"127.0.0.1:{p}" for p in ports.services.values()],
                [f"http://127.0.0.1:{ports.gateway}"],
                proc,
            )
        except (RuntimeError, TimeoutError) as exc:
            stop(proc)
            log = mesh.log.read_text(errors="replace")  # before stop() removes the directory
            mesh.stop()
            lines = log.splitlines()
            taken = "\n".join(dict.fromkeys(ln for ln in lines if any(m in ln.lower() for m in BIND_FAILED)))
            error = _PortTaken if taken else RuntimeError
            raise error(f"embedded mesh did not start: {exc}\n{taken or log[-3000:]}") from exc
        return mesh

    def target(self, service: str) -> str:
        return f"127.0.0.1:{self.ports.services[service]}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    def stop(self) -> None:
        """Stop the process; remove its data (and the work directory when this mesh made it)."""
        stop(self.proc)
        shutil.rmtree(self.workdir if self.owns_workdir else self.workdir / "data", ignore_errors=True)
