"""Extended risk metrics: drawdown duration, CVaR, exposure, costs, trades and moments.

Complements ``evaluation.metrics.compute_metrics`` (which it does not repeat). ``r`` is the
``(T,)`` array of simple per-period portfolio returns, ``P = periods_per_year``. Bootstrap
intervals live in ``evaluation.bootstrap``, the deflated Sharpe ratio in ``evaluation.deflated``;
``risk_metrics`` gathers this module's metrics and the bootstrap intervals into one dict.

Definitions:

- ``max_drawdown_duration``: the longest run of consecutive periods whose closing equity is
  strictly below the running peak of ``E = [1, cumprod(1 + r)]`` (the start 1.0 counts as a
  peak), in periods; the period that regains the peak is not counted, a run still open at the end
  is. 0.0 if the equity never falls below a previous peak.
- ``cvar_95``: expected shortfall, the mean of the ``k = ceil((1 - level) * T)`` worst period
  returns (at least one), a return per period (usually negative: -0.03 = an average loss of 3 %
  on the worst 5 % of periods). ``(1 - level) * T`` is rounded to 9 decimals before the ceiling,
  so ``0.05 * 100`` gives ``k = 5``, not 6.
- ``gross_exposure`` / ``net_exposure``: mean over periods of ``sum_s |w|`` / ``sum_s w``,
  fractions of equity; ``invested_share``: share of periods with any nonzero weight.
- ``cost_share``: ``sum(costs) / sum(gross_pnl)``, both in the same unit (currency, or fractions
  of equity per period), costs as positive amounts; NaN when the gross P&L sums to <= 0 (a share
  of a loss is meaningless).
- ``information_ratio``: ``mean(a) / std(a, ddof=1) * sqrt(P)`` with active return
  ``a = r - benchmark``. Like is compared with like (``ir_benchmark``): a dollar-neutral book
  (``|mean net exposure| <= 0.1 * mean gross exposure``, or an empty book) against cash, so
  ``a = r``; a net-exposed book (long-only and other net-long or net-short books) against
  buy-and-hold on the same simulator. ``information_ratio_benchmark`` records which
  (``"cash"`` or ``"buyhold"``).
- ``excess_annual_return``: ``mean(a) * P`` for the same active return ``a`` and benchmark, a
  fraction per year (arithmetic, not compounded), so that
  ``information_ratio = excess_annual_return / (std(a, ddof=1) * sqrt(P))``.
- ``cost_drag``: ``CAGR(g) - CAGR(r)``, fraction per year, where ``r`` is the book's return
  after every simulated cost and ``g = r + costs_t / equity_t`` its return before them (costs
  of bar ``t`` over the equity at its start: commission, spread, impact, borrow and funding of
  the realistic simulator; ``g = r`` for the frictionless one, so 0.0). CAGR as
  ``compute_metrics``' ``annual_return``; NaN where either CAGR is undefined.
- trade analytics over per-trade P&L ``x``: ``win_rate = #(x > 0) / n_trades`` (a zero trade
  counts as a trade that did not win), ``avg_win = mean(x[x > 0])``, ``avg_loss = mean(x[x < 0])``
  (negative), ``profit_factor = sum(x[x > 0]) / |sum(x[x < 0])|`` (NaN without losing trades),
  ``n_trades``.
- ``skew`` / ``kurtosis``: population (biased) moments of the returns,
  ``m3 / m2 ** 1.5`` and ``m4 / m2 ** 2`` with ``mk = mean((r - mean(r)) ** k)``; kurtosis is NOT
  excess (3 for normal returns), as ``evaluation.deflated.deflated_sharpe`` expects. NaN when
  ``T < 3`` or the returns are all equal.
- ``sharpe_lo`` / ``sharpe_hi``, ``annual_return_lo`` / ``annual_return_hi``: 95 % percentile
  intervals of the annualised Sharpe and of the CAGR (definitions of ``compute_metrics``) from a
  Politis-Romano stationary bootstrap (``evaluation.bootstrap``).

Undefined values are NaN, never ``inf`` and never an exception; for empty returns every metric is
NaN. Reference loop implementations of each kernel live in ``tests/test_risk.py``.
"""

