"""Performance metrics of a per-period portfolio return series.

``compute_metrics`` is the vectorised implementation used everywhere; ``metrics_reference`` is a
naive loop over periods with the same definitions, kept to test the former against.

Definitions (``r`` is the ``(T,)`` array of simple per-period returns, ``P = periods_per_year``):

- ``total_return``: ``prod(1 + r) - 1``, a fraction (0.10 = +10 %).
- ``annual_return``: CAGR, ``(1 + total_return) ** (P / T) - 1``, fraction per year; NaN if
  ``1 + total_return < 0`` (the equity went negative).
- ``annual_volatility``: sample standard deviation (``ddof=1``) of ``r`` times ``sqrt(P)``,
  fraction per sqrt(year); NaN when ``T < 2``.
- ``sharpe``: ``mean(r) / std(r, ddof=1) * sqrt(P)``, arithmetic returns, zero risk-free rate,
  unitless (annualised); NaN when ``T < 2`` or the returns are all equal (zero volatility).
- ``sortino``: ``mean(r) / DD * sqrt(P)`` with downside deviation
  ``DD = sqrt(mean(min(r, 0) ** 2))`` (mean over all ``T`` periods, target 0), unitless
  (annualised); NaN when no period is negative (``DD = 0``).
- ``max_drawdown``: ``min_t(E_t / max_{u <= t} E_u - 1)`` over the equity curve
  ``E = [1, cumprod(1 + r)]`` that includes the starting value 1.0; a NEGATIVE fraction
  (-0.25 = a 25 % fall from the peak), 0.0 if the equity never falls below a previous peak.
- ``calmar``: ``annual_return / |max_drawdown|``, unitless; NaN when ``max_drawdown == 0``.
- ``hit_rate``: fraction of periods with ``r > 0`` among the periods with ``r != 0``;
  NaN when every return is 0.
- ``turnover``: mean of the given per-period turnover (fraction of equity traded per period);
  present only when ``turnover`` is passed.
- ``n_periods``: ``T`` as a float.

Undefined values are ``float('nan')``, never an exception and never ``inf`` (a value that would
overflow to ``inf`` is reported as NaN too). For empty input every metric except ``n_periods``
(0.0) is NaN.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from plusultra.errors import ConfigError, DataError

METRIC_NAMES: tuple[str, ...] = (
    "total_return",
    "annual_return",
    "annual_volatility",
    "sharpe",
    "sortino",
    "max_drawdown",
    "calmar",
    "hit_rate",
    "n_periods",
)
"""Keys of ``compute_metrics`` without ``turnover`` (which is added only when given)."""

_NAN = float("nan")


def check_periods_per_year(periods_per_year: float) -> float:
    """`periods_per_year` as a float; ConfigError unless it is a finite number > 0."""
    if (
        isinstance(periods_per_year, bool)
        or not isinstance(periods_per_year, int | float | np.integer | np.floating)
        or not math.isfinite(periods_per_year)
        or periods_per_year <= 0
    ):
        raise ConfigError(f"periods_per_year must be a number > 0, got {periods_per_year!r}")
    return float(periods_per_year)


def as_series(values: np.ndarray, name: str) -> np.ndarray:
    """``values`` as a finite 1-D float array, else ``DataError`` naming ``name``."""
    x = np.asarray(values, dtype=float)
    if x.ndim != 1:
        raise DataError(f"{name} must be a 1-D (T,) array, got shape {x.shape}")
    if not np.isfinite(x).all():
        i = int(np.flatnonzero(~np.isfinite(x))[0])
        raise DataError(f"{name} must be finite; {name}[{i}] = {x[i]}")
    return x


def _validate(
    returns: np.ndarray, periods_per_year: int, turnover: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Check the inputs and return them as 1-D float arrays."""
    check_periods_per_year(periods_per_year)
    r = as_series(returns, "returns")
    tv = None
    if turnover is not None:
        tv = np.asarray(turnover, dtype=float)
        if tv.shape != r.shape:
            raise DataError(
                f"turnover.shape={tv.shape} must match returns.shape={r.shape} (one value per "
                "period)"
            )
        tv = as_series(tv, "turnover")
    return r, tv


