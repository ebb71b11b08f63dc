"""Metrics: performance, risk, bootstrap intervals and the deflated Sharpe."""
