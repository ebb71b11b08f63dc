"""Pandera schemas for the SQLite contract and a lazy validator with readable failures.

Every table is checked before anything trains; all failures are collected at once (pandera's
lazy mode) and raised as one :class:`~plusultra.errors.DataError` whose message lists, per
table, column and check, how many rows fail and up to five example rows (symbol, timestamp).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from plusultra.errors import DataError

MAX_EXAMPLES = 5


def _iso_timestamps(series: pd.Series) -> pd.Series:
    """True where the text parses as an ISO-8601 date or date-time."""
    parsed = pd.to_datetime(series, format="ISO8601", errors="coerce", utc=True)
    return parsed.notna()


ASSETS_SCHEMA = pa.DataFrameSchema(
    {
        "symbol": pa.Column(str, nullable=False, unique=True),
        "name": pa.Column(str, nullable=True),
        "sector": pa.Column(str, nullable=True),
        "asset_class": pa.Column(str, nullable=True),
        "currency": pa.Column(str, nullable=True),
        "listed": pa.Column(str, nullable=True),
        "delisted": pa.Column(str, nullable=True),
    },
    strict=False,
    name="assets",
)

_PRICE = [pa.Check.gt(0, error="price must be > 0"), pa.Check(np.isfinite, error="finite")]

SERIES_SCHEMA = pa.DataFrameSchema(
    {
        "symbol": pa.Column(str, nullable=False),
        "timestamp": pa.Column(
            str, pa.Check(_iso_timestamps, error="ISO-8601 timestamp"), nullable=False
        ),
        "open": pa.Column(float, _PRICE, nullable=False, coerce=True),
        "high": pa.Column(float, _PRICE, nullable=False, coerce=True),
        "low": pa.Column(float, _PRICE, nullable=False, coerce=True),
        "close": pa.Column(float, _PRICE, nullable=False, coerce=True),
        "volume": pa.Column(float, pa.Check.ge(0, error="volume must be >= 0"), coerce=True),
    },
    checks=[
        pa.Check(
            lambda d: d["high"] >= d[["open", "close"]].max(axis=1),
            error="high >= max(open, close)",
        ),
        pa.Check(
            lambda d: d["low"] <= d[["open", "close"]].min(axis=1),
            error="low <= min(open, close)",
        ),
    ],
    unique=["symbol", "timestamp"],
    strict=False,
    name="series",
)

CORPORATE_ACTIONS_SCHEMA = pa.DataFrameSchema(
    {
        "symbol": pa.Column(str, nullable=False),
        "ex_date": pa.Column(str, pa.Check(_iso_timestamps, error="ISO-8601 date"), nullable=False),
        "action": pa.Column(str, pa.Check.isin(["split", "dividend"]), nullable=False),
        "value": pa.Column(float, pa.Check.gt(0, error="value must be > 0"), coerce=True),
    },
    strict=False,
    name="corporate_actions",
)

INDICATORS_SCHEMA = pa.DataFrameSchema(
    {
        "symbol": pa.Column(str, nullable=False),
        "timestamp": pa.Column(
            str, pa.Check(_iso_timestamps, error="ISO-8601 timestamp"), nullable=False
        ),
        "name": pa.Column(str, nullable=False),
        "value": pa.Column(float, nullable=True, coerce=True),
    },
    unique=["symbol", "timestamp", "name"],
    strict=False,
    name="indicators",
)

SCHEMAS = {
    "assets": ASSETS_SCHEMA,
    "series": SERIES_SCHEMA,
    "corporate_actions": CORPORATE_ACTIONS_SCHEMA,
    "indicators": INDICATORS_SCHEMA,
}


def _failure_rows(table: str, frame: pd.DataFrame, err: SchemaErrors) -> list[str]:
    """Format pandera failure cases as `table.column  check  count  examples` lines."""
    cases = err.failure_cases.copy()
    cases["column"] = cases["column"].fillna("<table>")
    lines = []
    for (column, check), group in cases.groupby(["column", "check"], sort=False, dropna=False):
        index = pd.to_numeric(group["index"], errors="coerce").dropna().astype(int)
        examples = []
        for i in index.unique()[:MAX_EXAMPLES]:
            if i in frame.index:
                row = frame.loc[i]
                where = ", ".join(
                    f"{k}={row[k]!r}" for k in ("symbol", "timestamp", "ex_date") if k in row
                )
                value = row[column] if column in row else group["failure_case"].iloc[0]
                examples.append(f"row {i} ({where}, {column}={value!r})")
        if not examples:
            examples = [repr(v) for v in group["failure_case"].head(MAX_EXAMPLES)]
        lines.append(
            f"  {table}.{column}: check '{check}' failed on {len(group)} value(s); "
            f"e.g. {'; '.join(examples)}"
        )
    return lines


def validate_tables(tables: dict[str, pd.DataFrame], source: str) -> None:
    """Validate every present table against its schema and cross-table references.

    Args:
        tables: table name -> DataFrame as read from SQLite (text timestamps).
        source: where the tables came from (database path), quoted in the error.

    Raises:
        DataError: listing every failure of every table at once.
    """
    problems: list[str] = []
    for table, frame in tables.items():
        schema = SCHEMAS.get(table)
        if schema is None:
            continue
        try:
            schema.validate(frame, lazy=True)
        except SchemaErrors as err:
            problems.extend(_failure_rows(table, frame, err))
    if "assets" in tables:
        known = set(tables["assets"]["symbol"].dropna())
        for table in ("series", "indicators", "corporate_actions"):
            if table not in tables:
                continue
            frame = tables[table]
            unknown = frame.loc[~frame["symbol"].isin(known), "symbol"]
            if len(unknown):
                names = ", ".join(map(repr, unknown.unique()[:MAX_EXAMPLES]))
                problems.append(
                    f"  {table}.symbol: {len(unknown)} row(s) reference symbols missing from "
                    f"assets; e.g. {names}"
                )
    if problems:
        raise DataError(
            f"database {source} failed validation ({len(problems)} problem(s)); fix the data "
            "and run again:\n" + "\n".join(problems)
        )
