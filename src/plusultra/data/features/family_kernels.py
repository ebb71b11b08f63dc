"""Vectorised kernels of the feature families (`plusultra.data.features.families`).

Same conventions as `plusultra.data.features.indicators`: inputs and outputs are ``(T, S)``
float64 arrays (a ``(T,)`` market series where said), NaN marks "undefined", rolling windows
that contain a missing bar are undefined, and nothing at bar ``t`` reads a bar after ``t``.
Cross-sectional kernels work on one bar (one row) at a time, over the symbols *listed* at that
bar: a symbol is listed at ``t`` when it has a bar (a finite close) at ``t``. Each kernel has a
naive loop reference in ``tests/test_feature_families.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from plusultra.data.features.indicators import TRADING_DAYS, _back, _div, _frame

LN2 = float(np.log(2.0))


def _roll(x: np.ndarray, n: int) -> pd.core.window.Rolling:
    return _frame(x).rolling(n, min_periods=n)


def rolling_mean(x: np.ndarray, n: int) -> np.ndarray:
    """Mean of the n bars ending at t; NaN if any of them is missing. (T, S) -> (T, S)."""
    return _back(_roll(x, n).mean(), x)


def rolling_extreme(x: np.ndarray, n: int, high: bool = True) -> np.ndarray:
    """Max (`high`) or min of the n bars ending at t; NaN if any of them is missing."""
    roll = _roll(x, n)
    return _back(roll.max() if high else roll.min(), x)


def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is zero or undefined."""
    return _div(num, den)


def shift(x: np.ndarray, k: int = 1) -> np.ndarray:
    """``x[t - k]`` at t (NaN for t < k): the previous bar of the panel calendar."""
    x = np.asarray(x, dtype=np.float64)
    out = np.full_like(x, np.nan)
    out[k:] = x[:-k]
    return out


def _annualise(variance: np.ndarray) -> np.ndarray:
    """sqrt(252 * per-bar variance); a negative variance (estimator noise) counts as 0."""
    return np.sqrt(TRADING_DAYS * np.maximum(variance, 0.0))


# ----------------------------------------------------------------------------- volatility
def semivol(returns: np.ndarray, n: int, downside: bool = True) -> np.ndarray:
    """Annualised semi-deviation around zero: ``sqrt(252 * mean(min(r, 0)^2))`` over n bars.

    Args:
        returns: (T, S) per-bar log returns.
        n: bars in the window, t included.
        downside: negative returns (True) or positive ones (``max(r, 0)``).
    """
    part = np.minimum(returns, 0.0) if downside else np.maximum(returns, 0.0)
    return _annualise(rolling_mean(part * part, n))


def parkinson_vol(high: np.ndarray, low: np.ndarray, n: int) -> np.ndarray:
    """Parkinson (1980): ``sqrt(252 * mean(ln(H/L)^2) / (4 ln 2))`` over n bars, annualised."""
    hl = np.log(high / low)
    return _annualise(rolling_mean(hl * hl, n) / (4.0 * LN2))


def garman_klass_vol(
    open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int
) -> np.ndarray:
    """Garman-Klass (1980): mean of ``0.5 ln(H/L)^2 - (2 ln 2 - 1) ln(C/O)^2``, annualised."""
    hl, co = np.log(high / low), np.log(close / open_)
    return _annualise(rolling_mean(0.5 * hl * hl - (2.0 * LN2 - 1.0) * co * co, n))


def _rogers_satchell_bar(
    open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray
) -> np.ndarray:
    """Per-bar Rogers-Satchell variance ``ln(H/C) ln(H/O) + ln(L/C) ln(L/O)`` (>= 0)."""
    return np.log(high / close) * np.log(high / open_) + np.log(low / close) * np.log(low / open_)


def rogers_satchell_vol(
    open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int
) -> np.ndarray:
    """Rogers-Satchell (1991), drift-independent: mean of the per-bar RS variance, annualised."""
    return _annualise(rolling_mean(_rogers_satchell_bar(open_, high, low, close), n))


def yang_zhang_vol(
    open_: np.ndarray, high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int
) -> np.ndarray:
    """Yang-Zhang (2000): overnight, open-to-close and Rogers-Satchell variances combined.

    ``var = var_o + k var_c + (1 - k) mean(RS)`` over n bars, with ``var_o`` the sample
    variance (ddof 1) of the overnight returns ``ln(O_t / C_{t-1})`` (``C_{t-1}``: the previous
    bar of the calendar, so a missing day makes the window undefined), ``var_c`` that of
    ``ln(C_t / O_t)`` and ``k = 0.34 / (1.34 + (n + 1) / (n - 1))``. Annualised; first value at
    index n.
    """
    overnight, oc = np.log(open_ / shift(close)), np.log(close / open_)
    k = 0.34 / (1.34 + (n + 1.0) / (n - 1.0))
    var_o, var_c = _back(_roll(overnight, n).var(), close), _back(_roll(oc, n).var(), close)
    rs = rolling_mean(_rogers_satchell_bar(open_, high, low, close), n)
    return _annualise(var_o + k * var_c + (1.0 - k) * rs)


