"""`python -m load` (`make load`): run the locust users headless for a fixed time against a running
mesh (default: the `make run` ports on 127.0.0.1), or against an embedded mesh it starts itself with
`--spawn`, and write locust's CSV and HTML reports to `<results>/<timestamp>/`.

    python -m load [--spawn] [--users 20] [--spawn-rate 10] [--run-time 30s]
                   [--host 127.0.0.1] [--gateway-url URL] [--target organization=HOST:PORT ...]
                   [--organization organizations/NAME] [--login load] [--stream-seconds 10]
                   [--results results/load] [-- extra locust arguments, e.g. user class names]

Exit code: locust's (1 when any request failed), 2 when the set-up failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from load.config import Targets
from load.mesh import ROOT, EmbeddedMesh
from load.world import ensure

SERVICES = ("organization", "task", "github_data")

# The meshes started here connect organizations in temporary directories (the dev default allows
# only the home directory); their processes inherit this.
os.environ.setdefault("FOUNDRY_LOCAL_ROOTS", json.dumps([tempfile.gettempdir()]))


def parse(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    extra: list[str] = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    p = argparse.ArgumentParser(prog="python -m load", description=__doc__.split("\n\n")[0])
    p.add_argument("--spawn", action="store_true", help="start an embedded mesh on free ports for this run")
    p.add_argument("--users", type=int, default=int(os.environ.get("FOUNDRY_LOAD_USERS", "20")))
    p.add_argument("--spawn-rate", type=float, default=10.0, help="users started per second")
    p.add_argument("--run-time", default=os.environ.get("FOUNDRY_LOAD_RUN_TIME", "30s"), help="e.g. 30s, 5m")
    p.add_argument("--host", default=None, help="host of every service and the gateway (default: bind host)")
    p.add_argument("--gateway-url", default=None, help="gateway base URL (default http://HOST:8080)")
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="SERVICE=HOST:PORT",
        help="address of one service (organization, task, github_data)",
    )
    p.add_argument(
        "--organization", default="", help="use this existing organization instead of a new local one"
    )
    p.add_argument("--login", default="load", help="the user every load user signs in as")
    p.add_argument("--stream-seconds", type=float, default=None, help="how long a stream user holds a stream")
    p.add_argument(
        "--results", type=Path, default=ROOT / "results" / "load", help="reports go to RESULTS/<timestamp>/"
    )
    return p.parse_args(argv), extra


def target_env(args: argparse.Namespace) -> dict[str, str]:
    """FOUNDRY_LOAD_* variables from --host / --gateway-url / --target."""
    env: dict[str, str] = {}
    if args.host:
        defaults = Targets.from_env()
        for name in SERVICES:
            port = getattr(defaults, name).rsplit(":", 1)[1]
            env[f"FOUNDRY_LOAD_{name.upper()}_TARGET"] = f"{args.host}:{port}"
        env["FOUNDRY_LOAD_GATEWAY_URL"] = f"http://{args.host}:{defaults.gateway_url.rsplit(':', 1)[1]}"
    for item in args.target:
        name, _, address = item.partition("=")
        if name not in SERVICES or not address:
            raise SystemExit(f"--target wants SERVICE=HOST:PORT with SERVICE in {SERVICES}, got {item!r}")
        env[f"FOUNDRY_LOAD_{name.upper()}_TARGET"] = address
    if args.gateway_url:
        env["FOUNDRY_LOAD_GATEWAY_URL"] = args.gateway_url
    return env


def run_locust(args: argparse.Namespace, extra: list[str], env: dict[str, str], out: Path) -> int:
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(ROOT / "load" / "locustfile.py"),
        "--headless",
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        args.run_time,
        "--stop-timeout",
        "5",
        "--csv",
        str(out / "load"),
        "--html",
        str(out / "report.html"),
        "--only-summary",
        *extra,
    ]
    return subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    args, extra = parse(sys.argv[1:] if argv is None else argv)
    out = args.results / dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    mesh = EmbeddedMesh.start(workdir=out / "mesh") if args.spawn else None
    try:
        env = mesh.ports.load_env() if mesh else target_env(args)
        if args.stream_seconds is not None:
            env["FOUNDRY_LOAD_STREAM_SECONDS"] = str(args.stream_seconds)
        env["FOUNDRY_LOAD_WORLD"] = str(out / "world.json")
        os.environ.update(env)
        try:
            ensure(
                Targets.from_env(),
                out / "world.json",
                login=args.login,
                organization=args.organization,
                repos_dir=out / "repos",
            )
        except Exception as exc:
            print(f"load: set-up failed: {exc!r}", file=sys.stderr)
            return 2
        code = run_locust(args, extra, env, out)
        print(f"load: reports in {out} (locust exit code {code})")
        return code
    finally:
        if mesh is not None:
            mesh.stop()


if __name__ == "__main__":
    sys.exit(main())
