"""Execution timing: when a decision made from bar t's close is filled, and what it then earns.

Every simulator, baseline, backtest, training-time portfolio loss and (later) the RL
environment shares this one contract:

- ``next_open`` (default where the data has opens): filled at bar ``t + 1``'s open, held until the
  next fill at bar ``t + 2``'s open; earns ``open[t + 2] / open[t + 1] - 1``.
- ``next_close`` (default where it has none): filled at bar ``t + 1``'s close; earns
  ``close[t + 2] / close[t + 1] - 1``.
- ``same_close``: filled at the decision close itself; earns ``close[t + 1] / close[t] - 1``. Not
  tradable in practice (the close that produced the decision is already gone); an explicit,
  optimistic option that reports and the catalogue label as such.

So a position decided at ``t`` never earns bar ``t``'s own move, and with the two next-bar modes
not the move into the fill bar either. The panels here are indexed by decision bar ``t``.

A top-level module (like ``errors``), not part of ``sim``: the simulators and the data layer
(execution-aligned training returns) both follow it and know nothing of each other.

Labels shown to users: ``LABELS`` (the report header and the catalogue's ``execution`` column
use the mode names; ``same_close`` is always shown with its "optimistic" warning).
"""

from __future__ import annotations

import numpy as np

from plusultra.errors import ConfigError, DataError

EXECUTION_MODES = ("next_open", "next_close", "same_close")
OPTIMISTIC = "same_close"  # the one mode whose results are labelled optimistic
LABELS = {
    "next_open": "next bar open",
    "next_close": "next bar close",
    "same_close": "same close (optimistic: filled at the decision close)",
}


def check_execution(mode: str | None) -> str | None:
    """`mode` if valid (None means: pick by data, see `resolve_execution`).

    Raises:
        ConfigError: an unknown mode (the message lists the valid ones).
    """
    if mode is not None and mode not in EXECUTION_MODES:
        raise ConfigError(
            f"simulator.execution={mode!r} is not a mode; valid: {', '.join(EXECUTION_MODES)} "
            "(or null: next_open where the data has opens, else next_close)"
        )
    return mode


def has_opens(open_: np.ndarray | None, close: np.ndarray) -> bool:
    """Whether the data has an open wherever it has a close (a close-only source has none)."""
    if open_ is None:
        return False
    finite = np.isfinite(np.asarray(open_, dtype=float))
    if not finite.any():
        return False
    return bool((finite | ~np.isfinite(np.asarray(close, dtype=float))).all())


def resolve_execution(mode: str | None, open_: np.ndarray | None, close: np.ndarray) -> str:
    """The mode to use: `mode`, or by data when None; ``next_open`` without opens is an error.

    Raises:
        ConfigError: unknown mode.
        DataError: ``next_open`` asked for data without opens.
    """
    if check_execution(mode) in ("next_close", "same_close"):
        return mode  # no opens needed
    opens = has_opens(open_, close)
    if mode is None:
        return "next_open" if opens else "next_close"
    if not opens:
        raise DataError(
            "simulator.execution=next_open but the data has no open prices (close-only or "
            "missing opens); use simulator.execution=next_close"
        )
    return mode


def fill_lag(mode: str) -> int:
    """Bars between the decision and its fill: 0 for ``same_close``, else 1."""
    return 0 if check_execution(mode) == "same_close" else 1


def describe(mode: str) -> str:
    """The user-facing label of a mode, e.g. ``"next bar open"`` (see ``LABELS``)."""
    return LABELS[check_execution(mode)]


def carry_prices(prices: np.ndarray) -> np.ndarray:
    """(T, S) prices with a missing bar inside a symbol's life carrying the last price.

    NaN stays before a symbol's first price and after its last one, so a position cannot be held
    past the end of its data (the convention of ``data.datasets.windows.next_returns``).
    """
    p = np.asarray(prices, dtype=float)
    if p.ndim != 2:
        raise DataError(f"prices must be a (T, S) panel, got shape {p.shape}")
    has = np.isfinite(p)
    idx = np.where(has, np.arange(p.shape[0])[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = p[idx, np.arange(p.shape[1])]
    out[~has[idx, np.arange(p.shape[1])]] = np.nan  # before the first price
    last = p.shape[0] - 1 - np.argmax(has[::-1], axis=0)  # (S,) last bar with a price
    out[np.arange(p.shape[0])[:, None] > last[None, :]] = np.nan
    return out


def fill_prices(mode: str, open_: np.ndarray | None, close: np.ndarray) -> np.ndarray:
    """(T, S) price at which a fill happens at each bar: opens for ``next_open``, else closes."""
    if check_execution(mode) == "next_open":
        if open_ is None:
            raise DataError("execution next_open needs open prices")
        return np.asarray(open_, dtype=float)
    return np.asarray(close, dtype=float)


def execution_returns(mode: str, open_: np.ndarray | None, close: np.ndarray) -> np.ndarray:
    """(T, S) simple return earned by a position decided at close ``t``, held until the next fill.

    ``out[t] = P[t + lag + 1] / P[t + lag] - 1`` with ``P`` the fill prices and ``lag`` the fill
    lag; NaN where either price is missing or beyond the calendar (the last ``lag + 1`` rows).
    """
    price = fill_prices(mode, open_, close)
    if price.ndim != 2:
        raise DataError(f"prices must be a (T, S) panel, got shape {price.shape}")
    lag = fill_lag(mode)
    out = np.full(price.shape, np.nan)
    n = price.shape[0] - lag - 1
    if n > 0:
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:n] = price[lag + 1 : lag + 1 + n] / price[lag : lag + n] - 1.0
    out[~np.isfinite(out)] = np.nan
    return out


def execution_returns_reference(
    mode: str, open_: np.ndarray | None, close: np.ndarray
) -> np.ndarray:
    """Per-cell loop reference of `execution_returns` (tests compare the two)."""
    price = fill_prices(mode, open_, close)
    lag = fill_lag(mode)
    t_count, s_count = price.shape
    out = np.full((t_count, s_count), np.nan)
    for t in range(t_count):
        for s in range(s_count):
            f = t + lag  # the fill bar
            if f + 1 >= t_count:
                continue
            a, b = price[f, s], price[f + 1, s]
            if np.isfinite(a) and np.isfinite(b) and a != 0:
                out[t, s] = b / a - 1.0
    return out
