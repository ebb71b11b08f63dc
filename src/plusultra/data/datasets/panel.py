"""Load the SQLite contract into an aligned, split- and dividend-adjusted panel.

A :class:`Panel` holds wide arrays ``(T, S)`` over a common calendar (the union of all
timestamps of the selected symbols) with NaN where a symbol has no bar (not yet listed,
delisted, or a missing day). Prices are *forward* adjusted for splits and dividends: the
adjusted close starts at the first raw close and compounds the total return
``r_t = (close_t * split_t + dividend_t) / close_{t-1} - 1``, which uses data up to ``t`` only
(unlike the usual back-adjustment, which rescales the past with future events).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from plusultra.data.io import tables as tables_io
from plusultra.data.io.tables import read_tables
from plusultra.data.validation.checks import ValidationRules, validate_tables
from plusultra.errors import DataError

PRICE_FIELDS = ("open", "high", "low", "close", "volume")


@dataclass
class Panel:
    """Aligned market data.

    Attributes:
        dates: (T,) calendar, datetime64[ns], strictly increasing.
        symbols: (S,) symbol names, sorted.
        fields: name -> (T, S) float64; adjusted open/high/low/close, split-adjusted volume,
            raw ``close_raw``, and adjusted ``vwap`` when table series has that optional
            column; NaN where a symbol has no bar (or the value is NULL).
        indicators: indicator name -> (T, S) float64 from the long `indicators` table.
        assets: the `assets` rows of the selected symbols, indexed by symbol.
    """

    dates: np.ndarray
    symbols: list[str]
    fields: dict[str, np.ndarray]
    indicators: dict[str, np.ndarray] = field(default_factory=dict)
    assets: pd.DataFrame | None = None

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.dates), len(self.symbols)


def _check_columns(tables: dict[str, pd.DataFrame], path: str | os.PathLike) -> None:
    need = {
        "assets": ("symbol",),
        "series": ("symbol", "timestamp", *PRICE_FIELDS),
        "indicators": ("symbol", "timestamp", "name", "value"),
        "corporate_actions": ("symbol", "ex_date", "action", "value"),
    }
    for table, frame in tables.items():
        missing = [c for c in need[table] if c not in frame.columns]
        if missing:
            raise DataError(
                f"table {table} in {path} lacks column(s) {', '.join(missing)} "
                f"(has {', '.join(frame.columns)}); see docs/sqlite_schema.md"
            )


def _to_naive_utc(text: pd.Series) -> pd.Series:
    return pd.to_datetime(text, format="ISO8601", utc=True).dt.tz_localize(None)


def _wide(
    long: pd.DataFrame, dates: pd.DatetimeIndex, symbols: list[str], value: str
) -> np.ndarray:
    """Scatter a long frame (with `ts` and `symbol` columns) into a (T, S) array."""
    out = np.full((len(dates), len(symbols)), np.nan)
    rows = dates.get_indexer(long["ts"])
    cols = pd.Index(symbols).get_indexer(long["symbol"])
    keep = (rows >= 0) & (cols >= 0)
    out[rows[keep], cols[keep]] = long[value].to_numpy(dtype=float)[keep]
    return out


def adjustment_factors(
    close: np.ndarray, dates: pd.DatetimeIndex, symbols: list[str], actions: pd.DataFrame | None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-bar split ratio and cash dividend, (T, S) each, from corporate actions.

    An action whose ex-date falls on a day without a bar applies on the symbol's next bar.
    """
    split = np.ones_like(close)
    dividend = np.zeros_like(close)
    if actions is None or actions.empty:
        return split, dividend
    ex = _to_naive_utc(actions["ex_date"]).dt.normalize()
    listed = ~np.isnan(close)
    for (sym, action), group in actions.assign(ts=ex).groupby(["symbol", "action"]):
        if sym not in symbols:
            continue
        s = symbols.index(sym)
        bar_dates = dates[listed[:, s]]
        pos = bar_dates.searchsorted(pd.DatetimeIndex(group["ts"]))
        ok = pos < len(bar_dates)
        rows = dates.get_indexer(bar_dates[pos[ok]])
        values = group["value"].to_numpy(dtype=float)[ok]
        if action == "split":
            np.multiply.at(split[:, s], rows, values)
        else:
            np.add.at(dividend[:, s], rows, values)
    return split, dividend


