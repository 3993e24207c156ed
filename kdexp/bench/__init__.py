"""Benchmarks as configs: matrices of pairs × methods × seeds with cell keys, leases and skipping of finished
cells (`matrix`), and the per-method Optuna studies of tuned matrices (`tuning`). Tables are `kdexp.report`."""