def finite_or_nan(value: float) -> float:
    """``value`` as a float, NaN when it is not finite (metrics never hold infinities)."""
    value = float(value)
    return value if math.isfinite(value) else _NAN


def _cagr(total_return: float, n_periods: int, periods_per_year: float) -> float:
    base = 1.0 + total_return
    if n_periods == 0 or base < 0:
        return _NAN
    try:
        return base ** (periods_per_year / n_periods) - 1.0
    except OverflowError:
        return _NAN


def _ratio(num: float, den: float) -> float:
    """``num / den``, NaN when ``den`` is 0 or either is NaN."""
    if den == 0.0 or math.isnan(den) or math.isnan(num):
        return _NAN
    return num / den


def compute_metrics(
    returns: np.ndarray, periods_per_year: int = 252, turnover: np.ndarray | None = None
) -> dict[str, float]:
    """Summarise a per-period portfolio return series (definitions in the module docstring).

    Args:
        returns: ``(T,)`` simple per-period portfolio returns (0.01 = +1 % over the period).
        periods_per_year: periods in a year, e.g. 252 for trading days.
        turnover: optional ``(T,)`` traded fraction of equity per period (e.g.
            ``SimResult.turnover``); its mean is reported as ``turnover``.

    Returns:
        ``{name: value}`` with exactly the keys of ``METRIC_NAMES``, plus ``turnover`` when
        ``turnover`` is given. Undefined values are NaN.

    Raises:
        ConfigError: if ``periods_per_year`` is not a number > 0.
        DataError: if ``returns`` is not 1-D or has non-finite values, or ``turnover`` does not
            match it.
    """
    r, tv = _validate(returns, periods_per_year, turnover)
    n = r.size
    out: dict[str, float] = {name: _NAN for name in METRIC_NAMES}
    out["n_periods"] = float(n)
    if tv is not None:
        out["turnover"] = float(tv.mean()) if n else _NAN
    if n == 0:
        return out

    sqrt_p = math.sqrt(periods_per_year)
    equity = np.concatenate([[1.0], np.cumprod(1.0 + r)])  # (T + 1,), starts at 1.0
    total = float(equity[-1] - 1.0)
    mean = float(r.mean())
    if n < 2:
        std = _NAN  # a sample std needs two periods
    elif r.max() == r.min():
        std = 0.0  # exactly; np.std of equal values may leave ~1e-18 of rounding
    else:
        std = float(r.std(ddof=1))
    downside = float(np.sqrt(np.mean(np.minimum(r, 0.0) ** 2)))
    peaks = np.maximum.accumulate(equity)  # >= 1.0, never 0
    max_dd = float((equity / peaks - 1.0).min())
    max_dd = 0.0 if max_dd == 0.0 else max_dd  # no -0.0
    annual = _cagr(total, n, periods_per_year)
    nonzero = int(np.count_nonzero(r))

    out["total_return"] = total
    out["annual_return"] = annual
    out["annual_volatility"] = std * sqrt_p
    out["sharpe"] = _ratio(mean, std) * sqrt_p
    out["sortino"] = _ratio(mean, downside) * sqrt_p
    out["max_drawdown"] = max_dd
    out["calmar"] = _ratio(annual, abs(max_dd))
    out["hit_rate"] = _ratio(float(np.count_nonzero(r > 0)), float(nonzero))
    return {k: (v if k == "n_periods" else finite_or_nan(v)) for k, v in out.items()}


