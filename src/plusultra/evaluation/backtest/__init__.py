"""Backtests: forecasts to positions, baselines, and the simulated record."""
