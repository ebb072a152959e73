"""Typed configuration for every process of the mesh.

`Settings` reads `FOUNDRY_*` environment variables (nested sections use `__`, for example
`FOUNDRY_SANDBOX__ROOT`). It is built once in a process's `main()` and passed down; nothing else
reads `os.environ`. The defaults run the embedded mode (SQLite files under `data_dir`, in-process
messaging); setting `database_url` and `amqp_url` switches to PostgreSQL and RabbitMQ.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ServiceName = Literal["organization", "task", "github_data", "sandbox"]
SERVICE_NAMES: tuple[ServiceName, ...] = ("organization", "task", "github_data", "sandbox")
DEFAULT_PORTS: dict[str, int] = {
    "gateway": 8080,
    "organization": 50051,
    "task": 50052,
    "github_data": 50053,
    "sandbox": 50054,
}
_DEV_SECRET = "dev-insecure-change-me"
# Production signing keys: random, at least this long, never the example Secret's CHANGE-ME placeholder.
_MIN_SECRET_CHARS = 32


class MessagingSettings(BaseModel):
    """RabbitMQ behaviour (also honoured by the in-process broker where it applies)."""

    prefetch: int = Field(32, ge=1, description="Unacked deliveries per consumer (basic.qos).")
    connect_timeout_seconds: float = Field(
        10.0, gt=0, description="One connection attempt (TCP + AMQP handshake + topology); then retried."
    )
    confirm_timeout_seconds: float = Field(10.0, gt=0, description="Wait for a publisher confirm.")
    max_attempts: int = Field(5, ge=1, description="Deliveries before a message is dead-lettered.")
    retry_delay_seconds: float = Field(1.0, gt=0, description="First retry delay; doubles per attempt.")
    retry_delay_max_seconds: float = Field(60.0, gt=0, description="Longest retry delay.")
    outbox_sweep_seconds: float = Field(5.0, gt=0, description="Relay's safety sweep for rows left behind.")
    queue_type: Literal["quorum", "classic"] = Field(
        "quorum", description="RabbitMQ queue type of work queues."
    )


class WatchSettings(BaseModel):
    """Watch stream contract knobs (README, "Watch streams")."""

    retention_hours: float = Field(24.0, gt=0, description="Change history kept for resume.")
    bookmark_seconds: float = Field(15.0, gt=0, description="Silence before a BOOKMARK is sent.")
    subscriber_buffer: int = Field(1000, ge=1, description="Events buffered per subscriber before `lagging`.")
    max_stream_seconds: float = Field(600.0, gt=0, description="Stream lifetime before END `rotate`.")
    snapshot_page_size: int = Field(500, ge=1, description="Items per SNAPSHOT event.")


class DrainSettings(BaseModel):
    """Shutdown budget, counted from one deadline set when the drain starts (README "Shutdown").

    Defaults fit a 45 s terminationGracePeriodSeconds with an 8 s preStop: 8 + 0 + 30 + 3 + cleanup.
    """

    readiness_delay_seconds: float = Field(
        0.0,
        ge=0,
        description="Keep ports open, refusing with DRAINING, this long before stopping (0: preStop waits).",
    )
    grace_seconds: float = Field(
        30.0,
        ge=0,
        description="In-flight RPCs, handlers and gateway requests get until drain start + readiness delay "
        "+ this; then they are cancelled.",
    )
    unwind_seconds: float = Field(
        3.0,
        ge=0,
        description="Work cancelled at the grace deadline gets this long to run its cleanup before the "
        "database, broker and channels close.",
    )


class SandboxSettings(BaseModel):
    """Sandbox service: where sandboxes live and which agents it can start."""

    root: Path | None = Field(
        None, description="Directory holding one folder per sandbox (default data_dir/sandboxes)."
    )
    provider: Literal["auto", "bubblewrap", "local"] = Field(
        "auto",
        description="`bubblewrap` confines every agent and process; `local` runs them unconfined (warned at "
        "start); `auto`: bubblewrap where the kernel allows it, else local in dev and a refusal to start in "
        "production.",
    )
    egress: Literal["none", "model_apis", "open"] = Field(
        "model_apis",
        description="Confined sandboxes reach: nothing, egress_allowlist only, or any public host.",
    )
    egress_allowlist: list[str] = Field(
        default_factory=lambda: ["api.anthropic.com", "api.openai.com"],
        description="host or host:port (443 when absent) a confined sandbox may reach under model_apis.",
    )
    max_processes: int = Field(256, ge=0, description="Processes per sandbox (pids cgroup; 0: no limit).")
    memory_mb: int = Field(4096, ge=0, description="Address space per sandbox process in MiB (0: no limit).")
    sandbox_memory_mb: int = Field(
        2048,
        ge=0,
        description="Memory of all of a sandbox's processes together in MiB (memory cgroup; past it the "
        "kernel OOM-kills a process of that sandbox; 0: no limit).",
    )
    cpu_seconds: int = Field(0, ge=0, description="CPU seconds per sandbox process (0: no limit).")
    file_size_mb: int = Field(1024, ge=0, description="Largest file a sandbox process may write, MiB.")
    agents: dict[str, str] = Field(
        default_factory=lambda: {
            "fake": "foundry-fake-agent",
            "claude": "claude-agent-acp",
            "codex": "codex-acp",
        },
        description="Agent name -> command that speaks ACP on stdio.",
    )
    default_agent: str = Field("fake", description="Agent used when a task names none.")
    agent_models: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "fake": ["standard", "fast"],
            "claude": ["default", "sonnet", "opus", "haiku"],
            "codex": ["gpt-5.5", "gpt-5.4", "gpt-5.4-mini", "gpt-5.3-codex", "gpt-5.2"],  # codex-acp 0.16.0
        },
        description="Agent name -> the model ids it offers, its default first (what ListAgents reports and "
        "CreateTask/CreateSession/ChangeModel accept; the agent receives the id through ACP "
        "`session/set_config_option` on its `model` option). An agent without an entry takes any model id.",
    )
    agent_credentials: dict[str, list[str]] = Field(
        default_factory=lambda: {
            "claude": ["ANTHROPIC_API_KEY", "CLAUDE_CODE_OAUTH_TOKEN"],
            "codex": ["OPENAI_API_KEY", "CODEX_API_KEY"],
        },
        description="Agent name -> environment variables one of which must be set for the agent to reach "
        "its model API: by its organization (SetModelCredential; it wins) or in the sandbox service's "
        "environment (the operator's key for everyone; handed to the agent only). These are the only "
        "variables an organization may set. An agent without an entry needs none.",
    )
    replica_address: str = Field(
        "",
        description="host:port at which peers reach this replica itself (StatefulSet: "
        "`$(POD_NAME).sandbox.<namespace>.svc.cluster.local:50054`). Set it whenever more than one "
        "replica runs: each sandbox is owned by the replica that created it, calls for it are "
        "redirected there and its turns use that replica's queues. Empty: one replica owns them all.",
    )
    step_timeout_seconds: float = Field(300.0, gt=0, description="Timeout of one provisioning step.")
    warm_pool_size: int = Field(
        0,
        ge=0,
        description='Warm sandboxes kept per repository (README "Warm pool"): prepared ahead at the default '
        "branch's head with the default agent started, claimed by new tasks of the same organization, "
        "repository and egress policy. A repository gets a pool once a task of it was prepared (local "
        "clone URLs only). 0: no pools.",
    )
    warm_pool_stage_seconds: float = Field(
        60.0,
        gt=0,
        description="Deadline of each stage of preparing a warm sandbox (create, checkout, agent).",
    )
    warm_pool_refill_seconds: float = Field(
        5.0, gt=0, description="Longest time between two refill passes (a claim wakes the refill 1 s later)."
    )
    create_delay_seconds: float = Field(0.0, ge=0, description="Artificial provider latency (benchmarks).")


class GithubSettings(BaseModel):
    """GitHub provider credentials and endpoints (github.com or GitHub Enterprise Server)."""

    api_url: str = Field(
        "https://api.github.com", description="GitHub REST API base URL (GHES: https://host/api/v3)."
    )
    oauth_authorize_url: str = Field(
        "https://github.com/login/oauth/authorize", description="OAuth authorize endpoint."
    )
    oauth_token_url: str = Field(
        "https://github.com/login/oauth/access_token", description="OAuth token endpoint."
    )
    app_id: str | None = Field(None, description="GitHub App id (installation tokens).")
    app_private_key: SecretStr | None = Field(None, description="GitHub App private key (PEM).")
    client_id: str | None = Field(None, description="OAuth app client id (sign-in).")
    client_secret: SecretStr | None = Field(None, description="OAuth app client secret.")
    webhook_secret: SecretStr | None = Field(
        None, description="Secret of X-Hub-Signature-256 webhook signatures."
    )


class GatewaySettings(BaseModel):
    """Browser edge."""

    session_secret: SecretStr = Field(
        SecretStr(_DEV_SECRET), description="Key that signs browser session cookies."
    )
    session_ttl_hours: float = Field(24 * 7, gt=0, description="Browser session lifetime.")
    dev_sign_in: bool = Field(True, description="Offline sign-in by name (embedded default only).")
    cookie_secure: bool = Field(False, description="Send the session cookie only over HTTPS.")
    deadline_cap_seconds: float = Field(30.0, gt=0, description="Upper bound of deadlines passed upstream.")
    upstream_linger_seconds: float = Field(
        30.0, ge=0, description="Keep an upstream Watch this long after its last subscriber."
    )
    public_url: str = Field(
        "http://127.0.0.1:8080", description="External URL of the gateway (OAuth redirect)."
    )


def _resolve_root(root: str) -> str:
    """`root` resolved like a connected path is (symlinks followed), `{user}` and what follows kept."""
    head, marker, tail = root.partition("{user}")
    if not marker:
        return str(Path(root).expanduser().resolve())
    base = str(Path(head).expanduser().resolve()) if head.strip("/") else ""
    return f"{base}/{{user}}{tail}" if head.endswith("/") else f"{base}{{user}}{tail}"


class Settings(BaseSettings):
    """Every `FOUNDRY_*` setting. See the README's configuration table."""

    model_config = SettingsConfigDict(env_prefix="FOUNDRY_", env_nested_delimiter="__", extra="ignore")

    environment: Literal["dev", "production"] = Field(
        "dev", description="`production` enforces real secrets."
    )
    data_dir: Path = Field(Path("data"), description="Embedded mode: SQLite files and sandboxes live here.")
    database_url: str | None = Field(
        None, description="postgresql+asyncpg://… (a schema per service). Unset: SQLite files in data_dir."
    )
    database_pool_size: int = Field(
        5,
        ge=1,
        description=(
            "A service engine keeps up to twice this many PostgreSQL connections open (opened as "
            "needed, never closed per transaction); its read pool as many again."
        ),
    )
    database_connect_timeout_seconds: float = Field(
        10.0, gt=0, description="One PostgreSQL connection attempt, and the wait for a free pool connection."
    )
    amqp_url: str | None = Field(
        None, description="amqp://… Unset: in-process messaging (embedded mode only)."
    )
    name_prefix: str = Field("foundry", description="Prefix of exchanges and queues (tests isolate with it).")
    bind_host: str = Field("127.0.0.1", description="Interface every listener binds (0.0.0.0 in pods).")
    organization_port: int = Field(DEFAULT_PORTS["organization"], description="organization gRPC port.")
    task_port: int = Field(DEFAULT_PORTS["task"], description="task gRPC port.")
    github_data_port: int = Field(DEFAULT_PORTS["github_data"], description="github-data gRPC port.")
    sandbox_port: int = Field(DEFAULT_PORTS["sandbox"], description="sandbox gRPC port.")
    gateway_port: int = Field(DEFAULT_PORTS["gateway"], description="gateway HTTP port.")
    organization_target: str | None = Field(
        None,
        description="How peers reach organization (e.g. dns:///organization:50051); default bind_host:port.",
    )
    task_target: str | None = Field(None, description="How peers reach task.")
    github_data_target: str | None = Field(None, description="How peers reach github-data.")
    sandbox_target: str | None = Field(None, description="How peers reach sandbox.")
    metrics_port: int = Field(9464, ge=0, description="Prometheus /metrics port; 0 disables it.")
    log_level: str = Field("INFO", description="DEBUG, INFO, WARNING or ERROR.")
    log_format: Literal["json", "console"] = Field("json", description="json lines, or console for humans.")
    internal_auth_secret: SecretStr = Field(
        SecretStr(_DEV_SECRET),
        description="HMAC key for caller identity passed between gateway and services.",
    )
    grpc_max_connection_age_seconds: float = Field(
        300.0,
        gt=0,
        description="Servers send GOAWAY to older connections so clients rebalance; Watch "
        "streams on them still end with END rotate.",
    )
    call_timeout_seconds: float = Field(
        5.0, gt=0, description="Default deadline of service-to-service calls."
    )
    credentials_key: SecretStr = Field(
        SecretStr(_DEV_SECRET),
        description="Key that seals secrets at rest: organizations' model API keys (organization "
        "service) and users' GitHub OAuth tokens (github_data service); Fernet, keyed by its SHA-256. "
        "Changing it makes the stored values unreadable: set the keys again, users sign in again.",
    )
    local_roots: list[str] | None = Field(
        None,
        description="Directories under which users may connect local organizations (JSON list; `{user}` "
        "is the caller's user id). Unset: the home directory in dev, none in production.",
    )
    migrate_on_start: bool = Field(
        True, description="Run Alembic migrations at start (Kubernetes uses a Job instead)."
    )
    messaging: MessagingSettings = MessagingSettings()
    watch: WatchSettings = WatchSettings()
    drain: DrainSettings = DrainSettings()
    sandbox: SandboxSettings = SandboxSettings()
    github: GithubSettings = GithubSettings()
    gateway: GatewaySettings = GatewaySettings()

    @model_validator(mode="after")
    def _enforce_production_secrets(self) -> Settings:
        if self.environment == "production":
            for name, secret in (
                ("FOUNDRY_INTERNAL_AUTH_SECRET", self.internal_auth_secret),
                ("FOUNDRY_GATEWAY__SESSION_SECRET", self.gateway.session_secret),
            ):
                value = secret.get_secret_value()
                if value == _DEV_SECRET or len(value) < _MIN_SECRET_CHARS or "CHANGE-ME" in value.upper():
                    raise ValueError(
                        f"{name} must be set in production to a random value of at least "
                        f"{_MIN_SECRET_CHARS} characters (not empty, not a CHANGE-ME placeholder)"
                    )
            if self.gateway.dev_sign_in:
                raise ValueError("FOUNDRY_GATEWAY__DEV_SIGN_IN must be false in production")
        return self

    def require_credentials_key(self) -> None:
        """The organization and github_data services' start check: in production `credentials_key`
        must be a real key (random, at least 32 characters, not a CHANGE-ME placeholder), as the
        signing keys must.

        Raises ValueError otherwise."""
        value = self.credentials_key.get_secret_value()
        if self.environment == "production" and (
            value == _DEV_SECRET or len(value) < _MIN_SECRET_CHARS or "CHANGE-ME" in value.upper()
        ):
            raise ValueError(
                f"FOUNDRY_CREDENTIALS_KEY must be set in production to a random value of at least "
                f"{_MIN_SECRET_CHARS} characters (not empty, not a CHANGE-ME placeholder)"
            )

    @property
    def embedded(self) -> bool:
        """True when messaging is in-process (every service must then share one process)."""
        return self.amqp_url is None

    def port_of(self, service: str) -> int:
        """Listening port of `service` (`organization`, …, or `gateway`)."""
        return int(getattr(self, f"{service}_port"))

    def target_of(self, service: ServiceName) -> str:
        """gRPC target other processes use to reach `service`."""
        explicit = getattr(self, f"{service}_target")
        return str(explicit) if explicit else f"{self.bind_host}:{self.port_of(service)}"

    def database_url_for(self, service: ServiceName) -> str:
        """SQLAlchemy URL of `service`'s own database (its schema is `schema_for`)."""
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / f'{service}.sqlite3').resolve()}"

    def schema_for(self, service: ServiceName) -> str | None:
        """PostgreSQL schema owned by `service`; None on SQLite (one file per service instead)."""
        return service if self.database_url else None

    def sandbox_root(self) -> Path:
        return (self.sandbox.root or self.data_dir / "sandboxes").resolve()

    def allowed_local_roots(self) -> list[str]:
        """Resolved `local_roots` (`{user}` kept); the documented default when unset."""
        if self.local_roots is None:
            return [str(Path.home().resolve())] if self.environment == "dev" else []
        return [_resolve_root(root) for root in self.local_roots]

    def protected_paths(self) -> list[str]:
        """Directories no local organization may be, lie in or hold: the data dir and the sandbox root."""
        return [str(self.data_dir.resolve()), str(self.sandbox_root())]