from __future__ import annotations

import math

import numpy as np

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.backtest.positions import as_panel
from plusultra.evaluation.metrics.bootstrap import (
    annual_return_interval,
    check_level,
    sharpe_interval,
)
from plusultra.evaluation.metrics.performance import (
    as_series,
    check_periods_per_year,
    finite_or_nan,
)

_NAN = float("nan")


def drawdown_duration(returns: np.ndarray) -> float:
    """Longest stretch below a previous equity peak.

    Args:
        returns: ``(T,)`` simple per-period returns.

    Returns:
        The largest number of consecutive periods ``t`` with ``E[t] < max(E[:t])`` on the equity
        curve ``E = [1, cumprod(1 + r)]``, in periods (see the module docstring); 0.0 if never,
        NaN for empty returns.

    Raises:
        DataError: if ``returns`` is not 1-D or not finite.
    """
    r = as_series(returns, "returns")
    if r.size == 0:
        return _NAN
    equity = np.concatenate([[1.0], np.cumprod(1.0 + r)])  # (T + 1,)
    below = (equity < np.maximum.accumulate(equity))[1:]  # (T,) under water after period t
    idx = np.arange(1, r.size + 1)
    last_up = np.maximum.accumulate(np.where(below, 0, idx))  # (T,) last period at a peak
    return float((idx - last_up).max())  # run length of the current under-water stretch


def cvar(returns: np.ndarray, level: float = 0.95) -> float:
    """Expected shortfall (conditional value at risk) of the period returns.

    Args:
        returns: ``(T,)`` simple per-period returns.
        level: confidence level in (0, 1); the tail is the worst ``1 - level`` share.

    Returns:
        The mean of the ``k = ceil(round((1 - level) * T, 9))`` (at least 1) lowest returns, a
        return per period (negative = a loss); NaN for empty returns.

    Raises:
        ConfigError: if ``level`` is not in (0, 1).
        DataError: if ``returns`` is not 1-D or not finite.
    """
    level = check_level(level)
    r = as_series(returns, "returns")
    if r.size == 0:
        return _NAN
    k = max(1, math.ceil(round((1.0 - level) * r.size, 9)))
    return float(np.partition(r, k - 1)[:k].mean())


def exposure(weights: np.ndarray) -> dict[str, float]:
    """Average exposure of a weight panel.

    Args:
        weights: ``(T, S)`` weights held over each period, fractions of equity; NaN means 0.

    Returns:
        ``gross_exposure`` (mean of ``sum_s |w|``), ``net_exposure`` (mean of ``sum_s w``), both
        fractions of equity, and ``invested_share`` (share of periods with a nonzero weight);
        all NaN when ``T = 0``.

    Raises:
        DataError: if ``weights`` is not 2-D or holds an infinite value.
    """
    w = as_panel(weights, "weights")
    if w.shape[0] == 0:
        return {"gross_exposure": _NAN, "net_exposure": _NAN, "invested_share": _NAN}
    w = np.where(np.isnan(w), 0.0, w)
    gross = np.abs(w).sum(axis=1)  # (T,)
    return {
        "gross_exposure": float(gross.mean()),
        "net_exposure": float(w.sum(axis=1).mean()),
        "invested_share": float((gross > 0).mean()),
    }


def cost_share(gross_pnl: np.ndarray, costs: np.ndarray) -> float:
    """Trading costs as a share of the gross (before-cost) P&L.

    Args:
        gross_pnl: gross P&L per period (or a scalar total), currency or fraction of equity.
        costs: costs per period (or a total) in the same unit, as positive amounts.

    Returns:
        ``sum(costs) / sum(gross_pnl)`` (0.25 = costs ate a quarter of the gross P&L); NaN when
        the gross P&L sums to <= 0.

    Raises:
        DataError: if either input is not finite, a cost is negative, or per-period arrays
            differ in shape.
    """
    g = np.asarray(gross_pnl, dtype=float)
    c = np.asarray(costs, dtype=float)
    if g.ndim > 1 or c.ndim > 1 or (g.ndim == 1 and c.ndim == 1 and g.shape != c.shape):
        raise DataError(
            f"gross_pnl {g.shape} and costs {c.shape} must be scalars or equal (T,) arrays"
        )
    if not (np.isfinite(g).all() and np.isfinite(c).all()):
        raise DataError("gross_pnl and costs must be finite")
    if (c < 0).any():
        raise DataError("costs must be >= 0 (positive amounts paid); got a negative cost")
    total = float(g.sum())
    return float(c.sum()) / total if total > 0 else _NAN


