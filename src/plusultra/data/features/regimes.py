"""Market-regime labels from trailing data: volatility, liquidity and sector rotation.

Every value at bar ``t`` uses bars ``<= t`` only, thresholds included: a symbol's regime is
its current statistic compared with quantiles of the *same statistic over its own trailing
`history` bars* (``pandas`` rolling quantile, linear interpolation, the window ``t - history + 1
.. t`` including the current bar). No threshold is fitted on the full sample.

Integer labels (``int8``) are ``-1`` while undefined: during the warm-up (the statistic needs
`window` bars, the thresholds `min_periods` finite statistics, by default all `history`), on
bars without data and after a gap until the windows have filled again. With the default
``quantiles=(1/3, 2/3)`` a label is

    0 if stat <= q_lo,   1 if q_lo < stat <= q_hi,   2 if stat > q_hi

so ties with a threshold go to the lower class. (With a strict ``>`` against a linearly
interpolated quantile the class depends only on the value's rank among its trailing values:
"lower" interpolation would give the same labels.) Float features are NaN where undefined.

Missing bars: the rolling statistics are NaN for `window` bars after a gap, and with the
default ``min_periods=history`` the thresholds then stay undefined for `history` bars; pass
e.g. ``min_periods=history // 2`` for data with frequent gaps.

Everything is vectorised over symbols: pandas ``rolling`` on the whole ``(T, S)`` frame, one
pass per threshold; no Python loop over bars or symbols.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from plusultra.data.datasets.panel import Panel, tradable_mask
from plusultra.data.features.indicators import log_returns, realised_vol
from plusultra.errors import ConfigError

__all__ = [
    "N_CLASSES",
    "REGIME_LABELS",
    "liquidity_regime",
    "regime_labels",
    "sector_rank",
    "sector_rotation",
    "volatility_regime",
]

UNDEFINED = -1  # integer label of a bar whose regime is not (yet) defined


def _check_args(window: int, history: int, quantiles: Sequence[float], min_window: int) -> None:
    """Raise ConfigError on a window/history/quantiles combination that cannot work."""
    if isinstance(window, bool) or not isinstance(window, int) or window < min_window:
        raise ConfigError(f"regimes: window must be an integer >= {min_window}, got {window!r}")
    if isinstance(history, bool) or not isinstance(history, int) or history < 2:
        raise ConfigError(f"regimes: history must be an integer >= 2, got {history!r}")
    q = np.asarray(quantiles, dtype=float)
    if q.ndim != 1 or q.size == 0 or np.any((q <= 0) | (q >= 1)) or np.any(np.diff(q) <= 0):
        raise ConfigError(
            f"regimes: quantiles must be strictly increasing values in (0, 1), got {quantiles!r}"
        )


def _label_against_history(
    stat: pd.DataFrame, history: int, quantiles: Sequence[float], min_periods: int | None
) -> np.ndarray:
    """Class of each value of `stat` among its column's trailing `history` values.

    Args:
        stat: (T, S) statistic, NaN where undefined.
        history: bars of the trailing distribution, the current bar included.
        quantiles: increasing thresholds in (0, 1); K thresholds give classes 0..K.
        min_periods: finite values needed in the trailing window (default: `history`).

    Returns:
        (T, S) int8: number of thresholds the value exceeds strictly; -1 where `stat` or a
        threshold is NaN.
    """
    need = history if min_periods is None else int(min_periods)
    if not 1 <= need <= history:
        raise ConfigError(f"regimes: min_periods must be in [1, history={history}], got {need}")
    values = stat.to_numpy()
    rolling = stat.rolling(history, min_periods=need)
    label = np.zeros(values.shape, dtype=np.int8)
    defined = np.isfinite(values)
    for q in quantiles:  # one vectorised pass per threshold
        threshold = rolling.quantile(float(q), interpolation="linear").to_numpy()
        defined &= np.isfinite(threshold)
        label += values > threshold
    label[~defined] = UNDEFINED
    return label


def realised_volatility(panel: Panel, window: int = 20) -> np.ndarray:
    """(T, S) std of the last `window` daily log close-to-close returns (not annualised).

    NaN until `window` returns are available and for `window` bars after a missing bar
    (`plusultra.data.features.indicators.realised_vol`, per-bar units).
    """
    returns = log_returns(panel.fields["close"])
    return realised_vol(returns, window, min_periods=window, periods_per_year=None)


def trailing_dollar_volume(panel: Panel, window: int = 20) -> np.ndarray:
    """(T, S) mean of ``log(1 + close * volume)`` over the last `window` bars.

    Adjusted close times split-adjusted volume is the value traded, in the symbol's
    first-bar price terms (reinvested dividends inflate it by the dividend yield, a few %
    per year, which is negligible against volume swings). The mean of logs (a geometric mean)
    keeps one block trade from dominating the window. NaN unless all `window` bars exist.
    """
    dollar = pd.DataFrame(np.log1p(panel.fields["close"] * panel.fields["volume"]))
    return dollar.rolling(window, min_periods=window).mean().to_numpy()


def volatility_regime(
    panel: Panel,
    window: int = 20,
    history: int = 252,
    quantiles: Sequence[float] = (1 / 3, 2 / 3),
    min_periods: int | None = None,
) -> np.ndarray:
    """Volatility regime of each symbol relative to its own trailing distribution.

    Args:
        panel: aligned market data.
        window: returns in the realised-volatility estimate (`realised_volatility`).
        history: bars of the symbol's trailing volatility distribution, current bar included.
        quantiles: thresholds as quantiles of that distribution.
        min_periods: finite volatilities needed in `history` (default: all of them).

    Returns:
        (T, S) int8: 0 low / 1 normal / 2 high volatility (with the default quantiles);
        -1 during the warm-up (the first ``window + history - 1`` bars of a symbol's data
        with the default `min_periods`) and where a bar is missing.
    """
    _check_args(window, history, quantiles, min_window=2)
    vol = pd.DataFrame(realised_volatility(panel, window))
    return _label_against_history(vol, history, quantiles, min_periods)


def liquidity_regime(
    panel: Panel,
    window: int = 20,
    history: int = 252,
    quantiles: Sequence[float] = (1 / 3, 2 / 3),
    min_periods: int | None = None,
) -> np.ndarray:
    """Liquidity regime from trailing dollar volume, relative to the symbol's own history.

    The statistic is `trailing_dollar_volume` (mean log dollar volume over `window` bars);
    more dollar volume means more liquid. We use dollar volume rather than Amihud
    illiquidity because it is defined on zero-return days and needs no return denominator.

    Args:
        panel: aligned market data.
        window: bars averaged into the dollar-volume statistic.
        history: bars of the symbol's trailing distribution of that statistic.
        quantiles: thresholds as quantiles of that distribution.
        min_periods: finite statistics needed in `history` (default: all of them).

    Returns:
        (T, S) int8: 0 illiquid / 1 normal / 2 liquid (with the default quantiles); -1 during
        the warm-up (``window + history - 2`` bars after a symbol's first bar with the
        default `min_periods`) and where a bar is missing.
    """
    _check_args(window, history, quantiles, min_window=1)
    liquidity = pd.DataFrame(trailing_dollar_volume(panel, window))
    return _label_against_history(liquidity, history, quantiles, min_periods)


def _sector_strength(panel: Panel, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-sector relative strength, (T, K), and each symbol's sector code, (S,) (-1: none).

    A symbol enters at bar t if it is tradable at t (`tradable_mask`), has a sector and its
    `window`-bar log return ``log(close_t / close_{t - window})`` is defined. The sector's
    return is the equal-weight mean over those symbols, the universe's the equal-weight mean
    over all of them; the difference is NaN for a sector without any such symbol.
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ConfigError(f"regimes: window must be an integer >= 1, got {window!r}")
    if panel.assets is None or "sector" not in panel.assets.columns:
        raise ConfigError("regimes: sector rotation needs panel.assets with a 'sector' column")
    sectors = panel.assets["sector"].reindex(panel.symbols)
    codes, _ = pd.factorize(sectors, use_na_sentinel=True)  # (S,), -1 where no sector
    n_sectors = int(codes.max()) + 1
    log_close = np.log(panel.fields["close"])  # (T, S)
    ret = np.full_like(log_close, np.nan)
    ret[window:] = log_close[window:] - log_close[:-window]
    use = np.isfinite(ret) & tradable_mask(panel) & (codes >= 0)[None, :]  # (T, S)
    member = np.zeros((len(codes), max(n_sectors, 1)))  # (S, K) one-hot sector membership
    member[np.flatnonzero(codes >= 0), codes[codes >= 0]] = 1.0
    r = np.where(use, ret, 0.0)
    count = use.astype(float) @ member  # (T, K)
    with np.errstate(invalid="ignore", divide="ignore"):
        sector_mean = (r @ member) / count  # (T, K), NaN where a sector is empty
        universe = r.sum(axis=1, keepdims=True) / use.sum(axis=1, keepdims=True)  # (T, 1)
    return sector_mean - universe, codes


def _to_symbols(per_sector: np.ndarray, codes: np.ndarray, panel: Panel) -> np.ndarray:
    """Broadcast (T, K) sector values to (T, S); NaN where a symbol has no bar or sector."""
    padded = np.concatenate([per_sector, np.full((len(per_sector), 1), np.nan)], axis=1)
    out = padded[:, codes]  # code -1 picks the NaN column
    out[np.isnan(panel.fields["close"])] = np.nan
    return out


def sector_rotation(panel: Panel, window: int = 60) -> np.ndarray:
    """Relative strength of each symbol's sector: sector minus universe trailing return.

    Args:
        panel: aligned market data with ``assets['sector']``.
        window: bars of the trailing log return ``log(close_t / close_{t - window})``.

    Returns:
        (T, S) float64, log-return units: equal-weight mean `window`-bar return of the
        symbol's sector minus that of the whole universe, both over the symbols tradable at t
        with a defined return (the symbol itself need not be one of them). NaN where the
        symbol has no bar, no sector, or its sector has no such symbol.
    """
    strength, codes = _sector_strength(panel, window)
    return _to_symbols(strength, codes, panel)


def sector_rank(panel: Panel, window: int = 60) -> np.ndarray:
    """Cross-sectional rank of each symbol's sector by `sector_rotation` strength.

    Args:
        panel: aligned market data with ``assets['sector']``.
        window: bars of the trailing return (see `sector_rotation`).

    Returns:
        (T, S) float64 in [0, 1]: ``(rank - 1) / (n - 1)`` among the n sectors with data at t,
        rank 1 = weakest (ties share their average rank), so 1 = leading sector and 0 =
        lagging. NaN where fewer than 2 sectors have data, or as in `sector_rotation`.
    """
    strength, codes = _sector_strength(panel, window)
    frame = pd.DataFrame(strength)
    n = frame.notna().sum(axis=1).to_numpy()[:, None].astype(float)  # (T, 1)
    rank = frame.rank(axis=1, method="average").to_numpy()  # 1 = weakest; NaN stays NaN
    with np.errstate(invalid="ignore", divide="ignore"):
        scaled = np.where(n >= 2, (rank - 1.0) / (n - 1.0), np.nan)
    return _to_symbols(scaled, codes, panel)


# Integer regime labels usable as conditioning inputs (embedding indices after +1 or masking).
REGIME_LABELS: dict[str, Callable[[Panel], np.ndarray]] = {
    "volatility": volatility_regime,
    "liquidity": liquidity_regime,
}
N_CLASSES: dict[str, int] = {"volatility": 3, "liquidity": 3}  # classes with default quantiles


def regime_labels(panel: Panel, names: list[str] | None = None) -> dict[str, np.ndarray]:
    """Compute the named integer regime labels with default parameters.

    Args:
        panel: aligned market data.
        names: keys of `REGIME_LABELS` (default: all of them, in registry order).

    Returns:
        name -> (T, S) int8 labels in ``-1 .. N_CLASSES[name] - 1``.

    Raises:
        ConfigError: an unknown name; the message lists the valid ones.
    """
    names = list(REGIME_LABELS) if names is None else list(names)
    unknown = [n for n in names if n not in REGIME_LABELS]
    if unknown:
        raise ConfigError(f"regime labels {unknown} unknown; valid: {sorted(REGIME_LABELS)}")
    return {name: REGIME_LABELS[name](panel) for name in names}
