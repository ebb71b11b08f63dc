"""Feature families beyond the built-in set: every spec of `FAMILY_FEATURES`, in order.

Per-symbol families are here: multi-horizon returns and momentum, realised and semi
volatility, return distribution, OHLC range-based volatility estimators (Parkinson,
Garman-Klass, Rogers-Satchell, Yang-Zhang) and liquidity (Amihud, volume ratios, dollar
volume, Corwin-Schultz spread). The families that look across symbols or outside the price
series (market beta and correlation, cross-sectional ranks and z-scores, calendar, alternative
data) are in `plusultra.data.features.families_context`; beta and correlation to a joined index
in `plusultra.data.features.families_index`. Kernels:
`plusultra.data.features.family_kernels` and `plusultra.data.features.indicators`; conventions
(causality, NaN, lookback, units): `plusultra.data.features.registry`. Horizons already in the
built-in set are not repeated (``return_5/20``, ``volatility_20/60``; ``velocity_3/10/40`` are
the 3-, 10- and 40-bar log returns divided by a constant, so ``return_3/10/40`` would duplicate
them after normalisation). `plusultra.data.features.pipeline` registers `FAMILY_FEATURES`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from plusultra.data.features import family_kernels as K
from plusultra.data.features.families_context import CONTEXT_FEATURES
from plusultra.data.features.families_index import INDEX_FEATURES
from plusultra.data.features.indicators import log_returns, realised_vol, rolling_skew_kurt
from plusultra.data.features.regimes import trailing_dollar_volume
from plusultra.data.features.registry import FeatureInputs, FeatureSpec

Fn = Callable[[FeatureInputs], np.ndarray]
C, R, V = ("close",), ("log_return",), ("volume",)
OHLC = ("open", "high", "low", "close")


def _log_return(k: int) -> Fn:
    return lambda x: log_returns(x["close"], k)


def _momentum(long: int, skip: int) -> Fn:
    """log(close_{t-skip} / close_{t-long}): the return up to `skip` bars ago."""
    return lambda x: K.shift(log_returns(x["close"], long - skip), skip)


def _ma_gap(n: int) -> Fn:
    return lambda x: np.log(x["close"] / K.rolling_mean(x["close"], n))


def _extreme(n: int, high: bool) -> Fn:
    return lambda x: np.log(x["close"] / K.rolling_extreme(x["close"], n, high))


def _vol(n: int) -> Fn:
    return lambda x: realised_vol(x["log_return"], n)


def _semivol(n: int, downside: bool) -> Fn:
    return lambda x: K.semivol(x["log_return"], n, downside)


def _ratio(num: str, den: str) -> Fn:
    return lambda x: K.ratio(x[num], x[den])


def _moments(x: FeatureInputs) -> tuple[np.ndarray, np.ndarray]:
    return x.cached("moments_60", lambda: rolling_skew_kurt(x["log_return"], 60))


def _rolling_extreme_return(n: int, high: bool) -> Fn:
    return lambda x: K.rolling_extreme(x["log_return"], n, high)


def _autocorr(n: int) -> Fn:
    return lambda x: K.rolling_regression(x["log_return"], K.shift(x["log_return"]), n)[1]


def _component_vol(n: int, overnight: bool) -> Fn:
    def fn(x: FeatureInputs) -> np.ndarray:
        if overnight:
            part = np.log(x["open"] / K.shift(x["close"]))
        else:
            part = np.log(x["close"] / x["open"])
        return realised_vol(part, n)

    return fn


RANGE_ESTIMATORS: dict[str, tuple[Callable[..., np.ndarray], tuple[str, ...], int, str]] = {
    # name -> (kernel, inputs, extra lookback, definition)
    "parkinson": (K.parkinson_vol, ("high", "low"), 0, "Parkinson (high/low range)"),
    "garman_klass": (K.garman_klass_vol, OHLC, 0, "Garman-Klass (range and open-to-close)"),
    "rogers_satchell": (K.rogers_satchell_vol, OHLC, 0, "Rogers-Satchell (drift-free)"),
    "yang_zhang": (K.yang_zhang_vol, OHLC, 1, "Yang-Zhang (overnight + open-to-close + RS)"),
}


def _range_vol(kernel: Callable[..., np.ndarray], inputs: tuple[str, ...], n: int) -> Fn:
    return lambda x: kernel(*(x[f] for f in inputs), n)


def _dollar_volume(x: FeatureInputs) -> np.ndarray:
    return x["close"] * x["volume"]


def _amihud(n: int) -> Fn:
    return lambda x: K.amihud(x["log_return"], _dollar_volume(x), n)


def _volume_ratio(n: int) -> Fn:
    return lambda x: K.volume_ratio(x["volume"], n)


def _mean_log_dollar_volume(n: int) -> Fn:
    return lambda x: trailing_dollar_volume(x.panel, n)


SYMBOL_FEATURES: tuple[FeatureSpec, ...] = (
    # -------------------------------------------------------------- returns and momentum
    *(
        FeatureSpec(
            f"return_{k}",
            _log_return(k),
            k,
            f"log(close_t / close_{{t-{k}}})",
            C,
            ("returns", "momentum"),
        )
        for k in (2, 60, 120, 250)
    ),
    FeatureSpec(
        "intraday_return",
        lambda x: np.log(x["close"] / x["open"]),
        0,
        "log(close_t / open_t), the open-to-close part of the bar's return",
        ("open", "close"),
        ("returns",),
    ),
    *(
        FeatureSpec(
            f"momentum_{name}",
            _momentum(long, 21),
            long,
            f"log(close_{{t-21}} / close_{{t-{long}}}): {name.replace('_', '-')} month momentum "
            "that skips the last month (short-term reversal)",
            C,
            ("momentum",),
        )
        for name, long in (("12_1", 252), ("6_1", 126))
    ),
    *(
        FeatureSpec(
            f"ma_gap_{n}",
            _ma_gap(n),
            n - 1,
            f"log(close_t / mean of the last {n} closes): distance to the {n}-bar moving average",
            C,
            ("trend",),
        )
        for n in (120, 250)
    ),
    *(
        FeatureSpec(
            f"dist_{side}_250",
            _extreme(250, side == "high"),
            249,
            f"log(close_t / {'max' if side == 'high' else 'min'} of the last 250 closes) "
            f"(52-week {side}; {'<= 0' if side == 'high' else '>= 0'})",
            C,
            ("trend",),
        )
        for side in ("high", "low")
    ),
    # -------------------------------------------------------------- volatility
    *(
        FeatureSpec(
            f"volatility_{n}",
            _vol(n),
            n,
            f"annualised realised vol: std (ddof 1) of {n} log returns x sqrt(252)",
            R,
            ("volatility",),
        )
        for n in (5, 10, 120, 250)
    ),
    *(
        FeatureSpec(
            f"{side}_vol_{n}",
            _semivol(n, side == "downside"),
            n,
            f"annualised {side} semi-deviation: sqrt(252 x mean of "
            f"{'min' if side == 'downside' else 'max'}(r, 0)^2) over {n} log returns",
            R,
            ("volatility",),
        )
        for side, windows in (("downside", (20, 60, 120)), ("upside", (20, 60)))
        for n in windows
    ),
    *(
        FeatureSpec(
            f"vol_ratio_{a}_{b}",
            _ratio(f"volatility_{a}", f"volatility_{b}"),
            b,
            f"volatility_{a} / volatility_{b}: short- vs long-horizon realised vol",
            (f"volatility_{a}", f"volatility_{b}"),
            ("volatility", "regime"),
        )
        for a, b in ((5, 60), (20, 250))
    ),
    *(
        FeatureSpec(
            f"{part}_vol_20",
            _component_vol(20, part == "overnight"),
            20 if part == "overnight" else 19,
            f"annualised std (ddof 1) of 20 {part} log returns "
            + ("log(open_t / close_{t-1})" if part == "overnight" else "log(close_t / open_t)"),
            ("open", "close"),
            ("volatility",),
        )
        for part in ("overnight", "intraday")
    ),
    *(
        FeatureSpec(
            f"{name}_{n}",
            _range_vol(kernel, inputs, n),
            n - 1 + extra,
            f"annualised {label} volatility over {n} bars",
            inputs,
            ("volatility", "range"),
        )
        for name, (kernel, inputs, extra, label) in RANGE_ESTIMATORS.items()
        for n in (10, 20, 60, 120)
    ),
    # -------------------------------------------------------------- distribution
    FeatureSpec(
        "skew_60",
        lambda x: _moments(x)[0],
        60,
        "sample skewness (G1) of 60 log returns",
        R,
        ("distribution",),
    ),
    FeatureSpec(
        "kurt_60",
        lambda x: _moments(x)[1],
        60,
        "sample excess kurtosis (G2) of 60 log returns",
        R,
        ("distribution",),
    ),
    FeatureSpec(
        "max_return_20",
        _rolling_extreme_return(20, True),
        20,
        "largest one-bar log return of the last 20 (lottery demand)",
        R,
        ("distribution",),
    ),
    FeatureSpec(
        "min_return_20",
        _rolling_extreme_return(20, False),
        20,
        "smallest one-bar log return of the last 20 (crash risk)",
        R,
        ("distribution",),
    ),
    FeatureSpec(
        "autocorr_60",
        _autocorr(60),
        61,
        "lag-1 autocorrelation of log returns: corr(r_t, r_{t-1}) over 60 bars",
        R,
        ("distribution",),
    ),
    # -------------------------------------------------------------- liquidity
    *(
        FeatureSpec(
            f"amihud_{n}",
            _amihud(n),
            n,
            f"Amihud illiquidity: log(1e6 x mean abs(log return) / (close x volume)) over {n} "
            "bars, zero-volume bars left out",
            ("close", "volume", "log_return"),
            ("liquidity",),
        )
        for n in (20, 60)
    ),
    *(
        FeatureSpec(
            f"volume_ratio_{n}",
            _volume_ratio(n),
            n,
            f"volume_t / mean volume of the previous {n} bars",
            V,
            ("liquidity",),
        )
        for n in (5, 20, 60)
    ),
    FeatureSpec(
        "log_dollar_volume",
        lambda x: np.log1p(_dollar_volume(x)),
        0,
        "log(1 + close_t x volume_t), value traded in the bar",
        ("close", "volume"),
        ("liquidity",),
    ),
    *(
        FeatureSpec(
            f"dollar_volume_{n}",
            _mean_log_dollar_volume(n),
            n - 1,
            f"mean of log(1 + close x volume) over {n} bars (size / liquidity proxy)",
            ("close", "volume"),
            ("liquidity",),
        )
        for n in (20, 60)
    ),
    FeatureSpec(
        "hl_spread_20",
        lambda x: K.corwin_schultz_spread(x["high"], x["low"], 20),
        20,
        "Corwin-Schultz bid-ask spread estimate from 2-bar high/low ranges, mean of 20, fraction",
        ("high", "low"),
        ("liquidity",),
    ),
)

FAMILY_FEATURES: tuple[FeatureSpec, ...] = (*SYMBOL_FEATURES, *CONTEXT_FEATURES, *INDEX_FEATURES)