def information_ratio(
    returns: np.ndarray, benchmark: np.ndarray, periods_per_year: float = 252
) -> float:
    """Annualised information ratio of the returns against a benchmark.

    Args:
        returns: ``(T,)`` simple per-period returns of the strategy.
        benchmark: ``(T,)`` simple per-period returns of the benchmark over the same periods.
        periods_per_year: periods in a year.

    Returns:
        ``mean(a) / std(a, ddof=1) * sqrt(P)`` for ``a = returns - benchmark``, unitless; NaN when
        ``T < 2`` or the active returns are all equal.

    Raises:
        ConfigError: if ``periods_per_year`` is not a number > 0.
        DataError: if the inputs are not finite 1-D arrays of the same length.
    """
    p = check_periods_per_year(periods_per_year)
    active = _active(returns, benchmark)
    if active.size < 2 or active.max() == active.min():
        return _NAN
    return finite_or_nan(active.mean() / active.std(ddof=1) * math.sqrt(p))


def excess_annual_return(
    returns: np.ndarray, benchmark: np.ndarray, periods_per_year: float = 252
) -> float:
    """Annualised mean active return, the numerator of ``information_ratio``.

    Args:
        returns: ``(T,)`` simple per-period returns of the strategy.
        benchmark: ``(T,)`` simple per-period returns of the benchmark over the same periods.
        periods_per_year: periods in a year.

    Returns:
        ``mean(returns - benchmark) * P``, fraction per year (arithmetic); NaN when ``T = 0``.

    Raises:
        ConfigError: if ``periods_per_year`` is not a number > 0.
        DataError: if the inputs are not finite 1-D arrays of the same length.
    """
    p = check_periods_per_year(periods_per_year)
    active = _active(returns, benchmark)
    return finite_or_nan(active.mean() * p) if active.size else _NAN


def _active(returns: np.ndarray, benchmark: np.ndarray) -> np.ndarray:
    """``(T,)`` active returns ``returns - benchmark``; DataError unless both are finite 1-D
    arrays of the same length."""
    r = as_series(returns, "returns")
    b = as_series(benchmark, "benchmark")
    if r.shape != b.shape:
        raise DataError(f"benchmark.shape={b.shape} must match returns.shape={r.shape}")
    return r - b


def gross_returns(
    returns: np.ndarray, costs: np.ndarray | None, equity: np.ndarray | None
) -> np.ndarray:
    """Per-period returns before costs: ``r + costs / equity[:-1]`` (``r`` where the starting
    equity is 0, or without costs).

    Args:
        returns: ``(T,)`` simple returns after costs, ``equity[t + 1] / equity[t] - 1``.
        costs: ``(T,)`` costs paid in period ``t``, currency, positive; None: no costs.
        equity: ``(T + 1,)`` equity, currency, ``equity[0]`` the start; needed with costs.

    Returns:
        ``(T,)`` gross returns.

    Raises:
        DataError: on mismatched shapes or non-finite values.
    """
    r = as_series(returns, "returns")
    if costs is None:
        return r
    c = as_series(costs, "costs")
    e = as_series(equity, "equity") if equity is not None else None
    if e is None or c.shape != r.shape or e.shape != (r.size + 1,):
        shape = None if e is None else e.shape
        raise DataError(
            f"gross_returns: costs {c.shape} and equity {shape} must be (T,) and (T + 1,) "
            f"for T={r.size}"
        )
    start = e[:-1]
    return np.where(start != 0, r + c / np.where(start != 0, start, 1.0), r)


