"""deploy/k8s: every overlay renders and passes strict schema validation (scripts/k8s_validate.py), and the
rendered objects agree with each other and with the code where a schema cannot tell: selectors, probe
ports, the drain budget, FOUNDRY_* names against `Settings`, non-root pods, peer targets.

Each invariant is a function returning a list of problems, so the negative tests can show it catches a
deliberately broken object.
"""

from __future__ import annotations

import copy
import importlib.util
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, get_args

import pytest
from pydantic import BaseModel, SecretStr

from services.platform.settings import DrainSettings, Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SCRIPT = ROOT / "scripts" / "k8s_validate.py"
EXAMPLE_SECRET = K8S / "overlays" / "example" / "secret.example.yaml"
TARGETS = ["base", "overlays/example", "overlays/ci"]
CLEANUP_MARGIN_SECONDS = 4.0  # closing AMQP, the DB engine and channels after the last handler
# Settings a deployment may leave at their default (None), and why.
ALLOWED_UNSET: dict[str, str] = {}
CREDENTIAL_URLS = {"FOUNDRY_DATABASE_URL", "FOUNDRY_AMQP_URL"}  # str settings that embed passwords

Doc = dict[str, Any]


def _load_validator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_validate", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


validator = _load_validator()


@pytest.fixture(scope="module", name="rendered")
def _rendered() -> dict[str, list[Doc]]:
    return {target: validator.render(K8S / target) for target in TARGETS}


@pytest.fixture(scope="module", name="secret_values")
def _secret_values() -> dict[str, str]:
    """The example Secret's values, its signing-key placeholders replaced as an operator must (production
    refuses a CHANGE-ME or short key)."""
    (secret,) = validator.load_documents(EXAMPLE_SECRET.read_text())
    values = {k: str(v) for k, v in secret["stringData"].items()}
    for key in ("FOUNDRY_INTERNAL_AUTH_SECRET", "FOUNDRY_GATEWAY__SESSION_SECRET", "FOUNDRY_CREDENTIALS_KEY"):
        assert "CHANGE-ME" in values[key], "the example must not ship a usable key"
        values[key] = secrets.token_urlsafe(48)
    return values


# --- helpers over rendered objects -------------------------------------------------------------------


SERVERS = ("Deployment", "StatefulSet")  # long-running workloads (the sandbox service is a StatefulSet)


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def servers(docs: list[Doc]) -> list[Doc]:
    return [d for d in docs if d["kind"] in SERVERS]


def pod_templates(docs: list[Doc]) -> list[tuple[Doc, Doc]]:
    """(workload, pod template) for every Deployment, StatefulSet and Job."""
    return [(d, d["spec"]["template"]) for d in docs if d["kind"] in (*SERVERS, "Job")]


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def config_map(docs: list[Doc], name: str) -> dict[str, str]:
    (cm,) = [d for d in of_kind(docs, "ConfigMap") if d["metadata"]["name"] == name]
    return dict(cm.get("data", {}))


def container_env(docs: list[Doc], container: Doc, secrets: dict[str, str]) -> dict[str, str]:
    """The environment a container starts with (ConfigMaps via envFrom, then env; secrets from `secrets`)."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(config_map(docs, source["configMapRef"]["name"]))
    for var in container.get("env", []):
        ref = var.get("valueFrom", {}).get("secretKeyRef")
        field_ref = var.get("valueFrom", {}).get("fieldRef")
        if "value" in var:  # $(NAME) expands a variable defined before it, as the kubelet does
            env[var["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), var["value"])
        elif ref and ref["key"] in secrets:
            env[var["name"]] = secrets[ref["key"]]
        elif field_ref:
            env[var["name"]] = f"{{{field_ref['fieldPath']}}}"  # the pod's own value, e.g. {metadata.name}
    return env


def settings_fields(model: type[BaseModel] = Settings, prefix: str = "FOUNDRY_") -> dict[str, Any]:
    """Env var name -> annotation for every Settings field, nested sections joined with `__`."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            out.update(settings_fields(annotation, f"{prefix}{name.upper()}__"))
        else:
            out[f"{prefix}{name.upper()}"] = annotation
    return out


def secret_settings() -> set[str]:
    secret = {n for n, a in settings_fields().items() if a is SecretStr or SecretStr in get_args(a)}
    return secret | CREDENTIAL_URLS


