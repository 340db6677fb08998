"""Benchmarks of the runner: ``python -m benchmarks`` (see BENCHMARKS.md)."""
