"""Feature families that look beyond one symbol's prices: market, cross-section, calendar, alt data.

* **Market.** The market is the universe's equal-weight return at each bar over the symbols
  listed at that bar (`family_kernels.market_return`): every close at t is known at t's close,
  so it is causal. Features: its return and volatility, each symbol's rolling beta,
  correlation and residual (idiosyncratic) vol to it, excess returns, breadth and dispersion.
  In a small universe the symbol itself is part of its market (1/S of it).
* **Cross-section.** Percentile ranks in [0, 1] and z-scores of chosen features at each bar,
  over the symbols listed at that bar with a finite value only (others get NaN; a
  cross-section of one gets the neutral 0.5 / 0).
* **Calendar.** Day of week and month as sin/cos pairs, weekdays into / left in the month and
  a turn-of-month flag, all from the bar's own date (`family_kernels.calendar_fields`).
* **Alternative data** fused with technical features, from market-wide side tables joined
  point in time by `plusultra.data.features.altdata` (publication lags applied there) and
  visible to features as ``ind_<name>``: VIX (``data=sp500_macro``), WTI, core CPI and the
  factor ETF returns of ``data=sp500_stocks_factors`` (joined one bar late, see below). A
  feature whose side table is not configured is skipped with the reason. The monthly
  Fama-French factors (``ff_*``, 45-day lag) get no daily beta: a rolling daily regression on a
  series that changes once a month measures nothing.

Every feature here is NaN on bars where the symbol has no bar.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from plusultra.data.features import family_kernels as K
from plusultra.data.features.indicators import TRADING_DAYS, log_returns, realised_vol, zscore
from plusultra.data.features.registry import FeatureInputs, FeatureSpec

Fn = Callable[[FeatureInputs], np.ndarray]
R = ("log_return", "close")
MARKET_WINDOWS = (20, 60, 120, 250)
# cross-sectional inputs -> their lookback (checked by tests/test_features.py's lookback test)
CS_INPUTS = {
    "log_return": 1,
    "return_5": 5,
    "return_20": 20,
    "return_60": 60,
    "momentum_12_1": 252,
    "volatility_20": 20,
    "idio_vol_60": 60,
    "beta_mkt_60": 60,
    "volume_ratio_20": 20,
    "amihud_20": 20,
    "dollar_volume_20": 19,
    "dist_high_250": 249,
}
FACTOR_ETFS = ("mtum", "qual", "size", "usmv", "vlue")


def _on_bars(x: FeatureInputs, values: np.ndarray) -> np.ndarray:
    """(T,) or (T, S) values as (T, S), NaN where the symbol has no bar."""
    close = x["close"]
    values = np.asarray(values, dtype=np.float64).reshape(len(close), -1)  # (T, 1) or (T, S)
    return np.where(K.listed(close), values, np.nan)


def _market(x: FeatureInputs) -> np.ndarray:
    """(T,) equal-weight market log return."""
    return x.cached("market_return", lambda: K.market_return(x["log_return"]))


def _market_sum(x: FeatureInputs, n: int) -> np.ndarray:
    """(T,) market log return over the n bars ending at t."""
    return x.cached(f"market_return_{n}", lambda: K.rolling_mean(_market(x), n) * n)


def _regression(x: FeatureInputs, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return x.cached(f"market_reg_{n}", lambda: K.rolling_regression(x["log_return"], _market(x), n))


def _beta(n: int, i: int, scale: float = 1.0) -> Fn:
    return lambda x: _on_bars(x, _regression(x, n)[i] * scale)


def _market_stat(fn: Callable[[FeatureInputs], np.ndarray]) -> Fn:
    return lambda x: _on_bars(x, fn(x))


def _excess(n: int) -> Fn:
    return lambda x: _on_bars(x, log_returns(x["close"], n) - _market_sum(x, n)[:, None])


def _cross(name: str, kernel: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> Fn:
    return lambda x: _on_bars(x, kernel(x[name], x["close"]))


def _calendar(x: FeatureInputs) -> dict[str, np.ndarray]:
    return x.cached("calendar", lambda: K.calendar_fields(x.panel.dates))


def _cyclic(field: str, period: int, offset: int, trig: Callable[[np.ndarray], np.ndarray]) -> Fn:
    return lambda x: _on_bars(x, trig(2.0 * np.pi * (_calendar(x)[field] - offset) / period))


def _turn_of_month(x: FeatureInputs) -> np.ndarray:
    cal = _calendar(x)
    flag = (cal["bdays_to_month_end"] == 0) | (cal["bdays_into_month"] < 3)
    return _on_bars(x, flag.astype(np.float64))


def _log_change(name: str, k: int) -> Fn:
    def fn(x: FeatureInputs) -> np.ndarray:
        level = np.asarray(x[name], dtype=np.float64)
        level = np.where(level > 0, level, np.nan)  # a log change needs positive levels
        return _on_bars(x, np.log(level / K.shift(level, k)))

    return fn


def _etf_beta(etf: str, n: int) -> Fn:
    """Beta of the symbol's return of bar t-1 to the ETF's value at t (its return of t-1)."""
    return lambda x: _on_bars(
        x, K.rolling_regression(K.shift(x["log_return"]), x[f"ind_etf_{etf}"], n)[0]
    )


MARKET_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        "market_return",
        _market_stat(_market),
        1,
        "equal-weight universe log return of the bar: log(1 + mean of the listed symbols' "
        "simple returns)",
        R,
        ("market", "returns"),
    ),
    *(
        FeatureSpec(
            f"market_return_{n}",
            _market_stat(lambda x, n=n: _market_sum(x, n)),
            n,
            f"equal-weight market log return over {n} bars",
            R,
            ("market", "returns"),
        )
        for n in (5, 20)
    ),
    *(
        FeatureSpec(
            f"market_vol_{n}",
            _market_stat(lambda x, n=n: realised_vol(_market(x), n)),
            n,
            f"annualised realised vol of the equal-weight market over {n} bars",
            R,
            ("market", "volatility"),
        )
        for n in (20, 60)
    ),
    *(
        spec
        for n in MARKET_WINDOWS
        for spec in (
            FeatureSpec(
                f"beta_mkt_{n}",
                _beta(n, 0),
                n,
                f"OLS beta of the symbol's log return to the market's over {n} bars",
                R,
                ("market",),
            ),
            FeatureSpec(
                f"corr_mkt_{n}",
                _beta(n, 1),
                n,
                f"correlation of the symbol's log return with the market's over {n} bars",
                R,
                ("market",),
            ),
            FeatureSpec(
                f"idio_vol_{n}",
                _beta(n, 2, float(np.sqrt(TRADING_DAYS))),
                n,
                f"annualised residual vol of the {n}-bar market regression: "
                "std (ddof 1) of the OLS residuals x sqrt(252)",
                R,
                ("market", "volatility"),
            ),
        )
    ),
    *(
        FeatureSpec(
            f"excess_return_{n}",
            _excess(n),
            n,
            f"log(close_t / close_{{t-{n}}}) minus the market's {n}-bar log return",
            R,
            ("market", "momentum"),
        )
        for n in (5, 20, 60)
    ),
    *(
        FeatureSpec(
            f"breadth_{n}",
            _market_stat(lambda x, f=f: K.cross_section_share_positive(x[f], x["close"])),
            n,
            f"share of the listed symbols whose {n}-bar log return is > 0",
            (f, "close"),
            ("market",),
        )
        for n, f in ((1, "log_return"), (20, "return_20"))
    ),
    *(
        FeatureSpec(
            f"dispersion_{n}",
            _market_stat(lambda x, f=f: K.cross_section_std(x[f], x["close"])),
            n,
            f"cross-sectional std (ddof 0) of the listed symbols' {n}-bar log returns",
            (f, "close"),
            ("market", "volatility"),
        )
        for n, f in ((1, "log_return"), (20, "return_20"))
    ),
)

CROSS_SECTION_FEATURES: tuple[FeatureSpec, ...] = tuple(
    FeatureSpec(
        f"cs_{kind}_{name}",
        _cross(name, kernel),
        lookback,
        f"{label} of {name} among the symbols listed at the bar",
        (name, "close"),
        ("cross_section",),
    )
    for name, lookback in CS_INPUTS.items()
    for kind, kernel, label in (
        ("rank", K.cross_section_rank, "percentile rank in [0, 1]"),
        ("z", K.cross_section_zscore, "z-score (ddof 0)"),
    )
)

CALENDAR_FEATURES: tuple[FeatureSpec, ...] = (
    *(
        FeatureSpec(
            f"{name}_{trig.__name__}",
            _cyclic(field, period, offset, trig),
            0,
            f"{trig.__name__}(2 pi {desc}): cyclical {field}",
            ("close",),
            ("calendar",),
        )
        for name, field, period, offset, desc in (
            ("dow", "weekday", 7, 0, "weekday / 7, Monday = 0"),
            ("month", "month", 12, 1, "(month - 1) / 12"),
        )
        for trig in (np.sin, np.cos)
    ),
    FeatureSpec(
        "bdays_into_month",
        lambda x: _on_bars(x, _calendar(x)["bdays_into_month"]),
        0,
        "weekdays of the month before the bar's date (0 on the month's first weekday)",
        ("close",),
        ("calendar",),
    ),
    FeatureSpec(
        "bdays_to_month_end",
        lambda x: _on_bars(x, _calendar(x)["bdays_to_month_end"]),
        0,
        "weekdays of the month after the bar's date (0 on its last weekday)",
        ("close",),
        ("calendar",),
    ),
    FeatureSpec(
        "turn_of_month",
        _turn_of_month,
        0,
        "1 on the month's last weekday and its first three weekdays, else 0",
        ("close",),
        ("calendar",),
    ),
)

ALTDATA_FEATURES: tuple[FeatureSpec, ...] = (
    FeatureSpec(
        "vix_z_60",
        lambda x: _on_bars(x, zscore(x["ind_vix"], 60)),
        59,
        "z-score (ddof 1) of the VIX level vs its last 60 bars",
        ("ind_vix", "close"),
        ("altdata", "volatility"),
    ),
    FeatureSpec(
        "vix_change_5",
        _log_change("ind_vix", 5),
        5,
        "log(VIX_t / VIX_{t-5})",
        ("ind_vix", "close"),
        ("altdata", "volatility"),
    ),
    FeatureSpec(
        "vol_premium_20",
        lambda x: _on_bars(x, x["ind_vix"] / 100.0 - x["volatility_20"]),
        20,
        "VIX / 100 minus the symbol's volatility_20: implied minus realised vol, annualised "
        "(variance risk premium proxy)",
        ("ind_vix", "volatility_20", "close"),
        ("altdata", "volatility"),
    ),
    FeatureSpec(
        "wti_return_20",
        _log_change("ind_wti", 20),
        20,
        "log(WTI_t / WTI_{t-20}), crude oil 20-bar log return (NaN where a price is <= 0)",
        ("ind_wti", "close"),
        ("altdata", "returns"),
    ),
    FeatureSpec(
        "core_cpi_yoy",
        _log_change("ind_core_cpi", 252),
        252,
        "log(core CPI_t / core CPI_{t-252}): annual core inflation from the latest published "
        "print (252 bars ~ 12 monthly prints)",
        ("ind_core_cpi", "close"),
        ("altdata",),
    ),
    *(
        FeatureSpec(
            f"beta_etf_{etf}_60",
            _etf_beta(etf, 60),
            61,
            f"OLS beta over 60 bars of the symbol's log return of bar t-1 to the {etf.upper()} "
            "factor ETF's return, which is joined one bar late (its value at t is bar t-1's)",
            (f"ind_etf_{etf}", "log_return", "close"),
            ("altdata", "market"),
        )
        for etf in FACTOR_ETFS
    ),
)

CONTEXT_FEATURES: tuple[FeatureSpec, ...] = (
    *MARKET_FEATURES,
    *CROSS_SECTION_FEATURES,
    *CALENDAR_FEATURES,
    *ALTDATA_FEATURES,
)
