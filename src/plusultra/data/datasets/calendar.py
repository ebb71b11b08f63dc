"""Bars a year, derived from the spacing of a calendar: the one source of ``periods_per_year``.

The rule (docs/configuration.md#periods_per_year), with ``d`` the median spacing of consecutive
bars in days:

* ``d < 1`` (intraday bars): bars per day x trading days a year, where bars per day is the
  median number of bars per calendar date;
* ``1 <= d < 5`` (daily bars): 252 trading days a year, or 365 when more than 10 % of the bars
  fall on a Saturday or Sunday (markets that trade every day, e.g. crypto);
* ``d >= 5`` (weekly, monthly, quarterly ... bars): ``round(365.25 / d)``: 52, 12, 4 ...

The root key ``periods_per_year`` overrides the derived value (null: derived).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from plusultra.errors import ConfigError, DataError

TRADING_DAYS = 252  # trading days a year of a market closed at weekends
CALENDAR_DAYS = 365  # ... of a market open every day
WEEKEND_SHARE = 0.10  # above this share of weekend bars a market trades every day


def periods_per_year(dates) -> int:
    """Bars a year of a calendar (module docstring: the rule).

    Args:
        dates: (T,) bar timestamps, increasing (datetime64 or anything pandas parses).

    Returns:
        Bars a year, an integer >= 1.

    Raises:
        DataError: fewer than two distinct bars, so no spacing to measure.
    """
    idx = pd.DatetimeIndex(dates).unique().sort_values()
    if len(idx) < 2:
        raise DataError(
            f"cannot derive periods_per_year from {len(idx)} bar(s); set periods_per_year"
        )
    spacing_days = float(np.median(np.diff(idx.as_unit("ns").asi8))) / 86_400e9  # ns -> days
    days = CALENDAR_DAYS if (idx.day_of_week >= 5).mean() > WEEKEND_SHARE else TRADING_DAYS
    if spacing_days < 1.0:
        per_day = float(pd.Series(1, index=idx).groupby(idx.normalize()).size().median())
        return max(1, round(per_day * days))
    if spacing_days < 5.0:
        return days
    return max(1, round(365.25 / spacing_days))


def resolve_periods_per_year(configured: int | None, dates) -> int:
    """The root key ``periods_per_year`` if set, else the value derived from ``dates``.

    Args:
        configured: The root config key (null: derive).
        dates: (T,) bar timestamps of the run's calendar.

    Raises:
        ConfigError: ``configured`` is set but not an integer >= 1.
    """
    if configured is None:
        return periods_per_year(dates)
    if (
        isinstance(configured, bool)
        or not isinstance(configured, int | np.integer)
        or configured < 1
    ):
        raise ConfigError(
            f"periods_per_year must be an integer >= 1 (bars a year) or null (derived from the "
            f"bar spacing), got {configured!r}"
        )
    return int(configured)