# ----------------------------------------------------------------------------- liquidity
def amihud(returns: np.ndarray, dollar_volume: np.ndarray, n: int) -> np.ndarray:
    """Amihud (2002) illiquidity, log-scaled: ``ln(1e6 * mean(|r| / DV))`` over n bars.

    The mean runs over the bars of the window with a positive dollar volume (a zero-volume bar
    has no price impact to measure and is left out); the window needs n finite returns and at
    least one traded bar. Units: absolute log return per million of currency traded, logged;
    NaN where the mean is 0 (no price move at all).

    Args:
        returns: (T, S) per-bar log returns.
        dollar_volume: (T, S) close x volume.
        n: bars in the window, t included.
    """
    traded = np.isfinite(returns) & (dollar_volume > 0)
    ratio = np.where(traded, np.abs(returns) / np.where(traded, dollar_volume, 1.0), 0.0)
    complete = _back(_roll(np.where(np.isfinite(returns), 1.0, np.nan), n).count(), returns) == n
    total = _back(_roll(ratio, n).sum(), returns)
    count = _back(_roll(traded.astype(np.float64), n).sum(), returns)
    mean = _div(total, count)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(complete & (mean > 0), np.log(1e6 * mean), np.nan)


def volume_ratio(volume: np.ndarray, n: int) -> np.ndarray:
    """``volume_t / mean(volume_{t-n} .. volume_{t-1})``: today's volume vs the previous n bars.

    NaN where that mean is 0 or a bar of the window is missing; first value at index n.
    """
    return _div(volume, shift(rolling_mean(volume, n)))


def corwin_schultz_spread(high: np.ndarray, low: np.ndarray, n: int) -> np.ndarray:
    """Corwin-Schultz (2012) bid-ask spread estimate from two-bar high/low ranges, mean of n.

    For the bar pair (t-1, t): ``beta = ln(H_{t-1}/L_{t-1})^2 + ln(H_t/L_t)^2``,
    ``gamma = ln(max(H_{t-1}, H_t) / min(L_{t-1}, L_t))^2``,
    ``alpha = (sqrt(2 beta) - sqrt(beta)) / (3 - 2 sqrt 2) - sqrt(gamma / (3 - 2 sqrt 2))`` and
    ``S = 2 (e^alpha - 1) / (1 + e^alpha)``; negative estimates are set to 0 (as in the paper)
    before averaging over the n pairs ending at t. A fraction of price; first value at index n.
    """
    hl = np.log(high / low)
    beta = shift(hl) ** 2 + hl**2
    gamma = np.log(np.maximum(shift(high), high) / np.minimum(shift(low), low)) ** 2
    den = 3.0 - 2.0 * np.sqrt(2.0)
    alpha = (np.sqrt(2.0 * beta) - np.sqrt(beta)) / den - np.sqrt(gamma / den)
    spread = 2.0 * np.expm1(alpha) / (1.0 + np.exp(alpha))
    return rolling_mean(np.where(np.isnan(spread), np.nan, np.maximum(spread, 0.0)), n)


# ----------------------------------------------------------------------------- market
def listed(close: np.ndarray) -> np.ndarray:
    """(T, S) bool: the symbol has a bar at t (NaN close: not yet listed, delisted, a gap)."""
    return np.isfinite(close)


def market_return(returns: np.ndarray) -> np.ndarray:
    """Equal-weight universe log return per bar, (T, S) -> (T,).

    ``ln(1 + mean_s(e^{r_s} - 1))`` over the symbols with a finite log return at t (those with
    a bar at t and t-1): the log return of a portfolio holding the listed symbols in equal
    weights. Every symbol's close at t is known at t's close, so the value is causal. NaN where
    no symbol has a return.
    """
    simple = np.expm1(returns)
    count = np.isfinite(simple).sum(axis=1)
    total = np.where(np.isfinite(simple), simple, 0.0).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(count > 0, np.log1p(total / np.maximum(count, 1)), np.nan)


