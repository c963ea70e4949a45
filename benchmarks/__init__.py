"""Benchmarks: ``python benchmarks/executor_performance.py`` (see its docstring). Not part of the package."""
