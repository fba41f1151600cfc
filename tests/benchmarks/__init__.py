"""Benchmarks of ingest throughput, memory and queries at scale (see docs/benchmarks.md)."""
