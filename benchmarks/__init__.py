"""Benchmarks for recall: `python -m benchmarks.run` (or `make bench`)."""
