"""Benchmarks. Run each with ``python -m bench.<name>``; results go in docs/benchmarks.md."""