def cost_drag(returns: np.ndarray, gross: np.ndarray, periods_per_year: float = 252) -> float:
    """Annualised return lost to costs: ``CAGR(gross) - CAGR(returns)``.

    Args:
        returns: ``(T,)`` simple per-period returns after costs.
        gross: ``(T,)`` the same book's returns before costs (``gross_returns``).
        periods_per_year: periods in a year.

    Returns:
        Fraction per year (0.02 = costs took 2 % a year); 0.0 when ``gross == returns``; NaN
        for ``T = 0`` or where a CAGR is undefined (equity below 0).

    Raises:
        ConfigError: if ``periods_per_year`` is not a number > 0.
        DataError: if the inputs are not finite 1-D arrays of the same length.
    """
    p = check_periods_per_year(periods_per_year)
    r = as_series(returns, "returns")
    g = as_series(gross, "gross")
    if r.shape != g.shape:
        raise DataError(f"gross.shape={g.shape} must match returns.shape={r.shape}")
    if r.size == 0:
        return _NAN
    if np.array_equal(r, g):
        return 0.0

    def cagr(x: np.ndarray) -> float:
        base = float(np.prod(1.0 + x))
        return base ** (p / x.size) - 1.0 if base >= 0 else _NAN

    with np.errstate(over="ignore"):
        try:
            return finite_or_nan(cagr(g) - cagr(r))
        except OverflowError:
            return _NAN


IR_BENCHMARKS = {"cash": "cash", "buyhold": "B&H"}  # name -> label in tables
NEUTRAL_NET = 0.1  # |mean net| / mean gross at or below which a book is dollar-neutral


def ir_benchmark(weights: np.ndarray) -> str:
    """The benchmark of a book's information ratio: ``"cash"`` or ``"buyhold"``.

    Args:
        weights: ``(T, S)`` weights held, fractions of equity; NaN means 0.

    Returns:
        ``"cash"`` for a dollar-neutral book (``|mean_t sum_s w| <= 0.1 * mean_t sum_s |w|``,
        an empty book included), else ``"buyhold"``.

    Raises:
        DataError: if ``weights`` is not a 2-D array without infinities.
    """
    w = np.nan_to_num(as_panel(weights, "weights"), nan=0.0)
    gross = float(np.abs(w).sum(axis=1).mean()) if w.size else 0.0
    net = float(w.sum(axis=1).mean()) if w.size else 0.0
    return "cash" if abs(net) <= NEUTRAL_NET * gross or gross == 0.0 else "buyhold"


def trade_analytics(trade_pnl: np.ndarray) -> dict[str, float]:
    """Win rate, average win and loss, and profit factor of closed trades.

    Args:
        trade_pnl: ``(N,)`` P&L of each closed trade (currency or return, any one unit).

    Returns:
        ``win_rate`` (share of trades with P&L > 0), ``avg_win`` (mean P&L of winners),
        ``avg_loss`` (mean P&L of losers, negative), ``profit_factor`` (sum of wins / |sum of
        losses|, 0.0 with losses but no wins) and ``n_trades``; NaN where undefined (no trades,
        no winners, no losers).

    Raises:
        DataError: if ``trade_pnl`` is not a finite 1-D array.
    """
    x = as_series(trade_pnl, "trade_pnl")
    wins, losses = x[x > 0], x[x < 0]
    loss_sum = float(losses.sum())
    return {
        "win_rate": wins.size / x.size if x.size else _NAN,
        "avg_win": float(wins.mean()) if wins.size else _NAN,
        "avg_loss": float(losses.mean()) if losses.size else _NAN,
        "profit_factor": float(wins.sum()) / -loss_sum if losses.size else _NAN,
        "n_trades": float(x.size),
    }


