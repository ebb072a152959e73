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
  allowlist plus the call's own variables (the task's credentials), never the service's; agents and
  processes (not service-side commands) also get the model API keys named in `MODEL_CREDENTIALS` when
  the service has them. Variables go through the environment, never argv, so no secret shows in a
  process list;
- its own network namespace (only its own loopback; nothing of the host's, so no PostgreSQL,
  RabbitMQ or mesh port). Outbound traffic, when the egress policy allows any, goes through
  `EgressProxy` on a unix socket bound in, forwarded by socat from `127.0.0.1:3128` inside;
- limits set before exec (`Limits`, with util-linux `prlimit`): address space, CPU seconds, file
  size, open files, no core files; per sandbox, the number of processes (pids cgroup) and the memory
  of all its processes together (memory cgroup) where this host lets the service make the groups;
- no life beyond the service's: every command starts under `setpriv --pdeathsig KILL` and first checks
  that its parent is still the service, so bwrap is SIGKILLed with the service from its first
  instruction (its own `--die-with-parent` comes only after it has cloned the sandbox: a service
  killed in between, as the e2e kill tests do, left the whole sandbox running under init, its socat
  forwarder included). bwrap has a window of its own, between cloning the sandbox's pid 1 and that
  process's `PR_SET_PDEATHSIG` (tens of ms: the mounts), where the service's death orphans pid 1 and
  the sandbox runs on: `_Reaper`, a small process started with the provider, SIGKILLs every bwrap of
  this service life (found by a token in its arguments, `--unsetenv SANDBOX_LIFE_...`, a no-op) as
  soon as the service is gone, and the next start kills any bwrap still binding a folder of this
  sandbox root (`kill_leftovers`). By arguments, not environment: the sandbox's pid 1 is bwrap, whose
  initial environment the sandbox can read (`/proc/1/environ`).

Service-side steps that must see the host (a fresh clone, moving it into place, pushing from the
service-owned push repository) run unconfined (`confined=False`) and never read what an agent wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.platform.logging import get_logger
from services.sandbox.domain.models import SandboxKey
from services.sandbox.providers.egress import EgressPolicy, EgressProxies
from services.sandbox.providers.local import (
    Command,
    LocalProvider,
    _cmdline,
    _parent,
    _stat,
    controlling_tty,
    kill_where,
    signal_pinned,
)

log = get_logger(__name__)

WORKSPACE = "/workspace"
HOME = "/home/agent"
EGRESS_SOCKET = "/run/foundry/egress.sock"
PUSH_MOUNT = "/run/foundry/push.git"
FETCH_MOUNT = "/run/foundry/fetch.git"
PROXY_PORT = 3128
FORWARD_LISTEN = f"TCP-LISTEN:{PROXY_PORT},bind=127.0.0.1,fork,reuseaddr"  # the egress forwarder's socat
UID = 1000
# Variables a sandbox process may inherit from the service's environment (values, not secrets).
ENV_ALLOWLIST = ("LANG", "LC_ALL", "TERM", "TZ")
# Model API credentials the operator gives the service for its agents: handed to what a sandbox spawns
# (its agents, and so whatever they or a user run beside them can read), never to service-side commands.
MODEL_CREDENTIALS = ("ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN", "OPENAI_API_KEY", "CODEX_API_KEY")
# Read-only system paths every sandbox gets (missing ones are skipped).
SYSTEM_PATHS = ("/usr", "/etc/ssl", "/etc/ca-certificates", "/etc/alternatives", "/etc/localtime")
_MIB = 1024 * 1024
# How long a signal other than SIGKILL waits for a sandbox just started to reach its command (its
# mounts take tens of ms); a sandbox still setting up after it is killed instead.
SETUP_WAIT_SECONDS = 2.0
# The reaper: blocks on a pipe only the service holds the write end of; at its end (the service died,
# or closed the provider), SIGKILLs every other process with argv[1] among its arguments, pinned by a
# pidfd and checked again (a reused pid is never hit), until a pass finds none. Python's own modules
# only (-I -S): it starts in a few ms and imports nothing of the service.
_REAPER = r"""
import os, signal, sys, time
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
    signal.signal(s, signal.SIG_IGN)
token, fd, me = sys.argv[1].encode(), int(sys.argv[2]), str(os.getpid())
while True:
    try:
        if not os.read(fd, 4096):
            break
    except InterruptedError:
        continue
def marked(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return token in f.read().split(b"\0")
for _ in range(50):
    found = 0
    for name in os.listdir("/proc"):
        if not name.isdigit() or name == me:
            continue
        try:
            if not marked(name):
                continue
            pidfd = os.pidfd_open(int(name))
        except OSError:
            continue
        try:
            if marked(name):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                found += 1
        except OSError:
            pass
        finally:
            os.close(pidfd)
    if not found:
        break
    time.sleep(0.02)
"""


