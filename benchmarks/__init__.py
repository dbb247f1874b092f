"""slifmr's benchmarks, as suites run with `python -m benchmarks.SUITE.SCRIPT` (benchmarks/README.md)."""