def return_moments(returns: np.ndarray) -> dict[str, float]:
    """Skewness and kurtosis of the period returns, the inputs of ``deflated.deflated_sharpe``.

    Args:
        returns: ``(T,)`` simple per-period returns.

    Returns:
        ``skew`` (``m3 / m2 ** 1.5``, 0 for symmetric returns) and ``kurtosis`` (``m4 / m2 ** 2``,
        NOT excess: 3 for normal returns), population moments ``mk = mean((r - mean(r)) ** k)``
        as ``scipy.stats.skew`` / ``kurtosis(fisher=False)`` with ``bias=True``; both NaN when
        ``T < 3`` or the returns are all equal.

    Raises:
        DataError: if ``returns`` is not 1-D or not finite.
    """
    r = as_series(returns, "returns")
    if r.size < 3 or r.max() == r.min():
        return {"skew": _NAN, "kurtosis": _NAN}
    d = r - r.mean()  # (T,)
    m2 = float(np.mean(d**2))
    return {
        "skew": finite_or_nan(np.mean(d**3) / m2**1.5),
        "kurtosis": finite_or_nan(np.mean(d**4) / m2**2),
    }


def risk_metrics(
    returns: np.ndarray,
    weights: np.ndarray | None = None,
    benchmark: np.ndarray | None = None,
    trade_pnl: np.ndarray | None = None,
    gross_pnl: np.ndarray | None = None,
    costs: np.ndarray | None = None,
    periods_per_year: float = 252,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, float]:
    """All extended metrics whose inputs are given, as one flat dict.

    Args:
        returns: ``(T,)`` simple per-period portfolio returns (after costs).
        weights: optional ``(T, S)`` weights held over each period -> ``gross_exposure``,
            ``net_exposure``, ``invested_share``.
        benchmark: optional ``(T,)`` benchmark returns (buy-and-hold) -> ``information_ratio``.
        trade_pnl: optional ``(N,)`` closed-trade P&L -> ``win_rate``, ``avg_win``, ``avg_loss``,
            ``profit_factor``, ``n_trades``.
        gross_pnl: optional gross P&L per period; with ``costs`` -> ``cost_share``.
        costs: optional costs per period, positive, same unit as ``gross_pnl``.
        periods_per_year: periods in a year.
        n_boot: bootstrap replicates for ``sharpe_lo/hi`` and ``annual_return_lo/hi``; 0 leaves
            those four keys out.
        seed: seed of the bootstrap.

    Returns:
        ``max_drawdown_duration``, ``cvar_95``, ``skew`` and ``kurtosis`` always, the interval
        keys when ``n_boot > 0``, and the keys named above for each optional input given
        (definitions in the module docstring).

    Raises:
        ConfigError: on a bad ``periods_per_year`` or ``n_boot``.
        DataError: on malformed inputs, mismatched lengths, or only one of ``gross_pnl`` and
            ``costs``.
    """
    p = check_periods_per_year(periods_per_year)
    if isinstance(n_boot, bool) or not isinstance(n_boot, int | np.integer) or n_boot < 0:
        raise ConfigError(f"n_boot must be an integer >= 0, got {n_boot!r}")
    r = as_series(returns, "returns")
    out = {"max_drawdown_duration": drawdown_duration(r), "cvar_95": cvar(r, 0.95)}
    out.update(return_moments(r))
    if weights is not None:
        w = np.asarray(weights, dtype=float)
        if w.ndim != 2 or w.shape[0] != r.size:
            raise DataError(f"weights must be ({r.size}, S) to match returns, got {w.shape}")
        out.update(exposure(w))
    if (gross_pnl is None) != (costs is None):
        raise DataError("cost_share needs both gross_pnl and costs; only one was given")
    if gross_pnl is not None:
        out["cost_share"] = cost_share(gross_pnl, costs)
    if benchmark is not None:
        out["information_ratio"] = information_ratio(r, benchmark, p)
    if trade_pnl is not None:
        out.update(trade_analytics(trade_pnl))
    if n_boot > 0:
        _, out["sharpe_lo"], out["sharpe_hi"] = sharpe_interval(r, p, n_boot=n_boot, seed=seed)
        _, lo, hi = annual_return_interval(r, p, n_boot=n_boot, seed=seed)
        out["annual_return_lo"], out["annual_return_hi"] = lo, hi
    return {k: finite_or_nan(v) for k, v in out.items()}