class _Reaper:
    """Kills this service life's sandboxes when the service is gone, however it went (see the module
    docstring): a child process of its own session, holding the read end of a pipe whose write end
    only this process has (close-on-exec: no command inherits it). `close` ends it the same way."""

    def __init__(self) -> None:
        self.token = f"SANDBOX_LIFE_{os.getpid()}_{os.urandom(8).hex()}"
        read, self._write = os.pipe()  # both non-inheritable; the read end is passed explicitly
        try:
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", _REAPER, self.token, str(read)],
                pass_fds=(read,),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
        finally:
            os.close(read)

    def close(self) -> None:
        """Kill what is left of this life's sandboxes, and let the reaper exit."""
        if self._write >= 0:
            os.close(self._write)
            self._write = -1
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
            self._proc = None


@dataclass(frozen=True)
class Limits:
    """Per-sandbox limits. Sizes in bytes, time in CPU seconds; 0 means no limit."""

    max_processes: int = 256
    memory_bytes: int = 4096 * _MIB  # address space of each process
    sandbox_memory_bytes: int = 2048 * _MIB  # memory of all the sandbox's processes together (cgroup)
    cpu_seconds: int = 0
    file_size_bytes: int = 1024 * _MIB
    open_files: int = 4096


def available(bwrap: str = "bwrap") -> str | None:
    """Why bubblewrap cannot confine here (None when it can): a real probe with the namespaces used."""
    path = shutil.which(bwrap)
    if path is None:
        return "bwrap is not installed (Debian package `bubblewrap`)"
    for tool in ("setpriv", "prlimit"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package `util-linux`)"
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


class _SandboxCgroups:
    """One pids group and one memory group per sandbox, in a `foundry-sandboxes` group at the root of
    each controller's hierarchy (cgroup v1 `/sys/fs/cgroup/<controller>/`, v2 `/sys/fs/cgroup/` with
    the controller enabled below it; in a container with its own cgroup namespace, that root is the
    container's group). A controller this host does not let the service write is inert, with the
    reason (`state`; logged at start, the README says what then holds).

    pids: `pids.max`. memory: v1 `memory.limit_in_bytes` (and `memory.memsw.limit_in_bytes` where swap
    is accounted), v2 `memory.max` (and `memory.swap.max` 0): past it the kernel reclaims, then
    OOM-kills a process of that sandbox only.
    """

    CONTROLLERS = ("pids", "memory")

    def __init__(self, limits: Mapping[str, int], root: Path = Path("/sys/fs/cgroup")) -> None:
        self._limits = dict(limits)
        self._root = root
        self.bases: dict[str, Path] = {}
        self.state: dict[str, str] = {}
        self._made: set[str] = set()
        for controller in self.CONTROLLERS:
            if self._limits.get(controller, 0) <= 0:
                self.state[controller] = "off (no limit configured)"
                continue
            base, why = self._find(controller)
            if base is None:
                self.state[controller] = f"unavailable: {why}"
            else:
                self.bases[controller] = base
                self.state[controller] = str(base)

    def _find(self, controller: str) -> tuple[Path | None, str]:
        v1 = self._root / controller
        if (v1 / "cgroup.procs").exists():
            hierarchy, v2 = v1, False
        elif controller in _read(self._root / "cgroup.controllers").split():
            hierarchy, v2 = self._root, True
        else:
            return None, f"no {controller} controller in {self._root} (neither cgroup v1 nor v2 offers it)"
        base = hierarchy / "foundry-sandboxes"
        try:
            base.mkdir(exist_ok=True)
            if v2:  # the controller must be enabled on the way down (the root's is, where delegated)
                _enable(hierarchy, controller)
                _enable(base, controller)
        except OSError as exc:
            return None, f"cannot make a {controller} group in {hierarchy}: {exc.strerror or exc}"
        return base, ""

    def join(self, sandbox_dir: Path) -> list[Path]:
        """The `cgroup.procs` files a command of `sandbox_dir` joins (its groups made and limited)."""
        procs: list[Path] = []
        for controller, base in self.bases.items():
            group = base / _group_name(sandbox_dir)
            try:
                group.mkdir(parents=True, exist_ok=True)
                _limit(group, controller, self._limits[controller])
            except OSError as exc:
                log.warning("sandbox_cgroup_failed", controller=controller, group=str(group), error=str(exc))
                continue
            self._made.add(group.name)
            procs.append(group / "cgroup.procs")
        return procs

    def kill_all(self, sandbox_dir: Path) -> None:
        """Kill every process in the sandbox's groups, then remove the groups."""
        for base in self.bases.values():
            group = base / _group_name(sandbox_dir)
            for _ in range(20):
                pids = [int(p) for p in _read(group / "cgroup.procs").split()]
                if not pids:
                    break
                for pid in pids:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, 9)
            with contextlib.suppress(OSError):
                group.rmdir()

    def remove_empty(self) -> None:
        """Remove the groups this service made that no process is in any more (a later command
        recreates its sandbox's group); the base is shared with other services on the host: kept."""
        for base in self.bases.values():
            for name in self._made:
                with contextlib.suppress(OSError):
                    (base / name).rmdir()  # the kernel refuses while a process is in it


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def _enable(group: Path, controller: str) -> None:
    if controller not in _read(group / "cgroup.subtree_control").split():
        (group / "cgroup.subtree_control").write_text(f"+{controller}")


