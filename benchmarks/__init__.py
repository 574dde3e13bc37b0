"""Benchmarks of glr against its speed and memory targets; see BENCHMARKS.md."""
