"""The fast-path benchmark: `bench/run` or `python -m bench` (see docs/performance.md)."""