def rolling_regression(
    y: np.ndarray, x: np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rolling OLS of y on x (with intercept) over the n bars ending at t.

    Args:
        y: (T, S) e.g. a symbol's log returns.
        x: (T,) or (T, S) regressor, e.g. the market return; a (T,) series is the same for every
            symbol.
        n: bars in the window; a bar where y or x is missing makes the window undefined.

    Returns:
        beta ``cov(y, x) / var(x)``, corr ``cov / (sd_y sd_x)`` and the residual std
        ``sd_y sqrt(1 - corr^2)`` (= std with ddof 1 of the OLS residuals), per bar; each
        (T, S). NaN where var(x) or var(y) is 0.
    """
    y = np.asarray(y, dtype=np.float64)
    x = np.broadcast_to(np.asarray(x, dtype=np.float64).reshape(len(y), -1), y.shape)
    both = np.isfinite(y) & np.isfinite(x)
    fy, fx = _frame(np.where(both, y, np.nan)), _frame(np.where(both, x, np.nan))
    cov = _back(fy.rolling(n, min_periods=n).cov(fx, pairwise=False), y)
    var_x = _back(fx.rolling(n, min_periods=n).var(), y)
    var_y = _back(fy.rolling(n, min_periods=n).var(), y)
    var_x, var_y = np.where(var_x > 0, var_x, np.nan), np.where(var_y > 0, var_y, np.nan)
    beta = cov / var_x
    corr = np.clip(cov / np.sqrt(var_x * var_y), -1.0, 1.0)
    resid = np.sqrt(var_y * np.maximum(1.0 - corr * corr, 0.0))
    return beta, corr, resid


def cross_section_rank(x: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Percentile rank in [0, 1] of each symbol among the symbols listed at that bar.

    ``(rank - 1) / (m - 1)`` with average ranks for ties, m = number of listed symbols with a
    finite value at t; a symbol not listed or NaN gets NaN; with m = 1 the value is 0.5 (no
    cross-section: the neutral middle).
    """
    vals = np.where(listed(close), x, np.nan)
    rank = pd.DataFrame(vals).rank(axis=1, method="average").to_numpy()
    m = np.isfinite(vals).sum(axis=1, keepdims=True).astype(np.float64)
    return np.where(m > 1, (rank - 1.0) / np.maximum(m - 1.0, 1.0), np.where(rank > 0, 0.5, np.nan))


def cross_section_zscore(x: np.ndarray, close: np.ndarray) -> np.ndarray:
    """``(x - mean) / std`` (ddof 0) across the symbols listed at that bar with a finite value.

    A symbol not listed or NaN gets NaN; where the cross-section has one symbol or no spread
    the value is 0 (the neutral centre).
    """
    vals = np.where(listed(close), x, np.nan)
    ok = np.isfinite(vals)
    m = np.maximum(ok.sum(axis=1, keepdims=True), 1)
    mean = np.where(ok, vals, 0.0).sum(axis=1, keepdims=True) / m
    dev = np.where(ok, vals - mean, 0.0)
    std = np.sqrt((dev * dev).sum(axis=1, keepdims=True) / m)
    return np.where(ok, np.where(std > 0, dev / np.where(std > 0, std, 1.0), 0.0), np.nan)


def cross_section_share_positive(x: np.ndarray, close: np.ndarray) -> np.ndarray:
    """(T,) share of the listed symbols with a finite value whose value is > 0 (NaN if none)."""
    vals = np.where(listed(close), x, np.nan)
    ok = np.isfinite(vals)
    return _div((vals > 0).sum(axis=1).astype(np.float64), ok.sum(axis=1).astype(np.float64))


def cross_section_std(x: np.ndarray, close: np.ndarray) -> np.ndarray:
    """(T,) std (ddof 0) of the finite values of the listed symbols (NaN if none)."""
    vals = np.where(listed(close), x, np.nan)
    ok = np.isfinite(vals)
    m = ok.sum(axis=1)
    mean = np.where(ok, vals, 0.0).sum(axis=1) / np.maximum(m, 1)
    dev = np.where(ok, vals - mean[:, None], 0.0)
    return np.where(m > 0, np.sqrt((dev * dev).sum(axis=1) / np.maximum(m, 1)), np.nan)


# ----------------------------------------------------------------------------- calendar
def calendar_fields(dates: np.ndarray) -> dict[str, np.ndarray]:
    """Causal calendar fields of each bar's own date, each (T,) float64.

    ``weekday`` (Mon = 0), ``month`` (1-12), ``bdays_into_month`` (weekdays from the 1st of
    the month up to the bar's date, excluded: 0 on the month's first weekday) and
    ``bdays_to_month_end`` (weekdays after the bar's date to the month's last day: 0 on its
    last weekday). Only the bar's date is read; weekdays stand in for trading days, which
    would need the exchange's future holiday calendar (a holiday shifts the counts by one).
    """
    stamps = pd.DatetimeIndex(dates)
    day = stamps.normalize().to_numpy().astype("datetime64[D]")
    first = (stamps.normalize() - pd.to_timedelta(stamps.day - 1, unit="D")).to_numpy()
    last = first.astype("datetime64[D]") + stamps.days_in_month.to_numpy() - 1
    return {
        "weekday": stamps.weekday.to_numpy(dtype=np.float64),
        "month": stamps.month.to_numpy(dtype=np.float64),
        "bdays_into_month": np.busday_count(first.astype("datetime64[D]"), day).astype(float),
        "bdays_to_month_end": np.busday_count(day + 1, last + 1).astype(np.float64),
    }
