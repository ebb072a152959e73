"""The e2e cluster's per-run log (tests/e2e/procs/cluster.py): a restart's lines stay the restart's
even when a kill -9 cut the previous run's last line short (CI at b02939d read no line of the
restarted organization replica and failed test_kill_organization)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tests.e2e.procs.cluster import Replica


def test_a_restart_after_a_line_cut_short_keeps_its_own_lines(tmp_path: Path) -> None:
    replica = Replica("organization", 0, "tests.unit.test_replica_log", 0, 0, {}, tmp_path / "r.log")
    replica.env["RUN"] = "1"
    replica.start()
    assert replica.proc is not None and replica.proc.wait(30) == 0
    with replica.log.open("ab") as f:
        f.write(b'{"event": "message_handled", "queue": "au')  # what a kill -9 mid-write leaves
    replica.env["RUN"] = "2"
    replica.start()
    assert replica.proc.wait(30) == 0

    assert replica.events(1) == [{"event": "hello", "run": "1"}]  # the cut line does not parse
    assert replica.events(2) == [{"event": "hello", "run": "2"}]


if __name__ == "__main__":  # the replica's process: one JSON line telling which run it is
    print(json.dumps({"event": "hello", "run": os.environ["RUN"]}))
