"""The factor exposures behind the guardrails' ``factor_caps``.

A book's exposure to a factor is ``sum_s w_s * beta_s``, with ``beta_s`` the OLS beta
(intercept included) of symbol ``s``'s returns on the factor's returns over the last
``factor_lookback`` bars, estimated at the decision close from returns up to that bar only.

* ``market`` (`market_returns`): the equal-weight mean return, at each bar, of the symbols that
  have a return at that bar; built from the asset returns the guardrails already hold.
* any other factor: a return series supplied with the data (in a backtest, a market-wide
  alternative-data column of the run, e.g. ``etf_mtum`` of ``data=sp500_stocks_factors``; in
  the service, the caller's ``factor_returns``). A series joined late (its value at bar t is
  the factor's return of bar t - lag) is paired with the asset returns of that earlier bar
  (``factor_lags``), so the beta is not a lagged cross-correlation.

A beta is undefined (NaN, and the symbol then counts 0 toward the exposure) when the window
holds fewer than `min_pairs` bars where both returns are known, or when the factor has no
variance over them.
"""

from __future__ import annotations

import math

import numpy as np

_FLAT = 1e-12  # a factor whose centred sum of squares is below this share of its raw one is flat


def min_pairs(lookback: int) -> int:
    """Bars with both returns known that a beta needs: half the window, at least 2."""
    return max(2, math.ceil(lookback / 2))


def market_returns(asset_returns: np.ndarray) -> np.ndarray:
    """(K,) equal-weight mean of each row of (K, S) asset returns over its finite entries;
    NaN for a row with none."""
    r = np.asarray(asset_returns, dtype=float)
    known = np.isfinite(r)
    n = known.sum(axis=1)
    total = np.where(known, r, 0.0).sum(axis=1)
    return np.where(n > 0, total / np.maximum(n, 1), np.nan)


def rolling_betas(
    asset_returns: np.ndarray, factor: np.ndarray, lookback: int, lag: int = 0
) -> np.ndarray:
    """OLS betas of every symbol on one factor over the newest `lookback` pairs.

    Row k of the factor series is paired with row ``k - lag`` of the asset returns (both
    arrays newest last, rows aligned on the same bars); the window is the newest `lookback`
    such pairs, and each symbol's beta uses the pairs where both values are finite.

    Args:
        asset_returns: (K, S) asset returns, NaN where unknown.
        factor: (K,) the factor's series, NaN where unknown.
        lookback: pairs in the window (>= 2).
        lag: bars by which the factor series trails the asset returns (>= 0).

    Returns:
        (S,) ``cov(r_s, f) / var(f)`` over the window; NaN where undefined (module docstring).
    """
    r = np.asarray(asset_returns, dtype=float)
    f = np.asarray(factor, dtype=float)
    k = len(f)
    r, f = r[: max(k - lag, 0)], f[lag:]  # pair asset row k - lag with factor row k
    r, f = r[-lookback:], f[-lookback:]  # (L, S), (L,)
    ok = np.isfinite(r) & np.isfinite(f)[:, None]  # (L, S) usable pairs
    n = ok.sum(axis=0)  # (S,)
    x = np.where(ok, f[:, None], 0.0)
    y = np.where(ok, r, 0.0)
    count = np.maximum(n, 1)
    dx = np.where(ok, x - x.sum(axis=0) / count, 0.0)
    dy = np.where(ok, y - y.sum(axis=0) / count, 0.0)
    sxx = (dx * dx).sum(axis=0)
    sxy = (dx * dy).sum(axis=0)
    defined = (n >= min_pairs(lookback)) & (sxx > _FLAT * (x * x).sum(axis=0))
    return np.where(defined, sxy / np.where(defined, sxx, 1.0), np.nan)


def exposure(weights: np.ndarray, betas: np.ndarray) -> float:
    """``sum_s w_s * beta_s`` with an undefined (NaN) beta counting 0."""
    return float(np.asarray(weights, dtype=float) @ np.nan_to_num(betas, nan=0.0))