def metrics_reference(returns: np.ndarray, periods_per_year: int = 252) -> dict[str, float]:
    """Naive loop-over-periods implementation of ``compute_metrics`` (without turnover).

    Args:
        returns: ``(T,)`` simple per-period portfolio returns.
        periods_per_year: periods in a year.

    Returns:
        The same keys and definitions as ``compute_metrics(returns, periods_per_year)``.

    Raises:
        ConfigError: if ``periods_per_year`` is not a number > 0.
        DataError: if ``returns`` is not 1-D or has non-finite values.
    """
    r, _ = _validate(returns, periods_per_year, None)
    values = [float(x) for x in r]
    n = len(values)
    out: dict[str, float] = {name: _NAN for name in METRIC_NAMES}
    out["n_periods"] = float(n)
    if n == 0:
        return out

    equity, peak, max_dd = 1.0, 1.0, 0.0
    total_sum, down_sq, wins, nonzero = 0.0, 0.0, 0, 0
    for x in values:
        equity *= 1.0 + x
        if equity > peak:
            peak = equity
        max_dd = min(max_dd, equity / peak - 1.0)
        total_sum += x
        if x < 0:
            down_sq += x * x
        if x != 0:
            nonzero += 1
            if x > 0:
                wins += 1
    mean = total_sum / n
    if n < 2:
        std = _NAN
    elif all(x == values[0] for x in values):
        std = 0.0
    else:
        sq = 0.0
        for x in values:
            sq += (x - mean) ** 2
        std = math.sqrt(sq / (n - 1))
    downside = math.sqrt(down_sq / n)
    total = equity - 1.0
    annual = _cagr(total, n, periods_per_year)
    ann = math.sqrt(periods_per_year)

    out["total_return"] = total
    out["annual_return"] = annual
    out["annual_volatility"] = std * ann
    out["sharpe"] = mean / std * ann if std == std and std > 0 else _NAN
    out["sortino"] = mean / downside * ann if downside > 0 else _NAN
    out["max_drawdown"] = max_dd
    out["calmar"] = annual / abs(max_dd) if max_dd != 0 and annual == annual else _NAN
    out["hit_rate"] = wins / nonzero if nonzero else _NAN
    return {k: (v if k == "n_periods" else finite_or_nan(v)) for k, v in out.items()}


def _row_ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks (1..n) of each row's finite entries; NaN stays NaN."""
    return pd.DataFrame(a).rank(axis=1, method="average").to_numpy()


def information_coefficient(
    signal: np.ndarray, realized: np.ndarray, rank: bool = False
) -> np.ndarray:
    """Per-bar cross-sectional correlation of a signal with the returns that follow it.

    Args:
        signal: (T, S) forecasts made at the close of t; NaN = no forecast.
        realized: (T, S) returns earned after t (e.g. close t -> t + 1); NaN = unknown.
        rank: Spearman (correlation of ranks) instead of Pearson.

    Returns:
        (T,) correlation per bar over symbols with both values finite; NaN where fewer than 3
        such symbols or either side is constant.
    """
    if signal.shape != realized.shape or signal.ndim != 2:
        raise DataError(f"signal {signal.shape} and realized {realized.shape} must be equal (T, S)")
    both = np.isfinite(signal) & np.isfinite(realized)
    x = np.where(both, signal, np.nan)
    y = np.where(both, realized, np.nan)
    if rank:
        x, y = _row_ranks(x), _row_ranks(y)
    n = both.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        xc = x - np.nanmean(np.where(both, x, np.nan), axis=1, keepdims=True)
        yc = y - np.nanmean(np.where(both, y, np.nan), axis=1, keepdims=True)
        cov = np.nansum(xc * yc, axis=1)
        den = np.sqrt(np.nansum(xc**2, axis=1) * np.nansum(yc**2, axis=1))
        ic = cov / den
    ic[(n < 3) | ~(den > 0)] = np.nan
    return ic


def ic_summary(signal: np.ndarray, realized: np.ndarray) -> dict[str, float]:
    """Mean IC and IC information ratio (mean / std of the per-bar IC), Pearson and rank.

    Keys: ic, ic_ir, rank_ic, rank_ic_ir (not annualised; NaN when undefined).
    """
    out = {}
    for prefix, rank in (("", False), ("rank_", True)):
        ic = information_coefficient(signal, realized, rank)
        ic = ic[np.isfinite(ic)]
        mean = float(ic.mean()) if len(ic) else math.nan
        std = float(ic.std(ddof=1)) if len(ic) > 1 else math.nan
        out[f"{prefix}ic"] = mean
        out[f"{prefix}ic_ir"] = _ratio(mean, std)
    return out
