"""Vectorised rolling kernels on (T, S) panels for Qlib's Alpha158 operators.

Every kernel takes a whole ``(T, S)`` array (or ``(T,)``) of float64 and returns the same
shape. Windows are over the panel's calendar rows: a window of `n` bars ending at ``t`` holds
rows ``t - n + 1 .. t``, and it is NaN when any of them is NaN (a missing bar, a bar before
listing), which is the library's convention (`plusultra.data.features.registry`) and one of
the deliberate differences from Qlib, whose rolling operators use ``min_periods=1`` and skip
NaN. Kernels are pandas rolling ops on the whole frame (Cython, no ``rolling.apply``) or numpy
reductions over sliding windows in memory-bounded blocks of symbols (rank, argmax). Each is
compared with a per-symbol ``rolling.apply`` reference in ``tests/test_alpha158.py``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

BLOCK_ELEMENTS = 1 << 22  # elements of one block of sliding windows (32 MiB in float64)
FLAT_STD = 2e-5  # Qlib's Corr / Rsquare: NaN where a rolling std is within 2e-5 of zero


def _frame(x: np.ndarray) -> pd.DataFrame:
    """(T,) or (T, S) array as a (T, S') DataFrame (no copy for float64)."""
    return pd.DataFrame(np.asarray(x, dtype=np.float64).reshape(len(x), -1))


def _back(frame: pd.DataFrame, like: np.ndarray) -> np.ndarray:
    return frame.to_numpy(copy=True).reshape(np.shape(like))


def rolling(x: np.ndarray, n: int, stat: str, *args: object) -> np.ndarray:
    """A pandas rolling statistic over `n` full bars: ``mean``, ``sum``, ``std`` (ddof 1),
    ``var`` (ddof 1), ``max``, ``min``, ``quantile`` (`args`: q, linear interpolation).

    Args:
        x: (T,) or (T, S) values; NaN = missing.
        n: window length in bars (the window includes t).
        stat: name of the pandas ``Rolling`` method.

    Returns:
        Same shape as `x`; NaN where the window has fewer than `n` values.
    """
    window = _frame(x).rolling(n, min_periods=n)
    return _back(getattr(window, stat)(*args), x)


def shift(x: np.ndarray, k: int = 1) -> np.ndarray:
    """``x_{t-k}`` (Qlib's ``Ref(x, k)``): NaN for the first k rows."""
    out = np.full_like(np.asarray(x, dtype=np.float64), np.nan)
    out[k:] = x[:-k]
    return out


def divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is zero or NaN (no division warnings)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / den, np.nan)


def rolling_rank(x: np.ndarray, n: int) -> np.ndarray:
    """Percentile rank of ``x_t`` among the last `n` values, in (0, 1] (Qlib's ``Rank``).

    ``(#{x_i < x_t} + (#{x_i == x_t} + 1) / 2) / n``: ties take their average rank, as
    ``scipy.stats.percentileofscore(kind='rank') / 100`` and pandas ``rank(pct=True)`` do.
    Counted over sliding windows (3x faster than pandas' rolling rank).
    """

    def rank(windows: np.ndarray) -> np.ndarray:
        last = windows[..., -1:]
        below = (windows < last).sum(axis=-1)
        return (below + ((windows == last).sum(axis=-1) + 1) / 2) / n

    return _sliding(x, n, rank)


