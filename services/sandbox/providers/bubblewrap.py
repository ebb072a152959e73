"""The `bubblewrap` provider: the `local` layout, with every sandbox command confined by bubblewrap.

Each agent, `CreateProcess` process and git command on the checkout starts as

    bwrap --unshare-all --die-with-parent --new-session --uid 1000 --gid 1000 ... -- argv

and so gets (see README "Isolation"):
- its own mount namespace: the checkout read-write at `/workspace`, the sandbox's own `/tmp` and
  `$HOME` (`/home/agent`, kept across agent restarts), the toolchain read-only (`/usr`, CA
  certificates, the Python the service runs and its packages, the agents' node_modules); nothing
  else of the host: no data directory, no other sandbox, no service configuration;
- its own PID namespace (`/proc` shows only the sandbox's processes; when the sandbox's first process
  dies the kernel kills every other one, which is how teardown leaves nothing behind), an
  unprivileged uid inside;
- the environment it is given and nothing else: bwrap starts from an environment built from an
  allowlist plus the call's own variables (the task's credentials), never the service's. Variables
  go through the environment, never argv, so no secret shows in a process list;
- its own network namespace (only its own loopback; nothing of the host's, so no PostgreSQL,
  RabbitMQ or mesh port). Outbound traffic, when the egress policy allows any, goes through
  `EgressProxy` on a unix socket bound in, forwarded by socat from `127.0.0.1:3128` inside;
- limits set before exec (`Limits`, with util-linux `prlimit`): address space, CPU seconds, file
  size, open files, no core files; the number of processes through a pids cgroup where this host
  lets the service make one.

Service-side steps that must see the host (a fresh clone, moving it into place, pushing from the
service-owned push repository) run unconfined (`confined=False`) and never read what an agent wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.platform.logging import get_logger
from services.sandbox.domain.models import SandboxKey
from services.sandbox.providers.egress import EgressPolicy, EgressProxies
from services.sandbox.providers.local import Command, LocalProvider

log = get_logger(__name__)

WORKSPACE = "/workspace"
HOME = "/home/agent"
EGRESS_SOCKET = "/run/foundry/egress.sock"
PUSH_MOUNT = "/run/foundry/push.git"
FETCH_MOUNT = "/run/foundry/fetch.git"
PROXY_PORT = 3128
UID = 1000
# Variables a sandbox process may inherit from the service's environment (values, not secrets).
ENV_ALLOWLIST = ("LANG", "LC_ALL", "TERM", "TZ")
# Read-only system paths every sandbox gets (missing ones are skipped).
SYSTEM_PATHS = ("/usr", "/etc/ssl", "/etc/ca-certificates", "/etc/alternatives", "/etc/localtime")
_MIB = 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """Per-sandbox limits. Sizes in bytes, time in CPU seconds; 0 means no limit."""

    max_processes: int = 256
    memory_bytes: int = 4096 * _MIB
    cpu_seconds: int = 0
    file_size_bytes: int = 1024 * _MIB
    open_files: int = 4096


def available(bwrap: str = "bwrap") -> str | None:
    """Why bubblewrap cannot confine here (None when it can): a real probe with the namespaces used."""
    path = shutil.which(bwrap)
    if path is None:
        return "bwrap is not installed (Debian package `bubblewrap`)"
    probe = [path, "--unshare-all", "--die-with-parent", "--ro-bind", "/usr", "/usr", "--proc", "/proc"]
    probe += [
        "--symlink",
        "usr/bin",
        "/bin",
        "--symlink",
        "usr/lib",
        "/lib",
        "--symlink",
        "usr/lib64",
        "/lib64",
    ]
    try:
        result = subprocess.run([*probe, "true"], capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"bwrap failed to start: {exc}"
    if result.returncode != 0:
        return f"bwrap cannot create namespaces here: {result.stderr.strip() or result.returncode}"
    return None


def toolchain_paths() -> list[str]:
    """Read-only paths the agents need beyond /usr: this Python (venv and base install), the
    `services` package (the offline agent runs from it) and the project's npm tools (real agents)."""
    import services

    package = Path(services.__file__).resolve().parent
    paths = [sys.prefix, sys.base_prefix, str(package), str(package.parent / ".tools")]
    return [str(Path(p).resolve()) for p in paths if Path(p).exists()]