def _group_name(sandbox_dir: Path) -> str:
    """One group per sandbox directory (ids repeat across services sharing a host; paths do not)."""
    digest = hashlib.sha256(str(sandbox_dir).encode()).hexdigest()[:12]
    return f"{sandbox_dir.name}-{digest}"


def _limit(group: Path, controller: str, value: int) -> None:
    if controller == "pids":
        (group / "pids.max").write_text(str(value))
    elif (group / "memory.max").exists():  # v2
        (group / "memory.max").write_text(str(value))
        if (group / "memory.swap.max").exists():
            (group / "memory.swap.max").write_text("0")
    else:  # v1: memsw (memory + swap) must stay >= the memory limit, so order the writes
        memsw = group / "memory.memsw.limit_in_bytes"
        current = int(_read(group / "memory.limit_in_bytes").strip() or 0)
        if memsw.exists() and value > current:
            memsw.write_text(str(value))
        (group / "memory.limit_in_bytes").write_text(str(value))
        if memsw.exists():
            memsw.write_text(str(value))


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
        self._cgroups = _SandboxCgroups({"pids": limits.max_processes, "memory": limits.sandbox_memory_bytes})
        self._reaper = _Reaper()
        self._system = [p for p in SYSTEM_PATHS if Path(p).exists()]
        inside_bins = [str(Path(p) / "bin") for p in self._toolchain if (Path(p) / "bin").is_dir()]
        node_bins = [str(Path(p) / "node_modules" / ".bin") for p in self._toolchain if p.endswith("/.tools")]
        self._path_var = ":".join([*inside_bins, *node_bins, "/usr/local/bin", "/usr/bin", "/bin"])
        self._host_env = {k: v for k, v in os.environ.items() if k in ENV_ALLOWLIST}
        self._credentials = {k: v for k, v in os.environ.items() if k in MODEL_CREDENTIALS and v}
        log.info(
            "sandbox_confinement",
            provider=self.name,
            pids_cgroup=self._cgroups.state["pids"],
            memory_cgroup=self._cgroups.state["memory"],
            sandbox_memory_mb=limits.sandbox_memory_bytes // _MIB,
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
        await asyncio.to_thread(self._reaper.close)
        await self._egress.close_all()
        await asyncio.to_thread(self._cgroups.remove_empty)

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
            if host is not None and _through_link(base, host):
                return  # the sandbox's own link: resolved inside only (on the host it would be an oracle)
            if host is not None and host.is_file() and os.access(host, os.X_OK):
                return
        raise FileNotFoundError(2, "No such file or directory", command)

    async def destroy(self, provider_id: str) -> None:
        self._cgroups.kill_all(Path(self.root(provider_id)))
        await self._egress.close(provider_id)
        await super().destroy(provider_id)

    async def spawn(
        self,
        provider_id: str,
        argv: Sequence[str],
        *,
        cwd: str = "",
        env: Mapping[str, str] | None = None,
        stdin: bool = False,
        tty: int | None = None,
    ) -> asyncio.subprocess.Process:
        """As `LocalProvider.spawn`, with the model API credentials (an agent needs its key to reach its
        model; the call's own variables win)."""
        env = {**self._credentials, **(env or {})}
        return await super().spawn(provider_id, argv, cwd=cwd, env=env, stdin=stdin, tty=tty)

    async def signal(self, pid: int, sig: int) -> None:
        """`pid` is bwrap; the command runs below the sandbox's pid 1 (a second bwrap). A signal other
        than SIGKILL goes to every process below pid 1 but the egress forwarder: the command and what
        it started (in its own group or session too, as a terminal's command is) get it and can shut
        down, and the sandbox ends when the command does. Sent to bwrap instead, it would kill the
        sandbox outright, and during the set-up (before pid 1 binds its life to bwrap's) leave it
        running under init with the command's pipes open (StopProcess then never saw it end).
        SIGKILL, or a sandbox still setting up after SETUP_WAIT_SECONDS: bwrap is held (SIGSTOP: it
        cannot clone pid 1 meanwhile), pid 1 is killed (the kernel kills the rest of its namespace),
        then bwrap. A pid that is no longer this service's unreaped child is left alone (it may have
        been reused); before bwrap has started (its prefix), the prefix gets `sig`."""
        await asyncio.to_thread(_signal_sandbox, pid, sig, self._bwrap.encode())

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
        self,
        provider_id: str,
        argv: Sequence[str],
        cwd: str,
        env: Mapping[str, str] | None,
        confined: bool,
        spawned: bool = False,
        tty: bool = False,
    ) -> Command:
        if not confined:
            return await super()._command(provider_id, argv, cwd, env, confined, spawned, tty)
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
        # Only into the service's own `git push` to it (an exec naming it; never a spawned agent or
        # process, nor other service-side git, which runs agent-set hooks): anything else started while
        # a push is under way could write links into objects/ or refs/ after the service checked them.
        # Config and hooks stay the service's: only objects and refs are writable.
        if not spawned and PUSH_MOUNT in argv and push.is_dir():
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
        if tty:  # bwrap's --new-session left it without one (a terminal of its own is no TIOCSTI risk)
            argv = controlling_tty(argv)
        socket = self._egress.socket(provider_id)
        if socket is not None:
            args += ["--bind", str(socket), EGRESS_SOCKET]
            proxy = f"http://127.0.0.1:{PROXY_PORT}"
            for name in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY"):
                sandbox_env[name] = proxy
            sandbox_env["NO_PROXY"] = sandbox_env["no_proxy"] = ""
            forward = (
                f"socat {FORWARD_LISTEN} UNIX-CONNECT:{EGRESS_SOCKET} "
                # Never the command's pipes: a forwarder left behind must not keep its output open.
                '</dev/null >/dev/null 2>&1 & exec "$@"'
            )
            argv = ["/bin/sh", "-c", forward, "sh", *argv]
        sandbox_env.update(env or {})
        self._check_executable(base, inside_cwd, command, sandbox_env)
        args += ["--unsetenv", self._reaper.token]  # a no-op: what the reaper finds this life's bwrap by
        args += ["--chdir", inside_cwd, "--", *argv]
        groups = await asyncio.to_thread(self._cgroups.join, base)
        prefix = _limit_prefix(self._limits, groups, parent=os.getpid())
        return Command([*prefix, *args], base, sandbox_env)

    def kill_leftovers(self) -> list[int]:
        """As `LocalProvider.kill_leftovers`, and every bwrap binding a folder of this sandbox root that
        is not this process's: a sandbox an earlier life left (the reaper was killed with it)."""
        killed = super().kill_leftovers()
        bwrap = self._bwrap.encode()
        under = f"{self._root.resolve()}/".encode()

        def left(cmdline: list[bytes]) -> bool:
            return cmdline[:1] == [bwrap] and any(arg.startswith(under) for arg in cmdline)

        sandboxes = kill_where(left)
        if sandboxes:
            log.warning("sandbox_leftover_sandboxes_killed", count=len(sandboxes), pids=sandboxes)
        return [*killed, *sandboxes]