def rolling_regression(y: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OLS of y on the time index over the last `n` bars: slope, R^2 and last residual.

    With ``k = 0 .. n-1`` the position in the window, ``kbar = (n-1)/2``:
    ``slope = sum((k - kbar) y_k) / (n (n^2 - 1) / 12)``; ``R^2 = slope^2 var(k) / var(y)``
    (both ddof 1, ``var(k) = n (n+1) / 12``), NaN where the rolling std of y is within
    `FLAT_STD` of zero (as Qlib's ``Rsquare``); ``resid = y_t - (mean(y) + slope kbar)``, the
    residual of the newest bar (Qlib's ``Resi``). ``sum(k y_k)`` is a rolling sum of
    ``i * y_i`` (i = row number) minus ``(t - n + 1) sum(y)``, so all three are O(T S).

    Args:
        y: (T, S) values; NaN = missing.
        n: window length (>= 2).

    Returns:
        (slope per bar, R^2 in [0, 1], residual), each like `y`.
    """
    y = np.asarray(y, dtype=np.float64)
    rows = np.arange(len(y), dtype=np.float64).reshape((-1,) + (1,) * (y.ndim - 1))
    sum_y = rolling(y, n, "sum")
    sum_iy = rolling(rows * y, n, "sum")
    var_y = rolling(y, n, "var")
    kbar = (n - 1) / 2.0
    centred = sum_iy - (rows - n + 1 + kbar) * sum_y  # sum((k - kbar) y_k)
    slope = centred / (n * (n * n - 1) / 12.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rsq = slope * slope * (n * (n + 1) / 12.0) / var_y
    rsq[np.sqrt(np.maximum(var_y, 0.0)) <= FLAT_STD] = np.nan
    resid = y - (sum_y / n + slope * kbar)
    return slope, rsq, resid


def _sliding(x: np.ndarray, n: int, reduce: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """`reduce` of every window of `n` bars, NaN where the window is incomplete.

    Args:
        x: (T,) or (T, S) values; NaN = missing.
        n: window length in bars.
        reduce: (s, T - n + 1, n) windows, oldest first -> (s, T - n + 1) values; called on
            blocks of symbols of at most `BLOCK_ELEMENTS` window elements.

    Returns:
        Same shape as `x`.
    """
    xt = np.ascontiguousarray(np.asarray(x, dtype=np.float64).reshape(len(x), -1).T)  # (S, T)
    s_len, t_len = xt.shape
    out = np.full((s_len, t_len), np.nan)
    if t_len >= n:
        step = max(1, BLOCK_ELEMENTS // (n * (t_len - n + 1)))
        for lo in range(0, s_len, step):
            windows = sliding_window_view(xt[lo : lo + step], n, axis=1)  # (s, T-n+1, n)
            out[lo : lo + step, n - 1 :] = reduce(windows)
        counts = sliding_window_view(np.isfinite(xt), n, axis=1).sum(axis=2)  # (S, T-n+1)
        out[:, n - 1 :][counts < n] = np.nan
    return out.T.reshape(np.shape(x))


def rolling_idxmax(x: np.ndarray, n: int) -> np.ndarray:
    """Qlib's ``IdxMax(x, n)``: 1-based position of the (first) largest of the last `n`
    values, counted from the oldest (n = the newest bar is the maximum); NaN if incomplete."""
    return _sliding(x, n, lambda windows: np.argmax(windows, axis=-1) + 1.0)


def rolling_idxmin(x: np.ndarray, n: int) -> np.ndarray:
    """Qlib's ``IdxMin(x, n)``: as `rolling_idxmax` for the (first) smallest value."""
    return _sliding(x, n, lambda windows: np.argmin(windows, axis=-1) + 1.0)


def rolling_corr(x: np.ndarray, y: np.ndarray, n: int) -> np.ndarray:
    """Pearson correlation of x and y over the last `n` bars (Qlib's ``Corr``).

    NaN where the window has a missing value of either, or where either rolling std (ddof 1)
    is within `FLAT_STD` of zero (Qlib sets those to NaN too).
    """
    fx, fy = _frame(x), _frame(y)
    corr = fx.rolling(n, min_periods=n).corr(fy, pairwise=False).to_numpy(copy=True)
    flat = (fx.rolling(n, min_periods=n).std().to_numpy() <= FLAT_STD) | (
        fy.rolling(n, min_periods=n).std().to_numpy() <= FLAT_STD
    )
    corr[flat] = np.nan
    return corr.reshape(np.shape(x))
