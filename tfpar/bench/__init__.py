"""Benchmarks: `python -m tfpar.bench NAME`. Ratios measured side by side.

Each benchmark module has `add_arguments(parser)` and `main(args) -> dict`;
results are printed as a table and returned for tests and notebooks.
"""
