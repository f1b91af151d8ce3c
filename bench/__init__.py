"""Benchmarks (not tests): each compares against a baseline measured in the same run.
Run one with `python -m bench <name>`, all with `python -m bench`."""
