"""Benchmarks (`make bench` = `python -m bench`, `--quick` for CI): each measures the mesh side by
side with a bare baseline in one run and writes bench/results/<name>.json (machine, inputs,
figures, targets, profile notes). `python -m bench.<name> [--quick]` runs one."""