def referenced_env_names(docs: list[Doc]) -> dict[str, str]:
    """Every FOUNDRY_* name the objects set or read -> where (ConfigMap key, env name, secret key)."""
    names: dict[str, str] = {}
    for cm in of_kind(docs, "ConfigMap"):
        names.update({k: f"ConfigMap/{cm['metadata']['name']}" for k in cm.get("data", {})})
    for secret in of_kind(docs, "Secret"):
        keys = {**secret.get("data", {}), **secret.get("stringData", {})}
        names.update({k: f"Secret/{secret['metadata']['name']}" for k in keys})
    for workload, template in pod_templates(docs):
        for c in template["spec"]["containers"]:
            for var in c.get("env", []):
                names[var["name"]] = f"{workload['kind']}/{workload['metadata']['name']} env"
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    names[ref["key"]] = f"{workload['kind']}/{workload['metadata']['name']} secretKeyRef"
    return {k: v for k, v in names.items() if k.startswith("FOUNDRY_")}


def prestop_args(container: Doc) -> dict[str, str]:
    """`--flag value` pairs of the preStop `services.platform.prestop drain` command ({} if not that hook)."""
    command = container.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command", [])
    if command[:4] != ["python", "-m", "services.platform.prestop", "drain"]:
        return {}
    return dict(zip(command[4::2], command[5::2], strict=False))


# --- invariants: each returns the problems it finds --------------------------------------------------


