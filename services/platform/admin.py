"""`python -m services.platform.admin drain [--port 9464] [--wait 8]`: the preStop hook.

POSTs /drain on the local admin port (readiness flips to NOT_SERVING at once, queues stop, streams end
with `draining`), then keeps the hook alive for `--wait` seconds so endpoints are removed before SIGTERM.
Exits 0 even if the process is already gone (nothing left to drain).
"""

from __future__ import annotations

import argparse
import sys
import time

import httpx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.platform.admin")
    sub = parser.add_subparsers(dest="cmd", required=True)
    drain = sub.add_parser("drain", help="start the drain of the local process")
    drain.add_argument("--port", type=int, default=9464)
    drain.add_argument(
        "--wait", type=float, default=8.0, help="seconds to stay in preStop after the drain began"
    )
    args = parser.parse_args(argv)
    try:
        response = httpx.post(f"http://127.0.0.1:{args.port}/drain", timeout=5.0)
        print(response.text)
    except httpx.HTTPError as exc:
        print(f"drain request failed (process gone?): {exc}", file=sys.stderr)
        return 0
    time.sleep(args.wait)
    return 0


if __name__ == "__main__":
    sys.exit(main())
