"""Disposable PostgreSQL and RabbitMQ servers owned by the test run.

Each is started from the installed server binaries on a free port with its data in a temporary
directory, and removed at the end, so tests never touch (or depend on the health of) the machine's
system services and fault tests may stop, kill and restart them freely. As root, the servers run as
their Debian system users (`postgres`, `rabbitmq`): initdb refuses root, and a RabbitMQ node's files
belong to the user that runs it.

Set `FOUNDRY_TEST_PG_ADMIN_DSN` and `FOUNDRY_TEST_AMQP_URL` to use servers of your own instead.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PG_ENV = "FOUNDRY_TEST_PG_ADMIN_DSN"
AMQP_ENV = "FOUNDRY_TEST_AMQP_URL"
RABBIT_NODE_ENV = "FOUNDRY_TEST_RABBIT_NODE"  # "node cookie" of the private node, for rabbitmqctl


def _as_user(user: str) -> list[str]:
    """Prefix that runs a command as `user` when we are root (and as ourselves otherwise)."""
    return ["runuser", "-u", user, "--"] if os.geteuid() == 0 else []


# runuser's PAM session resets the soft open-files limit to 1024, which leaves a RabbitMQ node 832
# sockets: a full test run passes that and the node then silently stops accepting connections. The
# system service gets 65536 from its systemd unit; ours gets the hard limit.
_RAISE_NOFILE = ["sh", "-c", 'ulimit -n "$(ulimit -Hn)" && exec "$@"', "sh"]


def _chown(path: Path, user: str) -> None:
    if os.geteuid() == 0:
        shutil.chown(path, user, user)


def _free_port() -> int:
    from tests.helpers.infra import free_port

    return free_port()


def _wait_tcp(port: int, proc: subprocess.Popen[bytes] | None, timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
            return
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    raise RuntimeError(f"{what} did not start listening on 127.0.0.1:{port} within {timeout:.0f} s\n{tail}")


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster (initdb + pg_ctl) in `root`, listening on 127.0.0.1:`port`, trust auth.

    `durable=False` (the suite's shared server) trades crash safety for speed (fsync and synchronous
    commit off); crash tests need `durable=True`, PostgreSQL's defaults, where a commit answered is
    a commit kept."""

    root: Path
    port: int = field(default_factory=_free_port)
    durable: bool = False

    @property
    def admin_dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    @staticmethod
    def _bin(name: str) -> str:
        found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}")) or [shutil.which(name) or name]
        return found[-1]

    def _pg_ctl(self, *args: str) -> None:
        cmd = [*_as_user("postgres"), self._bin("pg_ctl"), "-D", str(self.root / "data"), *args]
        subprocess.run(cmd, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        if not (self.root / "data").exists():
            self.root.mkdir(parents=True, exist_ok=True)
            _chown(self.root, "postgres")
            initdb = [self._bin("initdb"), "-D", str(self.root / "data"), "-A", "trust", "-U", "postgres"]
            cmd = [*_as_user("postgres"), *initdb, "--no-sync"]
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c max_connections=500"
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._pg_ctl("-o", options, "-l", str(self.root / "server.log"), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        """`mode`: pg_ctl's shutdown mode (smart, fast, immediate — the last is a crash)."""
        with contextlib.suppress(subprocess.SubprocessError):
            self._pg_ctl("-m", mode, "-w", "stop")


@dataclass
class PrivateRabbit:
    """A RabbitMQ node of its own (`RABBITMQ_NODENAME`, ports, data and cookie in `root`; no plugins);
    the default vhost `/` and user guest are ours alone."""

    root: Path
    port: int = field(default_factory=_free_port)
    dist_port: int = field(default_factory=_free_port)
    node: str = field(default_factory=lambda: f"foundry-test-{secrets.token_hex(4)}@localhost")
    cookie: str = field(default_factory=lambda: secrets.token_hex(16).upper())
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"

    def _prepare(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "enabled_plugins").write_text("[].\n")
        cookie = self.root / ".erlang.cookie"
        cookie.write_text(self.cookie)
        cookie.chmod(0o400)
        for path in (self.root, self.root / "enabled_plugins", cookie):
            _chown(path, "rabbitmq")

    def start(self, timeout: float = 90) -> None:
        if not (self.root / "enabled_plugins").exists():
            self._prepare()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.root),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_BASE": str(self.root),
            "RABBITMQ_MNESIA_BASE": str(self.root / "mnesia"),
            "RABBITMQ_LOG_BASE": str(self.root / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(self.root / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(self.root / "pid"),
            "RABBITMQ_CONFIG_FILE": str(self.root / "no-config"),
        }
        server = "/usr/lib/rabbitmq/bin/rabbitmq-server"
        if not Path(server).exists():
            server = shutil.which("rabbitmq-server") or server
        log = self.root / "server.log"
        with log.open("ab") as out:
            self._proc = subprocess.Popen(
                [*_as_user("rabbitmq"), *_RAISE_NOFILE, "env", *(f"{k}={v}" for k, v in env.items()), server],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        _wait_tcp(self.port, self._proc, timeout, f"RabbitMQ node {self.node}", log)

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout: float = 30) -> None:
        """SIGTERM stops the node cleanly; SIGKILL is a crash. Waits for the whole process group."""
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        # epmd-registered children (erl_child_setup, inet_gethost) die with the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def private_rabbit(prefix: str = "foundry-rabbit-") -> Iterator[PrivateRabbit]:
    """A started RabbitMQ node of the caller's own, stopped and removed at the end: a test may stop,
    kill and start it again (`stop()`, `start()`: same ports and data) without touching anyone else's."""
    # Not under pytest's tmp_path: the node runs as the `rabbitmq` user when we are root.
    with tempfile.TemporaryDirectory(prefix=prefix) as root:
        os.chmod(root, 0o755)
        node = PrivateRabbit(Path(root) / "node")
        node.start()
        try:
            yield node
        finally:
            node.stop()


def rabbitmqctl(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run `rabbitmqctl` against the test run's broker (the private node when this run owns one)."""
    node_and_cookie = os.environ.get(RABBIT_NODE_ENV, "").split()
    target = []
    if len(node_and_cookie) == 2:
        target = ["-n", node_and_cookie[0], "--erlang-cookie", node_and_cookie[1]]
    return subprocess.run(
        ["rabbitmqctl", "-q", *target, *args], check=True, capture_output=True, text=True, timeout=timeout
    )


class TestServers:
    """The run's servers: each started on first use, stopped by `close()`; the URLs go into the environment
    so the processes the tests spawn (e2e, bench smoke) use the same servers."""

    def __init__(self) -> None:
        self._dir: Path | None = None
        self.postgres: PrivatePostgres | None = None
        self.rabbit: PrivateRabbit | None = None

    def _root(self) -> Path:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="foundry-test-servers-"))
            self._dir.chmod(0o755)  # the server users traverse it
        return self._dir

    def postgres_dsn(self) -> str:
        """Admin DSN of the run's PostgreSQL (`postgresql://postgres@127.0.0.1:PORT/postgres`)."""
        if not os.environ.get(PG_ENV):
            self.postgres = PrivatePostgres(self._root() / "postgres")
            self.postgres.start()
            os.environ[PG_ENV] = self.postgres.admin_dsn
        return os.environ[PG_ENV]

    def amqp_url(self) -> str:
        """URL of the run's RabbitMQ (`amqp://guest:guest@127.0.0.1:PORT/`)."""
        if not os.environ.get(AMQP_ENV):
            self.rabbit = PrivateRabbit(self._root() / "rabbitmq")
            self.rabbit.start()
            os.environ[AMQP_ENV] = self.rabbit.url
            os.environ[RABBIT_NODE_ENV] = f"{self.rabbit.node} {self.rabbit.cookie}"
        return os.environ[AMQP_ENV]

    def close(self) -> None:
        if self.rabbit is not None:
            self.rabbit.stop()
        if self.postgres is not None:
            self.postgres.stop("immediate")
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)


SERVERS = TestServers()  # closed by tests/conftest.py at the end of the run

__all__ = [
    "AMQP_ENV",
    "PG_ENV",
    "SERVERS",
    "PrivatePostgres",
    "PrivateRabbit",
    "TestServers",
    "private_rabbit",
    "rabbitmqctl",
]