def _signal_sandbox(bwrap: int, sig: int, path: bytes) -> None:
    """See `BubblewrapProvider.signal`. Every process is pinned by a pidfd and checked again (still
    the child of the process it was listed under) before it is signalled: a pid that was reaped and
    reused, by this host or by a sandbox cycling through pids, is never hit."""
    try:
        pinned = os.pidfd_open(bwrap)
    except OSError:
        return  # gone
    try:
        if _parent(bwrap) != os.getpid():
            return  # reaped (and maybe reused): not this service's bwrap any more
        if _cmdline(bwrap)[:1] != [path]:  # still in its prefix (setpriv, checks, prlimit): no sandbox yet
            signal.pidfd_send_signal(pinned, sig)
            return
        if sig != signal.SIGKILL:
            deadline = time.monotonic() + SETUP_WAIT_SECONDS
            while _state(bwrap) not in ("", "Z"):
                inside = [(p, parent) for init in _children(bwrap) for p, parent in _descendants(init)]
                if inside:  # pid 1 started the command: every process below pid 1 gets it
                    for pid, parent in inside:
                        if not _is_forwarder(pid):  # the egress forwarder: the command may need it to finish
                            _send(pid, parent, sig)
                    return
                if time.monotonic() >= deadline:
                    break
                time.sleep(0.01)
            else:
                return  # gone already
        signal.pidfd_send_signal(pinned, signal.SIGSTOP)  # it cannot clone pid 1 while stopped
        deadline = time.monotonic() + 1.0
        while _state(bwrap) not in ("", "T", "Z") and time.monotonic() < deadline:
            time.sleep(0.005)
        for init in _children(bwrap):
            _send(init, bwrap, signal.SIGKILL)  # the kernel kills the rest of its namespace
        signal.pidfd_send_signal(pinned, signal.SIGKILL)
    except OSError:
        pass  # exited meanwhile
    finally:
        os.close(pinned)


