"""Benchmarks: scripts that print side-by-side ratios (see README.md here)."""
