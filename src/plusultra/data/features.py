"""Feature registry and the configured feature pipeline.

Every feature is a causal function of a :class:`~plusultra.data.panel.Panel`: its value at
time ``t`` uses bars up to ``t`` only. Functions work on whole ``(T, S)`` arrays at once
(pandas rolling/ewm across all symbols, no per-row Python loops).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from plusultra.data.panel import Panel
from plusultra.errors import ConfigError, DataError

log = logging.getLogger(__name__)

TRADING_DAYS = 252


@dataclass(frozen=True)
class FeatureSpec:
    """A registered feature.

    Attributes:
        name: unique name used in config (`features.names`).
        fn: panel -> (T, S) float array, causal.
        lookback: bars of history needed before the first valid value.
        description: one line for docs.
    """

    name: str
    fn: Callable[[Panel], np.ndarray]
    lookback: int
    description: str


def _frame(panel: Panel, field: str) -> pd.DataFrame:
    return pd.DataFrame(panel.fields[field])


def _log_close(panel: Panel) -> pd.DataFrame:
    return np.log(_frame(panel, "close"))


def _log_return(panel: Panel, k: int) -> np.ndarray:
    lc = _log_close(panel)
    return (lc - lc.shift(k)).to_numpy()


def _volatility(panel: Panel, n: int) -> np.ndarray:
    r = _log_close(panel).diff()
    return (r.rolling(n, min_periods=n).std() * np.sqrt(TRADING_DAYS)).to_numpy()


def _range_hl(panel: Panel) -> np.ndarray:
    return np.log(panel.fields["high"] / panel.fields["low"])


def _gap_open(panel: Panel) -> np.ndarray:
    prev = _frame(panel, "close").shift(1).to_numpy()
    return np.log(panel.fields["open"] / prev)


def _volume_z(panel: Panel, n: int) -> np.ndarray:
    lv = np.log1p(_frame(panel, "volume"))
    mean = lv.rolling(n, min_periods=n).mean()
    std = lv.rolling(n, min_periods=n).std()
    return ((lv - mean) / std.where(std > 0)).to_numpy()


def _rsi(panel: Panel, n: int) -> np.ndarray:
    """Wilder's RSI scaled to [-1, 1] ((RSI - 50) / 50)."""
    delta = _frame(panel, "close").diff()
    gain = delta.clip(lower=0).ewm(alpha=1.0 / n, adjust=False, min_periods=n).mean()
    loss = (-delta.clip(upper=0)).ewm(alpha=1.0 / n, adjust=False, min_periods=n).mean()
    rsi = 100.0 - 100.0 / (1.0 + gain / loss.where(loss > 0))
    rsi = rsi.where(loss > 0, 100.0).where(gain.notna())
    return ((rsi - 50.0) / 50.0).to_numpy()


REGISTRY: dict[str, FeatureSpec] = {
    spec.name: spec
    for spec in (
        FeatureSpec("log_return", lambda p: _log_return(p, 1), 1, "1-bar log return of close"),
        FeatureSpec("return_5", lambda p: _log_return(p, 5), 5, "5-bar log return"),
        FeatureSpec("return_20", lambda p: _log_return(p, 20), 20, "20-bar log return"),
        FeatureSpec(
            "volatility_20", lambda p: _volatility(p, 20), 21, "annualised 20-bar realised vol"
        ),
        FeatureSpec("range_hl", _range_hl, 0, "log(high / low) of the bar"),
        FeatureSpec("gap_open", _gap_open, 1, "log(open / previous close)"),
        FeatureSpec(
            "volume_z_20", lambda p: _volume_z(p, 20), 20, "z-score of log volume over 20 bars"
        ),
        FeatureSpec("rsi_14", lambda p: _rsi(p, 14), 15, "Wilder RSI(14) scaled to [-1, 1]"),
    )
}


class FeaturePipeline:
    """Computes the configured features and raw indicator columns as one (T, S, F) array.

    Args:
        names: registered feature names (see `REGISTRY`), in output order.
        indicators: names from the `indicators` table appended as raw features.
        skip_missing_indicators: when an indicator is absent from the database, skip it with a
            logged warning (True) or fail (False). Inference always uses the run's saved list
            strictly.
    """

    def __init__(
        self,
        names: list[str],
        indicators: list[str] | None = None,
        skip_missing_indicators: bool = True,
    ) -> None:
        unknown = [n for n in names if n not in REGISTRY]
        if unknown:
            raise ConfigError(
                f"features.names: unknown feature(s) {unknown}; valid names: {sorted(REGISTRY)}"
            )
        if not names and not indicators:
            raise ConfigError("features: select at least one feature or indicator")
        self.names = list(names)
        self.indicators = list(indicators or [])
        self.skip_missing_indicators = skip_missing_indicators

    @property
    def lookback(self) -> int:
        """Bars of history needed before all features are defined."""
        return max((REGISTRY[n].lookback for n in self.names), default=0)

    def compute(self, panel: Panel) -> tuple[np.ndarray, list[str]]:
        """Return features (T, S, F) float32 (NaN where undefined) and their names."""
        columns, names = [], []
        for name in self.names:
            columns.append(REGISTRY[name].fn(panel))
            names.append(name)
        for ind in self.indicators:
            if ind not in panel.indicators:
                msg = (
                    f"features.indicators: indicator '{ind}' not in the database's indicators "
                    f"table (has {sorted(panel.indicators) or 'none'})"
                )
                if not self.skip_missing_indicators:
                    raise DataError(msg)
                log.warning("%s; skipped", msg)
                continue
            columns.append(panel.indicators[ind])
            names.append(f"ind_{ind}")
        with np.errstate(invalid="ignore", divide="ignore"):
            stacked = np.stack(columns, axis=-1).astype(np.float32)
        stacked[~np.isfinite(stacked)] = np.nan
        return stacked, names