class _PidsCgroup:
    """A pids cgroup per sandbox (cgroup v1 `pids` hierarchy, or v2 with the pids controller) when
    this host lets the service create one; inert otherwise (the README says what then holds)."""

    def __init__(self) -> None:
        self.base = self._find()

    @staticmethod
    def _find() -> Path | None:
        v1, v2 = Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")
        controllers = v2 / "cgroup.controllers"
        if (v1 / "cgroup.procs").exists():
            candidate, enable = v1, False
        elif controllers.exists() and "pids" in controllers.read_text(errors="replace").split():
            candidate, enable = v2, True
        else:
            return None
        base = candidate / "foundry-sandboxes"
        try:
            base.mkdir(exist_ok=True)
            if enable:
                (base / "cgroup.subtree_control").write_text("+pids")
        except OSError:
            return None
        return base

    def path(self, sandbox_dir: Path, max_processes: int) -> Path | None:
        if self.base is None or max_processes <= 0:
            return None
        group = self._group(sandbox_dir)
        try:
            group.mkdir(exist_ok=True)
            (group / "pids.max").write_text(str(max_processes))
        except OSError:
            return None
        return group

    def _group(self, sandbox_dir: Path) -> Path:
        """One group per sandbox directory (ids repeat across services sharing a host; paths do not)."""
        assert self.base is not None
        digest = hashlib.sha256(str(sandbox_dir).encode()).hexdigest()[:12]
        return self.base / f"{sandbox_dir.name}-{digest}"

    def kill_all(self, sandbox_dir: Path) -> None:
        if self.base is None:
            return
        group = self._group(sandbox_dir)
        for _ in range(20):
            try:
                pids = [int(p) for p in (group / "cgroup.procs").read_text().split()]
            except OSError:
                return
            if not pids:
                break
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, 9)
        with contextlib.suppress(OSError):
            group.rmdir()