def load_panel(
    path: str | os.PathLike,
    symbols: list[str] | None = None,
    start: str | None = None,
    end: str | None = None,
    validate: bool = True,
    rules: ValidationRules | None = None,
    extra_schemas: dict | None = None,
) -> Panel:
    """Read, validate, align and adjust a database that follows the SQLite contract.

    Args:
        path: SQLite file.
        symbols: universe to load (default: every symbol in `assets`).
        start, end: inclusive ISO date bounds on timestamps (default: everything).
        validate: run the pandera schemas (always on in runs; tests may switch it off).
        rules: data-quality rules (gaps, stale prices) on top of the schemas.
        extra_schemas: table name -> schema of declared alternative-data tables to validate.

    Raises:
        DataError: missing file/table/column, unknown symbols, failed validation, no rows.
    """
    tables = read_tables(path, symbols, start, end)
    _check_columns(tables, path)
    if validate:
        if extra_schemas:  # declared alternative-data tables, read whole (they are small)
            with tables_io.connect(path) as con:
                present = tables_io.table_names(con)
                tables.update(
                    {t: tables_io.read_table(con, t) for t in extra_schemas if t in present}
                )
        validate_tables(tables, os.fspath(path), rules, extra_schemas)
    series = tables["series"]
    if symbols:
        unknown = sorted(set(symbols) - set(tables["assets"]["symbol"]))
        if unknown:
            raise DataError(f"data.symbols: {unknown} not in table assets of {path}")
    if series.empty:
        raise DataError(
            f"table series in {path} has no rows for symbols={symbols or 'all'}, "
            f"start={start}, end={end}"
        )
    series = series.assign(ts=_to_naive_utc(series["timestamp"]))
    dates = pd.DatetimeIndex(np.sort(series["ts"].unique()))
    names = sorted(series["symbol"].unique())
    raw = {f: _wide(series, dates, names, f) for f in PRICE_FIELDS}

    split, dividend = adjustment_factors(
        raw["close"], dates, names, tables.get("corporate_actions")
    )
    prev_close = _ffill(raw["close"])
    prev_close = np.vstack([np.full((1, len(names)), np.nan), prev_close[:-1]])
    total_return = (raw["close"] * split + dividend) / prev_close - 1.0
    first = np.isnan(prev_close) & ~np.isnan(raw["close"])
    growth = np.where(np.isnan(total_return), 1.0, 1.0 + total_return)
    growth[first] = 1.0
    first_close = np.nanmax(np.where(first, raw["close"], np.nan), axis=0)
    adj_close = first_close * np.cumprod(growth, axis=0)
    adj_close[np.isnan(raw["close"])] = np.nan
    factor = adj_close / raw["close"]
    cum_split = np.cumprod(split, axis=0)
    fields = {
        "open": raw["open"] * factor,
        "high": raw["high"] * factor,
        "low": raw["low"] * factor,
        "close": adj_close,
        "volume": raw["volume"] / cum_split,
        "close_raw": raw["close"],
    }
    if "vwap" in series.columns:  # optional column: volume-weighted average price, adjusted
        fields["vwap"] = _wide(series, dates, names, "vwap") * factor
    indicators = {}
    if "indicators" in tables and not tables["indicators"].empty:
        ind = tables["indicators"].assign(ts=lambda d: _to_naive_utc(d["timestamp"]))
        for name, group in ind.groupby("name"):
            indicators[str(name)] = _wide(group, dates, names, "value")
    assets = tables["assets"].set_index("symbol").reindex(names)
    return Panel(dates.to_numpy(), names, fields, indicators, assets)


def tradable_mask(panel: Panel) -> np.ndarray:
    """(T, S) bool: the symbol has a bar at t and t is before its `assets.delisted` date."""
    has_bar = ~np.isnan(panel.fields["close"])
    delisted = pd.to_datetime(panel.assets["delisted"], format="ISO8601", errors="coerce", utc=True)
    cutoff = delisted.dt.tz_localize(None).to_numpy(dtype="datetime64[ns]")
    before = np.isnat(cutoff)[None, :] | (panel.dates[:, None] < cutoff[None, :])
    return has_bar & before


def _ffill(a: np.ndarray) -> np.ndarray:
    """Forward-fill NaN down the time axis of a (T, S) array (causal)."""
    idx = np.where(~np.isnan(a), np.arange(a.shape[0])[:, None], 0)
    np.maximum.accumulate(idx, axis=0, out=idx)
    out = a[idx, np.arange(a.shape[1])]
    return out
