"""Returns-level baselines: the reference that the weight-level strategies are checked against.

Both take the ``(T, S)`` returns panel of the package convention (``returns[t, s]`` earned from
close ``t`` to close ``t + 1``, NaN = the symbol cannot be held over that interval) and give the
``(T,)`` simple portfolio returns over each interval, directly comparable with
``SimResult.portfolio_returns``. Neither has costs.
"""

from __future__ import annotations

import numpy as np

from plusultra.errors import DataError


def _check_panel(returns: np.ndarray) -> np.ndarray:
    r = np.asarray(returns, dtype=float)
    if r.ndim != 2:
        raise DataError(f"returns must be a 2-D (T, S) panel, got shape {r.shape}")
    if np.isinf(r).any():
        t, s = np.argwhere(np.isinf(r))[0]
        raise DataError(f"returns must be finite or NaN; returns[{t}, {s}] = {r[t, s]}")
    return r


def buy_and_hold_returns(returns: np.ndarray) -> np.ndarray:
    """Equal-weight buy-and-hold of the symbols tradable at ``t = 0``.

    At close 0 the book buys ``1 / n`` of equity in each of the ``n`` symbols with a non-NaN
    ``returns[0]`` and never rebalances: each position's value compounds with its own returns,
    so the weights drift with prices. A symbol whose return turns NaN (delisted) is sold at its
    last value at that close and the proceeds stay in cash (0 return) to the end, even if it
    has returns again later. Symbols not tradable at ``t = 0`` are never bought.

    Args:
        returns: ``(T, S)`` simple returns, NaN = not holdable over the interval.

    Returns:
        ``(T,)`` simple portfolio returns; 0 once the book's value is exactly 0.

    Raises:
        DataError: if ``returns`` is not 2-D, holds an infinite value, or no symbol is
            tradable at ``t = 0`` (with ``T > 0``).
    """
    r = _check_panel(returns)
    n_t = r.shape[0]
    if n_t == 0:
        return np.zeros(0)
    start = ~np.isnan(r[0])  # (S,)
    if not start.any():
        raise DataError("buy_and_hold_returns: no symbol is tradable at t=0 (returns[0] all NaN)")
    r = r[:, start]  # (T, n)
    held = np.cumprod(~np.isnan(r), axis=0).astype(bool)  # (T, n) still held over interval t
    growth = np.where(held, 1.0 + np.where(held, r, 0.0), 1.0)  # (T, n), 1 once in cash
    values = np.cumprod(growth, axis=0).mean(axis=1)  # (T,) book value at close t + 1
    book = np.concatenate([[1.0], values])  # (T + 1,) book value at each close, starts at 1
    before = book[:-1]
    return np.where(before != 0.0, book[1:] / np.where(before != 0.0, before, 1.0) - 1.0, 0.0)


def equal_weight_returns(returns: np.ndarray) -> np.ndarray:
    """Equal weight over the symbols tradable at each ``t``, rebalanced at every close.

    Args:
        returns: ``(T, S)`` simple returns, NaN = not holdable over the interval.

    Returns:
        ``(T,)`` the cross-sectional mean of the non-NaN ``returns[t]``; 0 (all cash) where a
        row has no tradable symbol.

    Raises:
        DataError: if ``returns`` is not 2-D or holds an infinite value.
    """
    r = _check_panel(returns)
    valid = ~np.isnan(r)
    n_valid = valid.sum(axis=1)  # (T,)
    total = np.where(valid, r, 0.0).sum(axis=1)
    return np.where(n_valid > 0, total / np.maximum(n_valid, 1), 0.0)
