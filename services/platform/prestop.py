"""`python -m services.platform.prestop drain [--port 9464] [--wait 8]`: the preStop hook.

POSTs /drain on the local admin port (readiness flips to NOT_SERVING at once, queues stop, streams end
with `draining`), then keeps the hook alive until `--wait` seconds after it started, so endpoints are
removed before SIGTERM. The wait holds however the request went: a slow or timed-out drain response
(the process is busy ending its streams) still leaves the hook its full `--wait`. Only a refused
connection (no process listening: nothing left to drain) ends the hook at once. Always exits 0.
"""

from __future__ import annotations

import argparse
import sys
import time

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.platform.prestop")
    sub = parser.add_subparsers(dest="cmd", required=True)
    drain = sub.add_parser("drain", help="start the drain of the local process")
    drain.add_argument("--port", type=int, default=9464)
    drain.add_argument(
        "--wait", type=float, default=8.0, help="seconds the hook lasts, counted from its start"
    )
    drain.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for the drain response")
    args = parser.parse_args(argv)
    started = time.monotonic()
    try:
        response = httpx.post(f"http://127.0.0.1:{args.port}/drain", timeout=args.timeout)
        print(response.text)
    except httpx.ConnectError as exc:
        print(f"drain request refused (process gone?): {exc}", file=sys.stderr)
        return 0
    except httpx.HTTPError as exc:  # timed out or cut off: the drain may well be under way
        print(f"drain request failed: {type(exc).__name__}: {exc}; waiting anyway", file=sys.stderr)
    time.sleep(max(0.0, started + args.wait - time.monotonic()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