def _send(pid: int, parent: int, sig: int) -> None:
    """`sig` to `pid` if it is still the child of `parent`."""
    signal_pinned(pid, lambda p: _parent(p) == parent, sig)


def _state(pid: int) -> str:
    """The state letter of `pid` (`R`, `S`, `T`, `Z`, ...), "" when it is gone."""
    try:
        return _stat(pid)[0].decode()
    except OSError:
        return ""


def _children(pid: int) -> list[int]:
    """`pid`'s children, from each of its threads' `children` list (no scan of /proc)."""
    found: list[int] = []
    try:
        threads = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in threads:
        with contextlib.suppress(OSError, ValueError):
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                found += [int(child) for child in f.read().split()]
    return found


def _descendants(pid: int) -> list[tuple[int, int]]:
    """Every process below `pid`, as (pid, its parent)."""
    found: list[tuple[int, int]] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for child in _children(parent):
            found.append((child, parent))
            todo.append(child)
    return found


def _is_forwarder(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return _cmdline(pid)[:2] == [b"socat", FORWARD_LISTEN.encode()]
    return False


def _through_link(base: Path, host: Path) -> bool:
    """True when `host`, a path in the sandbox's own (writable) folder `base`, is or passes through a
    symlink the sandbox made (the toolchain's own links, outside `base`, are the same inside)."""
    if not host.is_relative_to(base):
        return False
    current = base
    for part in host.relative_to(base).parts:
        current = current / part
        if current.is_symlink():
            return True
    return False


def _limit_prefix(limits: Limits, groups: Sequence[Path], *, parent: int) -> list[str]:
    """The commands that start bwrap: bind its life to the service's (`setpriv --pdeathsig KILL`, kept
    across the execs that follow, then a shell that exits unless its parent is still `parent`: a
    service that died before the prctl sends nothing), join the sandbox's cgroups (the shell writes
    its own pid to each `cgroup.procs`, then execs), set the limits (util-linux `prlimit`). Commands
    rather than a preexec hook, so the service never forks a copy of itself (unsafe with gRPC's
    threads) to start a sandbox command."""
    guard = (
        '[ "$PPID" = "$0" ] || exit 125; n=$1; shift; '
        'while [ "$n" -gt 0 ]; do echo $$ > "$1" || exit 125; shift; n=$((n-1)); done; exec "$@"'
    )
    prefix = ["setpriv", "--pdeathsig", "KILL", "--", "/bin/sh", "-c", guard, str(parent), str(len(groups))]
    prefix += [*map(str, groups), "prlimit", "--core=0"]
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