def selector_problems(docs: list[Doc]) -> list[str]:
    problems = []
    deployments = {d["metadata"]["name"]: d for d in servers(docs)}
    for name, d in deployments.items():
        if not matches(d["spec"]["selector"]["matchLabels"], d["spec"]["template"]["metadata"]["labels"]):
            problems.append(f"{d['kind']}/{name}: selector does not match its pod template labels")
        if d["kind"] == "StatefulSet":
            governing = [
                svc
                for svc in of_kind(docs, "Service")
                if svc["metadata"]["name"] == d["spec"]["serviceName"]
                and svc["spec"].get("clusterIP") == "None"
                and matches(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
            ]
            if not governing:
                problems.append(f"StatefulSet/{name}: serviceName is no headless Service selecting its pods")
    selectors: tuple[tuple[str, Callable[[Doc], Doc]], ...] = (
        ("Service", lambda o: o["spec"]["selector"]),
        ("PodDisruptionBudget", lambda o: o["spec"]["selector"]["matchLabels"]),
    )
    for kind, get in selectors:
        for obj in of_kind(docs, kind):
            selected = [
                n
                for n, d in deployments.items()
                if matches(get(obj), d["spec"]["template"]["metadata"]["labels"])
            ]
            jobs = [
                j["metadata"]["name"]
                for j in of_kind(docs, "Job")
                if matches(get(obj), j["spec"]["template"]["metadata"]["labels"])
            ]
            if selected != [obj["metadata"]["name"]] or jobs:
                problems.append(
                    f"{kind}/{obj['metadata']['name']} selects workloads {selected} and Jobs {jobs}"
                )
    for hpa in of_kind(docs, "HorizontalPodAutoscaler"):
        target = deployments.get(hpa["spec"]["scaleTargetRef"]["name"])
        if target is None:
            problems.append(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: no such Deployment")
        elif not hpa["spec"]["minReplicas"] <= target["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]:
            problems.append(f"HorizontalPodAutoscaler/{hpa['metadata']['name']}: replicas outside min..max")
    return problems


def probe_problems(docs: list[Doc]) -> list[str]:
    problems = []
    for d in servers(docs):
        for c in d["spec"]["template"]["spec"]["containers"]:
            where = f"{d['kind']}/{d['metadata']['name']} container {c['name']}"
            ports = {p["containerPort"] for p in c.get("ports", [])}
            names = {p["name"] for p in c.get("ports", []) if "name" in p}
            for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
                probe = c.get(kind)
                if probe is None:
                    problems.append(f"{where}: no {kind}")
                elif "grpc" in probe:
                    port, service = probe["grpc"].get("port"), probe["grpc"].get("service", "")
                    if not isinstance(port, int) or port not in ports:
                        problems.append(f"{where}: {kind} grpc port {port!r} is not an integer containerPort")
                    if kind == "readinessProbe" and service != "readiness":
                        problems.append(f"{where}: readinessProbe asks service {service!r}, not 'readiness'")
                    if kind != "readinessProbe" and service != "":
                        problems.append(f"{where}: {kind} must ask the liveness service '', not {service!r}")
                elif "httpGet" in probe:
                    port = probe["httpGet"]["port"]
                    if port not in ports and port not in names:
                        problems.append(f"{where}: {kind} httpGet port {port!r} is not a containerPort")
                    if kind == "readinessProbe" and probe["httpGet"]["path"] != "/readyz":
                        problems.append(f"{where}: readinessProbe must GET /readyz (503 while draining)")
                else:
                    problems.append(f"{where}: {kind} is neither grpc nor httpGet")
    return problems


def drain_problems(docs: list[Doc], secrets: dict[str, str]) -> list[str]:
    problems = []
    drain_defaults = DrainSettings()  # class defaults, not this machine's FOUNDRY_* environment
    default_metrics_port = Settings.model_fields["metrics_port"].default
    for d in servers(docs):
        spec = d["spec"]["template"]["spec"]
        for c in spec["containers"]:
            where = f"{d['kind']}/{d['metadata']['name']} container {c['name']}"
            hook = prestop_args(c)
            if "--wait" not in hook:
                problems.append(f"{where}: preStop must run `services.platform.prestop drain --wait N`")
                continue
            env = container_env(docs, c, secrets)
            grace = float(env.get("FOUNDRY_DRAIN__GRACE_SECONDS", drain_defaults.grace_seconds))
            delay = float(
                env.get("FOUNDRY_DRAIN__READINESS_DELAY_SECONDS", drain_defaults.readiness_delay_seconds)
            )
            unwind = float(env.get("FOUNDRY_DRAIN__UNWIND_SECONDS", drain_defaults.unwind_seconds))
            # Worst case: the hook fails to start the drain, so SIGTERM at the end of its wait does; from
            # then the one drain deadline is delay + grace, cancelled work unwinds, resources close.
            needed = float(hook["--wait"]) + delay + grace + unwind + CLEANUP_MARGIN_SECONDS
            if spec.get("terminationGracePeriodSeconds", 30) < needed:
                problems.append(
                    f"{where}: terminationGracePeriodSeconds < preStop + drain budget ({needed:g} s)"
                )
            metrics_port = int(env.get("FOUNDRY_METRICS_PORT", default_metrics_port))
            admin = {p["containerPort"] for p in c.get("ports", []) if p.get("name") == "admin"}
            annotated = d["spec"]["template"]["metadata"].get("annotations", {}).get("prometheus.io/port")
            if {int(hook.get("--port", 9464)), *admin, int(annotated or -1)} != {metrics_port}:
                problems.append(
                    f"{where}: drain --port, admin containerPort, scrape port and metrics port differ"
                )
    return problems


def security_problems(docs: list[Doc]) -> list[str]:
    problems = []
    for workload, template in pod_templates(docs):
        pod = template["spec"].get("securityContext", {})
        for c in template["spec"]["containers"]:
            where = f"{workload['kind']}/{workload['metadata']['name']} container {c['name']}"
            sc = {**pod, **c.get("securityContext", {})}
            if sc.get("runAsNonRoot") is not True or sc.get("runAsUser", 0) == 0 or sc.get("privileged"):
                problems.append(f"{where}: may run as root")
            if (
                sc.get("allowPrivilegeEscalation") is not False
                or sc.get("readOnlyRootFilesystem") is not True
            ):
                problems.append(
                    f"{where}: needs allowPrivilegeEscalation false and a read-only root filesystem"
                )
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                problems.append(f"{where}: must drop ALL capabilities")
            if "/tmp" not in {m["mountPath"] for m in c.get("volumeMounts", [])}:
                problems.append(f"{where}: no writable /tmp")
    return problems


def confinement_problems(docs: list[Doc]) -> list[str]:
    """The sandbox pods can run bubblewrap: their own user namespace (`hostUsers: false`) and an
    unmasked /proc, which a new PID namespace can mount over; an unmasked /proc nowhere else (the API
    server accepts it only with `hostUsers: false`, which a schema cannot tell)."""
    problems = []
    for workload, template in pod_templates(docs):
        spec = template["spec"]
        where = f"{workload['kind']}/{workload['metadata']['name']}"
        sandbox = workload["metadata"]["name"] == "sandbox"
        if sandbox and spec.get("hostUsers") is not False:
            problems.append(f"{where}: needs hostUsers: false (a user namespace of its own)")
        for c in spec["containers"]:
            proc = c.get("securityContext", {}).get("procMount", "Default")
            if sandbox and proc != "Unmasked":
                problems.append(f"{where} container {c['name']}: needs procMount: Unmasked for bubblewrap")
            if not sandbox and proc != "Default":
                problems.append(f"{where} container {c['name']}: procMount {proc} outside the sandbox pods")
            if proc == "Unmasked" and spec.get("hostUsers") is not False:
                problems.append(f"{where} container {c['name']}: procMount Unmasked without hostUsers: false")
    return problems


def env_name_problems(docs: list[Doc]) -> list[str]:
    known = settings_fields()
    referenced = referenced_env_names(docs)
    problems = [
        f"{where}: {name} is not a Settings field" for name, where in referenced.items() if name not in known
    ]
    for cm in of_kind(docs, "ConfigMap"):
        for name in sorted(secret_settings() & set(cm.get("data", {}))):
            problems.append(f"ConfigMap/{cm['metadata']['name']}: secret {name} belongs in a Secret")
    return problems


# --- tests -------------------------------------------------------------------------------------------


def test_validator_passes_every_overlay_against_oldest_and_newest_kubernetes() -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for target in ["deploy/k8s/base", "deploy/k8s/overlays/example", "deploy/k8s/overlays/ci"]:
        assert re.search(
            rf"^ok   {re.escape(target)}: \d+ objects valid for Kubernetes 1\.30\.0, 1\.3\d",
            proc.stdout,
            re.M,
        )


@pytest.mark.parametrize(
    ("file", "old", "new", "expected"),
    [
        (
            "base/task.yaml",
            "port: 50052  # grpc probes take a number",
            "port: grpc  #",
            "is not of type 'integer'",
        ),
        ("base/gateway.yaml", "periodSeconds: 5", "periodSecond: 5", "Additional properties are not allowed"),
        ("base/kustomization.yaml", "  - sandbox.yaml\n", "  - sandbx.yaml\n", "cannot render"),
    ],
)
def test_validator_rejects_a_broken_copy_of_the_manifests(
    tmp_path: Path, file: str, old: str, new: str, expected: str
) -> None:
    tree = tmp_path / "k8s"
    shutil.copytree(K8S, tree)
    path = tree / file
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), str(tree / "overlays" / "example")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1
    assert expected in proc.stderr and "FAIL" in proc.stderr


@pytest.mark.parametrize("target", TARGETS)
def test_selectors_pick_exactly_their_own_pods(rendered: dict[str, list[Doc]], target: str) -> None:
    assert selector_problems(rendered[target]) == []


@pytest.mark.parametrize("target", TARGETS)
def test_probes_use_integer_ports_and_the_readiness_health_service(
    rendered: dict[str, list[Doc]], target: str
) -> None:
    assert probe_problems(rendered[target]) == []


@pytest.mark.parametrize("target", TARGETS)
def test_grace_period_covers_prestop_and_drain_budget(
    rendered: dict[str, list[Doc]], secret_values: dict[str, str], target: str
) -> None:
    assert drain_problems(rendered[target], secret_values) == []


@pytest.mark.parametrize("target", TARGETS)
def test_no_container_can_run_as_root(rendered: dict[str, list[Doc]], target: str) -> None:
    assert security_problems(rendered[target]) == []


def test_image_user_is_the_non_root_uid_the_pods_run_as(rendered: dict[str, list[Doc]]) -> None:
    users = re.findall(r"^USER\s+(\S+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert users, "Dockerfile sets no USER"
    uid = users[-1].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "the image's USER must be a numeric non-root uid"
    for _, template in pod_templates(rendered["overlays/example"]):
        assert template["spec"]["securityContext"]["runAsUser"] == int(uid)


@pytest.mark.parametrize("target", TARGETS)
def test_the_sandbox_pods_can_mount_their_own_proc(rendered: dict[str, list[Doc]], target: str) -> None:
    assert confinement_problems(rendered[target]) == []


@pytest.mark.parametrize("target", TARGETS)
def test_every_foundry_variable_is_a_settings_field_and_secrets_stay_out_of_configmaps(
    rendered: dict[str, list[Doc]], target: str
) -> None:
    assert env_name_problems(rendered[target]) == []


def test_example_secret_holds_only_settings_and_every_required_key(
    rendered: dict[str, list[Doc]], secret_values: dict[str, str]
) -> None:
    (namespace,) = of_kind(rendered["overlays/example"], "Namespace")
    (secret,) = validator.load_documents(EXAMPLE_SECRET.read_text())
    assert secret["metadata"]["namespace"] == namespace["metadata"]["name"]
    assert set(secret_values) <= secret_settings(), (
        "the example Secret holds a key that is not a secret setting"
    )
    for workload, template in pod_templates(rendered["overlays/example"]):
        for c in template["spec"]["containers"]:
            for var in c.get("env", []):
                ref = var.get("valueFrom", {}).get("secretKeyRef")
                if ref and not ref.get("optional", False):
                    assert ref["key"] in secret_values, f"{workload['metadata']['name']} needs {ref['key']}"


def test_every_setting_is_configured_or_deliberately_left_at_its_default(
    rendered: dict[str, list[Doc]],
) -> None:
    configured = set(referenced_env_names(rendered["overlays/example"]))
    missing = set(settings_fields()) - configured - set(ALLOWED_UNSET)
    assert not missing, f"add these to deploy/k8s/base/config.env (or the Secret): {sorted(missing)}"


@pytest.mark.parametrize("target", ["overlays/example", "overlays/ci"])
def test_every_container_environment_builds_production_settings_that_match_the_objects(
    rendered: dict[str, list[Doc]],
    secret_values: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    target: str,
) -> None:
    docs = rendered[target]
    services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
    for workload, template in pod_templates(docs):
        for c in template["spec"]["containers"]:
            for name in [n for n in os.environ if n.startswith("FOUNDRY_")]:
                monkeypatch.delenv(name)
            for name, value in container_env(docs, c, secret_values).items():
                monkeypatch.setenv(name, value)
            settings = Settings()  # raises when a value does not parse or a production secret is missing
            assert settings.environment == "production" and settings.bind_host == "0.0.0.0"
            assert not settings.migrate_on_start
            if c["args"][2].startswith("services."):  # the gateway reaches services by gRPC only
                assert settings.database_url, f"{workload['metadata']['name']} needs PostgreSQL"
            if workload["kind"] == "Job":
                continue  # a migration Job needs only the database
            if c["args"][2].startswith("services."):
                assert not settings.embedded, f"{workload['metadata']['name']} needs RabbitMQ"
            process = c["args"][2].removeprefix("services.")
            ports = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert settings.port_of(process) == ports.get("grpc", ports.get("http")), workload["metadata"][
                "name"
            ]
            for peer in ("organization", "task", "github_data", "sandbox"):
                svc = services[peer.replace("_", "-")]
                assert svc["spec"]["clusterIP"] == "None", "peers need a headless Service for round_robin"
                (port,) = svc["spec"]["ports"]
                assert port["appProtocol"] == "kubernetes.io/h2c"
                assert settings.target_of(peer) == (
                    f"dns:///{svc['metadata']['name']}.{svc['metadata']['namespace']}.svc.cluster.local:{port['port']}"
                )


def test_each_sandbox_replica_records_its_own_stable_address(
    rendered: dict[str, list[Doc]], secret_values: dict[str, str]
) -> None:
    """A sandbox belongs to the replica that created it: each pod advertises its StatefulSet DNS name
    under the governing headless Service, keeps its checkouts on a volume of its own, and the peers
    still reach new sandboxes through the Service."""
    for target in ("base", "overlays/example"):
        docs = rendered[target]
        (sandbox,) = [d for d in servers(docs) if d["metadata"]["name"] == "sandbox"]
        assert sandbox["kind"] == "StatefulSet" and sandbox["spec"]["replicas"] >= 2, target
        (container,) = sandbox["spec"]["template"]["spec"]["containers"]
        env = container_env(docs, container, secret_values)
        (svc,) = [
            s for s in of_kind(docs, "Service") if s["metadata"]["name"] == sandbox["spec"]["serviceName"]
        ]
        (port,) = svc["spec"]["ports"]
        assert env["FOUNDRY_SANDBOX__REPLICA_ADDRESS"] == (
            f"{{metadata.name}}.{svc['metadata']['name']}.{{metadata.namespace}}.svc.cluster.local:{port['port']}"
        ), target
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        claims = [c["metadata"]["name"] for c in sandbox["spec"]["volumeClaimTemplates"]]
        assert claims == ["data"] and env["FOUNDRY_SANDBOX__ROOT"].startswith(mounts["data"] + "/"), target
        assert not of_kind(docs, "PersistentVolumeClaim"), (
            "one shared claim would put every replica on one volume"
        )


def test_every_process_the_manifests_start_is_a_module(rendered: dict[str, list[Doc]]) -> None:
    modules = {c["args"][2] for _, t in pod_templates(rendered["base"]) for c in t["spec"]["containers"]}
    assert modules == {f"services.{s}" for s in ("organization", "task", "github_data", "sandbox")} | {
        "gateway"
    }
    missing = [m for m in sorted(modules) if not _has_main(m)]
    assert not missing, f"no `python -m` entry point: {missing}"


def _has_main(package: str) -> bool:
    try:
        return importlib.util.find_spec(f"{package}.__main__") is not None
    except ModuleNotFoundError:
        return False


def test_first_install_selection_holds_everything_the_migration_jobs_need(
    rendered: dict[str, list[Doc]],
) -> None:
    """README: `kubectl apply -l 'app.kubernetes.io/component in (config,migration)'` runs the Jobs alone."""
    docs = rendered["overlays/example"]
    selected = {
        (d["kind"], d["metadata"]["name"])
        for d in docs
        if d["metadata"].get("labels", {}).get("app.kubernetes.io/component") in ("config", "migration")
    }
    for job in of_kind(docs, "Job"):
        spec = job["spec"]["template"]["spec"]
        assert ("ServiceAccount", spec["serviceAccountName"]) in selected
        for c in spec["containers"]:
            for source in c.get("envFrom", []):
                assert ("ConfigMap", source["configMapRef"]["name"]) in selected


def _mutate(docs: list[Doc], kind: str, name: str, change: Any) -> list[Doc]:
    docs = copy.deepcopy(docs)
    (obj,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    change(obj)
    return docs


def _container(obj: Doc) -> Doc:
    container: Doc = obj["spec"]["template"]["spec"]["containers"][0]
    return container


@pytest.mark.parametrize(
    ("kind", "name", "change", "check", "expected"),
    [
        (
            "Service",
            "task",
            lambda o: o["spec"]["selector"].update({"app.kubernetes.io/component": "migration"}),
            "selector",
            "selects workloads []",
        ),
        (
            "Deployment",
            "task",
            lambda o: _container(o)["readinessProbe"]["grpc"].pop("service"),
            "probe",
            "not 'readiness'",
        ),
        (
            "StatefulSet",
            "sandbox",
            lambda o: _container(o)["livenessProbe"]["grpc"].update({"port": 9999}),
            "probe",
            "not an integer containerPort",
        ),
        (
            "Deployment",
            "gateway",
            lambda o: o["spec"]["template"]["spec"].update({"terminationGracePeriodSeconds": 30}),
            "drain",
            "terminationGracePeriodSeconds <",
        ),
        (
            "Deployment",
            "task",
            lambda o: _container(o)["env"].append({"name": "FOUNDRY_DRAIN__UNWIND_SECONDS", "value": "10"}),
            "drain",
            "terminationGracePeriodSeconds <",
        ),
        (
            "Deployment",
            "organization",
            lambda o: _container(o)["lifecycle"].pop("preStop"),
            "drain",
            "preStop must run",
        ),
        (
            "Job",
            "task-migrate",
            lambda o: _container(o)["securityContext"].update({"runAsUser": 0}),
            "security",
            "may run as root",
        ),
        (
            "Deployment",
            "github-data",
            lambda o: _container(o)["env"].append({"name": "FOUNDRY_GITHUB__TOKEN", "value": "x"}),
            "env",
            "FOUNDRY_GITHUB__TOKEN is not a Settings field",
        ),
        (
            "StatefulSet",
            "sandbox",
            lambda o: o["spec"]["template"]["spec"].pop("hostUsers"),
            "confinement",
            "procMount Unmasked without hostUsers: false",
        ),
        (
            "StatefulSet",
            "sandbox",
            lambda o: _container(o)["securityContext"].pop("procMount"),
            "confinement",
            "needs procMount: Unmasked",
        ),
        (
            "Deployment",
            "gateway",
            lambda o: _container(o)["securityContext"].update({"procMount": "Unmasked"}),
            "confinement",
            "procMount Unmasked without hostUsers: false",
        ),
    ],
)
def test_invariant_checks_catch_a_broken_object(
    rendered: dict[str, list[Doc]],
    secret_values: dict[str, str],
    kind: str,
    name: str,
    change: Any,
    check: str,
    expected: str,
) -> None:
    docs = _mutate(rendered["overlays/example"], kind, name, change)
    checks: dict[str, Callable[[list[Doc]], list[str]]] = {
        "selector": selector_problems,
        "probe": probe_problems,
        "security": security_problems,
        "env": env_name_problems,
        "confinement": confinement_problems,
        "drain": lambda d: drain_problems(d, secret_values),
    }
    found = checks[check](docs)
    assert any(expected in p for p in found), found
