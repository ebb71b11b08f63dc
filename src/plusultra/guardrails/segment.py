"""The guardrails over one backtest segment: what `Backtest.run` trades when they are on."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd

from plusultra.errors import ConfigError, DataError
from plusultra.guardrails.config import GuardrailConfig
from plusultra.guardrails.core import Guardrails
from plusultra.guardrails.state import events_frame

log = logging.getLogger("plusultra")


def guard_segment(
    config: GuardrailConfig,
    weights: np.ndarray,
    lo: int,
    close: np.ndarray,
    tradable: np.ndarray,
    dates: np.ndarray,
    symbols: list[str],
    sectors: dict[str, str] | None = None,
    periods_per_year: float = 252.0,
    factors: Mapping[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Guard the weights of decision bars ``lo .. lo + n - 1`` with `Guardrails.apply_path`.

    The path starts flat ``history + 1`` bars before ``lo`` (or at bar 0), so the vol and CVaR
    lookbacks hold returns known before the segment and the first bar trades from cash, as the
    simulator does. Events are logged at DEBUG, with one INFO line of counts.

    Args:
        config: the limits (at least one rule on).
        weights: (n, S) the model's target weights of the segment.
        lo: the segment's first bar on the full calendar.
        close: (T, S) full-calendar closes (a missing bar carrying the last price).
        tradable: (T, S) bool, where a position may be decided.
        dates: (T,) the calendar; symbols: the S column names; sectors: symbol -> sector.
        periods_per_year: bars a year (annualises ``vol_target``).
        factors: factor name -> (T,) full-calendar return series known at each bar's close
            (NaN where unknown), for ``factor_caps`` other than ``market``.

    Returns:
        (n, S) guarded weights and the segment's events (`events_frame`).

    Raises:
        ConfigError: a capped factor with no series in `factors` (names the key and lists the
            series there are).
    """
    guards = Guardrails(config, symbols, sectors, periods_per_year, logging.DEBUG)
    series = factor_matrix(config, factors or {}, len(dates))  # (T, F) or None
    hi = lo + len(weights) - 1
    start = max(0, lo - guards.history - 1)
    path = np.zeros((hi + 1 - start, len(symbols)))  # (bars, S), flat before the segment
    path[lo - start :] = weights
    bars = slice(start, hi + 1)
    f = None if series is None else series[bars]
    out, found = guards.apply_path(path, close[bars], tradable[bars], dates[bars], f)
    events = events_frame(found)
    counts = events["rule"].value_counts()
    log.info(
        "guardrails: %d interventions on %s..%s (%s)",
        len(events),
        pd.Timestamp(dates[lo]).date(),
        pd.Timestamp(dates[hi]).date(),
        ", ".join(f"{r} {n}" for r, n in counts.items()) or "none",
    )
    return out[lo - start :], events


def factor_matrix(
    config: GuardrailConfig, factors: Mapping[str, np.ndarray], n_bars: int
) -> np.ndarray | None:
    """(T, F) series of the capped factors but ``market`` (`GuardrailConfig.factor_series`
    order) from name -> (T,) series; None when there are none to supply.

    Raises:
        ConfigError: a capped factor without a series, naming ``guardrails.factor_caps.<name>``
            and the series available.
        DataError: a series of the wrong length.
    """
    names = config.factor_series
    if not names:
        return None
    missing = [n for n in names if n not in factors]
    if missing:
        have = ", ".join(sorted(factors)) or "none"
        raise ConfigError(
            f"guardrails.factor_caps.{missing[0]}: the data supplies no return series of that "
            f"name; available: market (always), {have} (market-wide alternative-data columns)"
        )
    columns = [np.asarray(factors[n], dtype=float).reshape(-1) for n in names]
    for name, column in zip(names, columns, strict=True):
        if len(column) != n_bars:
            raise DataError(
                f"guardrails: factor series {name} has {len(column)} bars, not {n_bars}"
            )
    return np.column_stack(columns)  # (T, F)


def event_counts(config: GuardrailConfig, events: pd.DataFrame) -> dict[str, float]:
    """``guardrail_events`` (all) and ``guardrail_<rule>`` for every rule that is on (0
    included), the metrics a backtest records."""
    counts = events["rule"].value_counts()
    out = {"guardrail_events": float(len(events))}
    for rule in config.active_rules:
        out[f"guardrail_{rule}"] = float(counts.get(rule, 0))
    return out
