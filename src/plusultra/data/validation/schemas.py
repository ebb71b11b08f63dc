"""Pandera models of the SQLite contract: one schema per table, and the shared conventions.

`plusultra.data.validation.checks` runs them (with cross-table checks and data-quality rules) and
reports every failure at once; see its docstring for the check names used in reports.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pandera.pandas as pa

MAX_EXAMPLES = 5
FAILURE_COLUMNS = ["table", "column", "check", "count", "examples"]
CONTRACT_TABLES = ("assets", "series", "indicators", "corporate_actions")
# Columns that may legitimately be entirely NULL: delisted (NULL while listed, so all NULL
# when nothing delisted), sector (optional metadata; sector features are then undefined) and
# the bar fields other than close (close-only data such as adjusted closes: features that need
# them are skipped, and simulators fill at the next close without a volume cap).
ALL_NULL_ALLOWED = {
    ("assets", "delisted"),
    ("assets", "sector"),
    *(("series", c) for c in ("open", "high", "low", "volume", "vwap")),
}
TIME_COLUMNS = ("timestamp", "ex_date")  # key columns compared as instants after parsing
_ISO_RE = r"\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}(:?\d{2})?)?)?"
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_iso(text: pd.Series) -> pd.Series:
    """Parse ISO-8601 text (``2018-12-31``, ``2018-12-31T15:30:00Z``) to UTC; NaT where invalid.

    Parses each distinct value once, so a 2.5M-row column over 5000 days costs ~0.2 s.
    """
    codes, uniques = pd.factorize(text)
    uniques = pd.Series(uniques, dtype=object).astype(str)
    strict = uniques.str.fullmatch(_ISO_RE).to_numpy(dtype=bool)
    parsed = pd.to_datetime(uniques.where(strict), format="ISO8601", errors="coerce", utc=True)
    values = np.append(parsed.to_numpy(dtype="datetime64[ns]"), np.datetime64("NaT", "ns"))
    return pd.Series(values[codes], index=text.index).dt.tz_localize("UTC")


def iso8601_check() -> pa.Check:
    """A vectorised pandera check that text is an ISO-8601 date or date-time (NULL passes)."""
    return pa.Check(lambda s: parse_iso(s).notna(), error="ISO-8601")


# Bar consistency on the values present: a NULL open is left out of max/min (skipna), a NULL
# high or low passes. close is never NULL, so high >= close >= low also gives high >= low.
def _high_ok(d: pd.DataFrame) -> pd.Series:
    top = d[["open", "close"]].max(axis=1)
    return (d["high"] >= top) | d["high"].isna() | top.isna()


def _low_ok(d: pd.DataFrame) -> pd.Series:
    bottom = d[["open", "close"]].min(axis=1)
    return (d["low"] <= bottom) | d["low"].isna() | bottom.isna()


_PRICE = [pa.Check(np.isfinite, error="finite"), pa.Check.gt(0, error="> 0")]
_HIGH, _LOW = "high >= max(open, close)", "low <= min(open, close)"
# DataFrame-level checks: the column they are reported under, then the columns shown.
FRAME_CHECK_COLUMNS = {_HIGH: ("high", "open", "close"), _LOW: ("low", "open", "close")}

ASSETS_SCHEMA = pa.DataFrameSchema(
    {
        "symbol": pa.Column(str, nullable=False, unique=True),
        "name": pa.Column(str, nullable=True),
        "sector": pa.Column(str, nullable=True),
        "asset_class": pa.Column(str, nullable=True),
        "currency": pa.Column(str, nullable=True),
        "listed": pa.Column(str, iso8601_check(), nullable=True),
        "delisted": pa.Column(str, iso8601_check(), nullable=True),
    },
    name="assets",
)

SERIES_SCHEMA = pa.DataFrameSchema(
    {
        "symbol": pa.Column(str, nullable=False),
        "timestamp": pa.Column(str, iso8601_check(), nullable=False),
        # close is the one required price; open/high/low/volume may be NULL (close-only data)
        "open": pa.Column(float, _PRICE, nullable=True),
        "high": pa.Column(float, _PRICE, nullable=True),
        "low": pa.Column(float, _PRICE, nullable=True),
        "close": pa.Column(float, _PRICE, nullable=False),
        "volume": pa.Column(float, pa.Check.ge(0, error=">= 0"), nullable=True),
        # optional volume-weighted average price (Alpha158's VWAP0); NULL allowed
        "vwap": pa.Column(float, _PRICE, nullable=True, required=False),
    },
    checks=[pa.Check(_high_ok, error=_HIGH), pa.Check(_low_ok, error=_LOW)],
    unique=["symbol", "timestamp"],
    name="series",
)

INDICATORS_SCHEMA = pa.DataFrameSchema(
    {
        "symbol": pa.Column(str, nullable=False),
        "timestamp": pa.Column(str, iso8601_check(), nullable=False),
        "name": pa.Column(str, nullable=False),
        "value": pa.Column(float, pa.Check(np.isfinite, error="finite"), nullable=True),
    },
    unique=["symbol", "timestamp", "name"],
    name="indicators",
)

CORPORATE_ACTIONS_SCHEMA = pa.DataFrameSchema(
    {
        "symbol": pa.Column(str, nullable=False),
        "ex_date": pa.Column(str, iso8601_check(), nullable=False),
        "action": pa.Column(
            str, pa.Check.isin(["split", "dividend"], error="in {split, dividend}"), nullable=False
        ),
        "value": pa.Column(float, _PRICE, nullable=False),
    },
    unique=["symbol", "ex_date", "action"],
    name="corporate_actions",
)

SCHEMAS = {
    "assets": ASSETS_SCHEMA,
    "series": SERIES_SCHEMA,
    "indicators": INDICATORS_SCHEMA,
    "corporate_actions": CORPORATE_ACTIONS_SCHEMA,
}
