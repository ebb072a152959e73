"""Helper processes started by e2e tests (python -m tests.e2e.procs.<name>)."""
