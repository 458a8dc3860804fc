"""Benchmarks. Each prints a table whose figures are ratios against a baseline measured in the same run."""
