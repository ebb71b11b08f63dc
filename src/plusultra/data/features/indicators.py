"""Vectorised indicator kernels on (T,) or (T, S) arrays, the building blocks of features.

Kernels work on whole arrays at once: pandas rolling/ewm (Cython, no ``rolling.apply``) across
all symbols, or numpy over sliding windows processed in memory-bounded blocks. NaN marks
"undefined": before a kernel's lookback is filled, on missing bars (exponential averages skip
them and carry their state), and where a denominator is zero. Each kernel has a naive loop
reference in ``tests/test_features.py``; RSI, MACD, Bollinger width and ATR are also checked
against the independent `ta` package (``experiments/benchmarks/indicators.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

TRADING_DAYS = 252
# rfft bins (inclusive) of each FFT band for a 32-bar window: periods 32-8, 6.4-4, 3.6-2 bars.
FFT_BANDS = {"low": (1, 4), "mid": (5, 8), "high": (9, 16)}
BLOCK_ELEMENTS = 1 << 22  # elements of one block of sliding windows (32 MiB in float64)


def _frame(x: np.ndarray) -> pd.DataFrame:
    """(T,) or (T, S) array as a (T, S') DataFrame (no copy for float64)."""
    return pd.DataFrame(np.asarray(x, dtype=np.float64).reshape(len(x), -1))


def _rolling(x: np.ndarray, n: int) -> pd.core.window.Rolling:
    return _frame(x).rolling(n, min_periods=n)


def _back(frame: pd.DataFrame, like: np.ndarray) -> np.ndarray:
    return frame.to_numpy().reshape(np.shape(like))


def _div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, NaN where den is zero or undefined."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den != 0, num / den, np.nan)


def log_returns(close: np.ndarray, k: int = 1) -> np.ndarray:
    """k-bar log return ``log(close_t / close_{t-k})``; (T, S) -> (T, S), NaN for t < k."""
    lc = np.log(np.asarray(close, dtype=np.float64))
    out = np.full_like(lc, np.nan)
    out[k:] = lc[k:] - lc[:-k]
    return out


def ewm_mean(x: np.ndarray, alpha: float, min_periods: int = 0) -> np.ndarray:
    """Exponential average ``y_t = (1 - alpha) y_{t-1} + alpha x_t`` seeded with the first x.

    Missing inputs are skipped (state carried over) and give NaN; the output is NaN until
    `min_periods` inputs have been seen. Same recursion as pandas ``ewm(adjust=False)``.

    Args:
        x: (T,) or (T, S) values.
        alpha: smoothing factor in (0, 1]; ``2 / (span + 1)`` or ``1 / n`` for Wilder.
        min_periods: number of observed inputs before the first defined output.
    """
    x = np.asarray(x, dtype=np.float64)
    data = pd.Series(x) if x.ndim == 1 else _frame(x)  # a Series is cheaper for one column
    ewm = data.ewm(alpha=alpha, adjust=False, ignore_na=True, min_periods=min_periods)
    out = ewm.mean().to_numpy(copy=True).reshape(x.shape)  # writable under pandas 3's CoW
    missing = np.isnan(x)
    if missing.any():
        out[missing] = np.nan
    return out


def rsi(close: np.ndarray, n: int = 14) -> np.ndarray:
    """Wilder's RSI in [0, 100] from close-to-close changes; 100 when the average loss is 0.

    Average gain and loss are Wilder averages (alpha = 1/n) seeded with the first change, so
    the first value is at index n. `ta` differs only in its warm-up: it counts a zero change
    on the first bar, a difference that decays as ``(1 - 1/n)^t`` (< 1e-6 after ~250 bars).

    Args:
        close: (T,) or (T, S) prices.
        n: averaging length in bars.
    """
    close = np.asarray(close, dtype=np.float64)
    delta = np.full_like(close, np.nan)
    delta[1:] = close[1:] - close[:-1]
    gain = ewm_mean(np.clip(delta, 0.0, None), 1.0 / n, n)
    loss = ewm_mean(np.clip(-delta, 0.0, None), 1.0 / n, n)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(loss == 0, 100.0, 100.0 - 100.0 / (1.0 + gain / loss))
    out[np.isnan(gain)] = np.nan
    return out


def macd(
    close: np.ndarray, fast: int = 12, slow: int = 26, signal: int = 9
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """MACD line, signal line and histogram, in price units (same definition as `ta`).

    ``line = EMA_fast(close) - EMA_slow(close)`` (EMAs with alpha = 2/(span+1) seeded with the
    first close, defined after `fast` / `slow` bars), ``signal = EMA_signal(line)`` seeded with
    the first defined line value, ``hist = line - signal``. First histogram at index
    ``slow + signal - 2``.

    Args:
        close: (T,) or (T, S) prices.
        fast, slow, signal: EMA spans in bars.

    Returns:
        line, signal, hist: each shaped like `close`.
    """
    line = ewm_mean(close, 2.0 / (fast + 1.0), fast) - ewm_mean(close, 2.0 / (slow + 1.0), slow)
    sig = ewm_mean(line, 2.0 / (signal + 1.0), signal)
    return line, sig, line - sig


def bollinger_width(close: np.ndarray, n: int = 20, k: float = 2.0, ddof: int = 0) -> np.ndarray:
    """Bollinger band width ``(upper - lower) / middle = 2 k std / mean`` as a fraction.

    Bollinger's (and `ta`'s) bands use the population std (``ddof=0``); `ta` reports the width
    in percent (x100). First value at index n - 1.

    Args:
        close: (T,) or (T, S) prices.
        n: window in bars (including t).
        k: band half-width in standard deviations.
        ddof: delta degrees of freedom of the std.
    """
    roll = _rolling(close, n)
    return _div(2.0 * k * _back(roll.std(ddof=ddof), close), _back(roll.mean(), close))


def true_range(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """``max(high - low, |high - c_prev|, |low - c_prev|)`` in price units.

    ``c_prev`` is the symbol's last available close before t (so a missing day does not hide
    a gap); on a symbol's first bar the true range is ``high - low`` (as in `ta`).
    """
    high, low, close = (np.asarray(a, dtype=np.float64) for a in (high, low, close))
    prev = _back(_frame(close).ffill().shift(1), close)
    hl = high - low
    return np.where(
        np.isnan(prev), hl, np.maximum(hl, np.maximum(np.abs(high - prev), np.abs(low - prev)))
    )


def atr(high: np.ndarray, low: np.ndarray, close: np.ndarray, n: int = 14) -> np.ndarray:
    """Wilder's average true range in price units (same definition as `ta`).

    Seeded with the mean of a symbol's first n true ranges at its n-th bar, then
    ``atr_t = ((n - 1) atr_{t-1} + tr_t) / n``; bars without data are skipped. First value at
    index n - 1. `ta` fills the warm-up with 0 instead of NaN.

    Args:
        high, low, close: (T,) or (T, S) prices.
        n: averaging length in bars.
    """
    tr = true_range(high, low, close)
    valid = ~np.isnan(tr)
    count = np.cumsum(valid, axis=0)
    seed = valid & (count == n)
    x = np.where(count > n, tr, np.nan)
    x[seed] = np.cumsum(np.where(valid, tr, 0.0), axis=0)[seed] / n
    out = ewm_mean(x, 1.0 / n)
    out[~valid] = np.nan
    return out


def _windowed(
    x: np.ndarray, n: int, fn: Callable[[np.ndarray], np.ndarray], n_out: int, dtype: type
) -> np.ndarray:
    """Apply `fn` to every trailing n-bar window of x (T, S) in memory-bounded blocks.

    `fn` maps windows (rows, cols, n) to (rows, cols, n_out). Blocks hold at most
    `BLOCK_ELEMENTS` window values, whatever T and S. Returns (T, S, n_out), NaN for t < n - 1.
    """
    t_len, s_len = x.shape
    out = np.full((t_len, s_len, n_out), np.nan, dtype=dtype)
    cols = int(np.clip(BLOCK_ELEMENTS // max(t_len * n, 1), 1, s_len))
    rows = max(BLOCK_ELEMENTS // (cols * n), 1)
    for c0 in range(0, s_len, cols):  # blocks of symbols, then of time
        for t0 in range(n - 1, t_len, rows):
            t1 = min(t0 + rows, t_len)
            win = sliding_window_view(x[t0 - n + 1 : t1, c0 : c0 + cols], n, axis=0)
            out[t0:t1, c0 : c0 + cols] = fn(win)
    return out


def _moments(win: np.ndarray) -> np.ndarray:
    """Sample skewness and excess kurtosis (pandas' bias-corrected G1, G2) of each window."""
    n = win.shape[-1]
    d = win - win.mean(axis=-1, keepdims=True)  # (rows, cols, n)
    d2 = d * d
    m2 = d2.sum(axis=-1) / n
    m3 = np.einsum("...i,...i->...", d2, d) / n
    m4 = np.einsum("...i,...i->...", d2, d2) / n
    with np.errstate(divide="ignore", invalid="ignore"):
        m2 = np.where(m2 > 0, m2, np.nan)
        skew = np.sqrt(n * (n - 1.0)) / (n - 2.0) * m3 / m2**1.5
        kurt = (n - 1.0) / ((n - 2.0) * (n - 3.0)) * ((n + 1.0) * m4 / m2**2 - 3.0 * (n - 1.0))
    return np.stack([skew, kurt], axis=-1)


def rolling_skew_kurt(x: np.ndarray, n: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """Rolling sample skewness and excess kurtosis of x over n bars including t.

    Same bias-corrected estimators as pandas ``rolling().skew()/.kurt()``, computed two-pass on
    each window (pandas shifts the data by its global mean first, which makes the past depend
    bit-wise on the future). NaN where the window has a missing value or zero variance.

    Args:
        x: (T, S) values, e.g. log returns.
        n: window length (>= 4).

    Returns:
        skew, kurt: (T, S) float64 each.
    """
    out = _windowed(np.asarray(x, dtype=np.float64), n, _moments, 2, np.float64)
    return out[..., 0], out[..., 1]


def _dft_band_matrices(n: int, bands: Mapping[str, tuple[int, int]]) -> tuple[np.ndarray, ...]:
    """Real DFT basis (n, 2K) as [cos | -sin] and the (K, B) one-sided band weights."""
    k = np.arange(n // 2 + 1)
    angle = 2.0 * np.pi * np.outer(np.arange(n), k) / n
    basis = np.concatenate([np.cos(angle), -np.sin(angle)], axis=1).astype(np.float32)
    one_sided = np.where((k > 0) & (2 * k < n), 2.0, 1.0)  # bins mirrored in the full DFT
    weights = np.zeros((len(k), len(bands)), dtype=np.float32)
    for b, (lo, hi) in enumerate(bands.values()):
        weights[lo : hi + 1, b] = one_sided[lo : hi + 1]
    total = np.zeros((len(k), 1), dtype=np.float32)
    total[1:, 0] = one_sided[1:]
    return basis, weights, total


def fft_band_energy(
    x: np.ndarray, n: int = 32, bands: Mapping[str, tuple[int, int]] = FFT_BANDS
) -> np.ndarray:
    """Share of a trailing window's spectral energy in each frequency band, in [0, 1].

    For each t the window ``x[t-n+1 .. t]`` is transformed (rectangular window, no taper);
    energy ``|X_k|^2`` is counted one-sided (bins 1..n/2 - 1 twice) and divided by the total
    over bins 1..n/2, so the DC bin (the window's mean) is excluded and the shares of bands
    covering 1..n/2 sum to 1. The DFT is a float32 matrix product with a (n, n + 2) cos/sin
    basis (for n = 32 faster than batched ``np.fft.rfft``); blocks of symbols keep memory at
    a few tens of MB. NaN where the window has a missing value or no variation.

    Args:
        x: (T, S) values, e.g. log returns.
        n: window length in bars.
        bands: name -> inclusive (first, last) rfft bin.

    Returns:
        (T, S, B) float32 shares in the order of `bands`.
    """
    basis, weights, total = _dft_band_matrices(n, bands)
    n_bins = basis.shape[1] // 2

    def shares(win: np.ndarray) -> np.ndarray:
        spec = win @ basis  # (rows, cols, 2K)
        power = spec[..., :n_bins] ** 2 + spec[..., n_bins:] ** 2  # (rows, cols, K)
        with np.errstate(divide="ignore", invalid="ignore"):
            return (power @ weights) / (power @ total)

    return _windowed(np.asarray(x, dtype=np.float32), n, shares, len(bands), np.float32)


def rolling_zscores(x: np.ndarray, n: int, ddof: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Rolling z-scores of x against the n bars ending at t and against the n bars before t.

    Args:
        x: (T,) or (T, S) values.
        n: window length in bars.
        ddof: delta degrees of freedom of the std.

    Returns:
        current: ``(x_t - mean(x_{t-n+1..t})) / std(...)``, first value at index n - 1.
        anomaly: ``(x_t - mean(x_{t-n..t-1})) / std(...)``: the bar is not part of its own
            baseline, so a spike is not damped by itself; first value at index n.
        Both NaN where the std is 0.
    """
    roll = _rolling(x, n)
    mean, std = _back(roll.mean(), x), _back(roll.std(ddof=ddof), x)
    prev_mean, prev_std = np.full_like(mean, np.nan), np.full_like(std, np.nan)
    prev_mean[1:], prev_std[1:] = mean[:-1], std[:-1]
    return _div(x - mean, std), _div(x - prev_mean, prev_std)


def zscore(x: np.ndarray, n: int, ddof: int = 1) -> np.ndarray:
    """Rolling z-score ``(x_t - mean) / std`` over the n bars ending at t; NaN where std is 0."""
    roll = _rolling(x, n)
    return _div(x - _back(roll.mean(), x), _back(roll.std(ddof=ddof), x))


def realised_vol(
    returns: np.ndarray,
    n: int,
    min_periods: int | None = None,
    periods_per_year: float | None = TRADING_DAYS,
) -> np.ndarray:
    """Realised volatility: sample std (ddof 1) of the returns in the n bars ending at t.

    The one rolling-volatility kernel of the data layer: the ``volatility_*`` features, the
    volatility regime and the simulators' per-bar volatility (`SQLiteDataModule.context`) call it.

    Args:
        returns: (T,) or (T, S) per-bar returns (log returns in this package), NaN where missing.
        n: bars in the window, t included.
        min_periods: finite returns the window needs (default n: NaN for n bars after a gap);
            fewer than n uses the finite ones only.
        periods_per_year: annualise by ``sqrt(periods_per_year)``; None keeps per-bar units.

    Returns:
        Same shape as `returns`; NaN where fewer than `min_periods` (and fewer than 2) finite
        returns are in the window.
    """
    need = n if min_periods is None else int(min_periods)
    vol = _back(_frame(returns).rolling(n, min_periods=need).std(), returns)
    return vol if periods_per_year is None else vol * np.sqrt(periods_per_year)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function ``1 / (1 + exp(-x))``; NaN stays NaN."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))
