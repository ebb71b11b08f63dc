"""The guardrails over one backtest segment: what `Backtest.run` trades when they are on."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from plusultra.guardrails.config import GuardrailConfig
from plusultra.guardrails.core import Guardrails, events_frame

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

    Returns:
        (n, S) guarded weights and the segment's events (`events_frame`).
    """
    guards = Guardrails(config, symbols, sectors, periods_per_year, logging.DEBUG)
    hi = lo + len(weights) - 1
    start = max(0, lo - guards.history - 1)
    path = np.zeros((hi + 1 - start, len(symbols)))  # (bars, S), flat before the segment
    path[lo - start :] = weights
    bars = slice(start, hi + 1)
    out, found = guards.apply_path(path, close[bars], tradable[bars], dates[bars])
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


def event_counts(config: GuardrailConfig, events: pd.DataFrame) -> dict[str, float]:
    """``guardrail_events`` (all) and ``guardrail_<rule>`` for every rule that is on (0
    included), the metrics a backtest records."""
    counts = events["rule"].value_counts()
    out = {"guardrail_events": float(len(events))}
    for rule in config.active_rules:
        out[f"guardrail_{rule}"] = float(counts.get(rule, 0))
    return out