class BubblewrapProvider(LocalProvider):
    """Sandboxes as directories on this machine, their commands confined by bubblewrap.

    Args:
        root: the directory holding one folder per sandbox.
        base_env: the environment of unconfined service-side commands.
        toolchain: extra read-only paths (bound at the same path inside).
        limits: per-sandbox limits.
        egress: the outbound network policy and its proxies.
    """

    name = "bubblewrap"

    def __init__(
        self,
        root: Path,
        *,
        base_env: Mapping[str, str],
        toolchain: Sequence[str],
        limits: Limits,
        egress: EgressProxies,
        create_delay_seconds: float = 0.0,
        bwrap: str = "bwrap",
    ) -> None:
        super().__init__(root, create_delay_seconds=create_delay_seconds, base_env=base_env)
        self._bwrap = shutil.which(bwrap) or bwrap
        self._toolchain = [p for p in toolchain if Path(p).exists()]
        self._limits = limits
        self._egress = egress
        self._cgroups = _PidsCgroup()
        self._system = [p for p in SYSTEM_PATHS if Path(p).exists()]
        inside_bins = [str(Path(p) / "bin") for p in self._toolchain if (Path(p) / "bin").is_dir()]
        node_bins = [str(Path(p) / "node_modules" / ".bin") for p in self._toolchain if p.endswith("/.tools")]
        self._path_var = ":".join([*inside_bins, *node_bins, "/usr/local/bin", "/usr/bin", "/bin"])
        self._host_env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWLIST}
        log.info(
            "sandbox_confinement",
            provider=self.name,
            pids_cgroup=str(self._cgroups.base) if self._cgroups.base else "unavailable (RLIMIT only)",
            egress=egress.policy.value,
        )

    async def create(self, key: SandboxKey, *, egress: str = "") -> str:
        provider_id = await super().create(key)
        base = Path(self.root(provider_id))
        # Kept beside (never inside) what the sandbox can see, so it survives restarts unchanged.
        (base / "egress").write_text(egress or self._egress.policy.value)
        for folder in ("home", "tmp", "etc"):
            (base / folder).mkdir(exist_ok=True)
        (base / "etc" / "passwd").write_text(
            f"root:x:0:0::/root:/bin/sh\nagent:x:{UID}:{UID}::{HOME}:/bin/sh\nnobody:x:65534:65534::/:/bin/sh\n"
        )
        (base / "etc" / "group").write_text(f"root:x:0:\nagent:x:{UID}:\nnogroup:x:65534:\n")
        return provider_id

    async def close(self) -> None:
        await self._egress.close_all()

    def _policy_of(self, base: Path) -> EgressPolicy:
        try:
            return EgressPolicy(base.joinpath("egress").read_text().strip())
        except (OSError, ValueError):
            return self._egress.policy  # a sandbox from before policies were recorded

    def _host_of(self, base: Path, inside: str) -> Path | None:
        """The host path of an absolute path inside the sandbox (None when nothing is bound there).
        The most specific mount wins, as in the sandbox (the toolchain is bound over /tmp)."""
        if inside.startswith(("/bin/", "/sbin/")):
            inside = "/usr" + inside
        mounts = [(WORKSPACE, base / "work"), ("/tmp", base / "tmp"), (HOME, base / "home")]
        mounts += [(p, Path(p)) for p in (*self._system, *self._toolchain)]
        for mount, host in sorted(mounts, key=lambda m: len(m[0]), reverse=True):
            if inside == mount or inside.startswith(mount + "/"):
                return host / inside[len(mount) :].lstrip("/")
        return None

    def _check_executable(self, base: Path, cwd: str, command: str, env: Mapping[str, str]) -> None:
        """Raise FileNotFoundError, as starting it unconfined would, when `command` is not there inside
        (bwrap itself would start and only then fail, which callers could not tell from a failing run)."""
        if "/" in command:
            candidates = [command if command.startswith("/") else f"{cwd}/{command}"]
        else:
            candidates = [f"{d}/{command}" for d in env.get("PATH", "").split(":") if d.startswith("/")]
        for inside in candidates:
            host = self._host_of(base, os.path.normpath(inside))
            if host is not None and host.is_file() and os.access(host, os.X_OK):
                return
        raise FileNotFoundError(2, "No such file or directory", command)

    async def destroy(self, provider_id: str) -> None:
        self._cgroups.kill_all(Path(self.root(provider_id)))
        await self._egress.close(provider_id)
        await super().destroy(provider_id)

    def sandbox_path(self, provider_id: str, path: str) -> str:
        parts = Path(path).parts
        if parts[:1] == ("work",):
            return str(Path(WORKSPACE, *parts[1:]))
        if parts[:1] == ("push.git",):
            return str(Path(PUSH_MOUNT, *parts[1:]))
        if parts[:1] == ("fetch.git",):
            return str(Path(FETCH_MOUNT, *parts[1:]))
        raise ValueError(f"{path!r} is not visible inside the sandbox")

    async def _command(
        self, provider_id: str, argv: Sequence[str], cwd: str, env: Mapping[str, str] | None, confined: bool
    ) -> Command:
        if not confined:
            return await super()._command(provider_id, argv, cwd, env, confined)
        base = Path(self.root(provider_id))
        await self._egress.ensure(provider_id, await asyncio.to_thread(self._policy_of, base))
        inside_cwd = self.sandbox_path(provider_id, cwd or "work")
        command = argv[0]
        args = [self._bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
        args += ["--uid", str(UID), "--gid", str(UID), "--hostname", "sandbox"]
        for path in self._system:
            args += ["--ro-bind", path, path]
        args += ["--symlink", "usr/bin", "/bin", "--symlink", "usr/sbin", "/sbin"]
        args += ["--symlink", "usr/lib", "/lib", "--symlink", "usr/lib64", "/lib64"]
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--ro-bind", str(base / "etc" / "passwd"), "/etc/passwd"]
        args += ["--ro-bind", str(base / "etc" / "group"), "/etc/group"]
        args += ["--bind", str(base / "tmp"), "/tmp", "--bind", str(base / "home"), HOME]
        # After /tmp and $HOME: a toolchain under /tmp (a checkout of this project there) stays visible.
        for path in self._toolchain:
            args += ["--ro-bind", path, path]
        if (base / "work").is_dir():
            args += ["--bind", str(base / "work"), WORKSPACE]
        push = base / "push.git"
        if push.is_dir():  # config and hooks stay the service's: only objects and refs are writable
            args += ["--ro-bind", str(push), PUSH_MOUNT]
            args += ["--bind", str(push / "objects"), f"{PUSH_MOUNT}/objects"]
            args += ["--bind", str(push / "refs"), f"{PUSH_MOUNT}/refs"]
        fetch = base / "fetch.git"
        if fetch.is_dir():  # the service's fresh clone, read-only
            args += ["--ro-bind", str(fetch), FETCH_MOUNT]
        sandbox_env = {
            **self._host_env,
            "PATH": self._path_var,
            "HOME": HOME,
            "TMPDIR": "/tmp",
            "USER": "agent",
            "LOGNAME": "agent",
            "SHELL": "/bin/sh",
            "LANG": self._host_env.get("LANG", "C.UTF-8"),
        }
        socket = self._egress.socket(provider_id)
        if socket is not None:
            args += ["--bind", str(socket), EGRESS_SOCKET]
            proxy = f"http://127.0.0.1:{PROXY_PORT}"
            for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"):
                sandbox_env[name] = proxy
            sandbox_env["NO_PROXY"] = sandbox_env["no_proxy"] = ""
            forward = (
                f"socat TCP-LISTEN:{PROXY_PORT},bind=127.0.0.1,fork,reuseaddr UNIX-CONNECT:{EGRESS_SOCKET} "
                '2>/dev/null & exec "$@"'
            )
            argv = ["/bin/sh", "-c", forward, "sh", *argv]
        sandbox_env.update(env or {})
        self._check_executable(base, inside_cwd, command, sandbox_env)
        args += ["--chdir", inside_cwd, "--", *argv]
        cgroup = self._cgroups.path(base, self._limits.max_processes)
        return Command([*_limit_prefix(self._limits, cgroup), *args], base, sandbox_env)


def _limit_prefix(limits: Limits, cgroup: Path | None) -> list[str]:
    """The commands that start bwrap: join the sandbox's pids cgroup (a shell writing its own pid,
    then exec), set the limits (util-linux `prlimit`). Commands rather than a preexec hook, so the
    service never forks a copy of itself (unsafe with gRPC's threads) to start a sandbox command."""
    prefix: list[str] = []
    if cgroup is not None:
        prefix += ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(cgroup / "cgroup.procs")]
    prefix += ["prlimit", "--core=0"]
    for flag, value in (
        ("--as", limits.memory_bytes),
        ("--cpu", limits.cpu_seconds),
        ("--fsize", limits.file_size_bytes),
        ("--nofile", limits.open_files),
    ):
        if value > 0:
            prefix.append(f"{flag}={value}")
    return [*prefix, "--"]


__all__ = ["BubblewrapProvider", "EgressPolicy", "Limits", "available", "toolchain_paths"]
