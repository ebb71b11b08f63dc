"""The built-in features: every `FeatureSpec` of the default registry, in registration order.

Kernels (`plusultra.data.features.indicators`) work on whole ``(T, S)`` arrays at once: pandas
rolling/ewm (Cython, no ``rolling.apply``) across all symbols, or numpy over sliding windows
processed in memory-bounded blocks of symbols. Each kernel has a naive loop reference in the
tests; RSI, MACD, Bollinger width and ATR are also checked against `ta`. The conventions every
feature follows (causality, NaN, lookback, units) are in `plusultra.data.features.registry`;
`plusultra.data.features.pipeline` registers `BUILTIN_FEATURES` into its `REGISTRY`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from plusultra.data.features.indicators import (
    FFT_BANDS,
    atr,
    bollinger_width,
    fft_band_energy,
    log_returns,
    macd,
    realised_vol,
    rolling_skew_kurt,
    rolling_zscores,
    rsi,
    sigmoid,
    zscore,
)
from plusultra.data.features.registry import FeatureInputs, FeatureSpec


def _log_close(x: FeatureInputs) -> np.ndarray:
    return x.cached("log_close", lambda: np.log(x["close"]))


def _macd(x: FeatureInputs) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return x.cached("macd_12_26_9", lambda: macd(x["close"], 12, 26, 9))


def _macd_signal_diff(x: FeatureInputs) -> np.ndarray:
    sig = _macd(x)[1]
    step = np.full_like(sig, np.nan)
    step[1:] = sig[1:] - sig[:-1]
    return step / x["close"]


def _gap_open(x: FeatureInputs) -> np.ndarray:
    prev = np.full_like(x["close"], np.nan)
    prev[1:] = x["close"][:-1]
    return np.log(x["open"] / prev)


def _volume_stats(x: FeatureInputs, n: int) -> tuple[np.ndarray, np.ndarray]:
    """z-scores of log(1 + volume) over n bars including t and vs the previous n bars."""
    return x.cached(f"volume_z_{n}", lambda: rolling_zscores(np.log1p(x["volume"]), n))


def _skew_kurt(x: FeatureInputs) -> tuple[np.ndarray, np.ndarray]:
    return x.cached("moments_20", lambda: rolling_skew_kurt(x["log_return"], 20))


def _fft(x: FeatureInputs) -> np.ndarray:
    return x.cached("fft_32", lambda: fft_band_energy(x["log_return"], 32))


def _velocity(k: int) -> Callable[[FeatureInputs], np.ndarray]:
    return lambda x: log_returns(x["close"], k) / k


def _log_return(k: int) -> Callable[[FeatureInputs], np.ndarray]:
    return lambda x: log_returns(x["close"], k)


def _vol(n: int) -> Callable[[FeatureInputs], np.ndarray]:
    return lambda x: realised_vol(x["log_return"], n)


def _bull(n: int) -> Callable[[FeatureInputs], np.ndarray]:
    return lambda x: sigmoid(zscore(_log_close(x), n))


def _band(b: int) -> Callable[[FeatureInputs], np.ndarray]:
    return lambda x: _fft(x)[..., b]


C, HLC, V, R = ("close",), ("high", "low", "close"), ("volume",), ("log_return",)
BUILTIN_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec("log_return", _log_return(1), 1, "log(close_t / close_{t-1})", C, ("returns",)),
    FeatureSpec(
        "return_5", _log_return(5), 5, "log(close_t / close_{t-5})", C, ("returns", "momentum")
    ),
    FeatureSpec(
        "return_20", _log_return(20), 20, "log(close_t / close_{t-20})", C, ("returns", "momentum")
    ),
    *(
        FeatureSpec(
            f"velocity_{k}",
            _velocity(k),
            k,
            f"price velocity: log(close_t / close_{{t-{k}}}) / {k}, log return per bar",
            C,
            ("momentum", "trend"),
        )
        for k in (3, 10, 40)
    ),
    FeatureSpec(
        "gap_open",
        _gap_open,
        1,
        "log(open_t / close_{t-1}), overnight gap",
        ("open", "close"),
        ("returns",),
    ),
    FeatureSpec(
        "range_hl",
        lambda x: np.log(x["high"] / x["low"]),
        0,
        "log(high / low) of the bar",
        ("high", "low"),
        ("volatility",),
    ),
    *(
        FeatureSpec(
            f"volatility_{n}",
            _vol(n),
            n,
            f"annualised realised vol: std (ddof 1) of {n} log returns x sqrt(252)",
            R,
            ("volatility",),
        )
        for n in (20, 60)
    ),
    FeatureSpec(
        "atr_14",
        lambda x: atr(x["high"], x["low"], x["close"], 14) / x["close"],
        13,
        "Wilder ATR(14) / close_t: average true range as a fraction of price",
        HLC,
        ("volatility",),
    ),
    FeatureSpec(
        "bb_width_20",
        lambda x: bollinger_width(x["close"], 20, 2.0),
        19,
        "Bollinger width (upper - lower) / middle, 20 bars, 2 std (ddof 0), fraction",
        C,
        ("volatility",),
    ),
    FeatureSpec(
        "skew_20",
        lambda x: _skew_kurt(x)[0],
        20,
        "sample skewness (G1) of 20 log returns",
        R,
        ("distribution",),
    ),
    FeatureSpec(
        "kurt_20",
        lambda x: _skew_kurt(x)[1],
        20,
        "sample excess kurtosis (G2) of 20 log returns",
        R,
        ("distribution",),
    ),
    FeatureSpec(
        "rsi_14",
        lambda x: (rsi(x["close"], 14) - 50.0) / 50.0,
        14,
        "Wilder RSI(14) scaled to [-1, 1]: (RSI - 50) / 50",
        C,
        ("momentum",),
    ),
    FeatureSpec(
        "macd_hist",
        lambda x: _macd(x)[2] / x["close"],
        33,
        "MACD(12, 26, 9) histogram (line - signal) / close_t",
        C,
        ("momentum", "trend"),
    ),
    FeatureSpec(
        "macd_signal_diff",
        _macd_signal_diff,
        34,
        "one-bar change of the MACD(12, 26, 9) signal line / close_t (its slope)",
        C,
        ("momentum", "trend"),
    ),
    *(
        FeatureSpec(
            f"bull_prob_{n}",
            _bull(n),
            n - 1,
            f"soft bull regime: sigmoid of the z-score of log close vs its {n}-bar "
            "mean and std (ddof 1); bear = 1 - bull",
            C,
            ("regime", "trend"),
        )
        for n in (20, 50)
    ),
    FeatureSpec(
        "volume_z_20",
        lambda x: _volume_stats(x, 20)[0],
        19,
        "z-score of log(1 + volume) over 20 bars including t",
        V,
        ("volume",),
    ),
    FeatureSpec(
        "volume_anomaly_20",
        lambda x: np.clip(_volume_stats(x, 20)[1], -5.0, 5.0),
        20,
        "z-score of log(1 + volume_t) vs the previous 20 bars, clipped to [-5, 5]",
        V,
        ("volume",),
    ),
    *(
        FeatureSpec(
            f"fft_{band}_32",
            _band(b),
            32,
            f"share of the energy of the last 32 log returns in FFT bins {lo}-{hi} "
            f"(periods {32 / lo:.3g}-{32 / hi:.2g} bars), in [0, 1]",
            R,
            ("spectral",),
        )
        for b, (band, (lo, hi)) in enumerate(FFT_BANDS.items())
    ),
)
