"""Normalising one input file of an import: column matching, timestamps and numbers.

`importers.import_files` reads each file and hands it to :func:`normalise`, which maps its
columns to the contract (case-insensitive aliases, an explicit ``--columns`` mapping), turns
timestamps into ISO text (daily files keep their dates, intraday ones become UTC), checks the
prices are numbers, and splits other numeric columns off as indicators. Every error names the
file, the column and the row.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import is_datetime64_any_dtype, is_numeric_dtype

from plusultra.errors import ConfigError, DataError

SUFFIXES = (".csv", ".csv.gz", ".parquet")
PRICES = ("open", "high", "low", "close", "volume")
OPTIONAL_PRICES = ("open", "high", "low", "volume")  # NULL when a file lacks them
COLUMN_TARGETS = ("timestamp", "symbol", *PRICES)  # what `columns` may map
TIMESTAMP_ALIASES = ("timestamp", "datetime", "date", "time")  # first present wins
PRICE_ALIASES = {"volume": ("volume", "vol")}  # other prices: their own name only
ADJ_CLOSE = ("adj close", "adjclose", "adjusted close")
SYMBOL_ALIASES = ("symbol", "ticker")  # used when symbol_column is left at "symbol"
IGNORED = re.compile(r"^(unnamed( \d+)?|index|level \d+)$")  # pandas index leftovers
# A UTC offset (or Z) after a clock time; removed to read the local wall-clock time.
_OFFSET = re.compile(r"(\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?)\s*(?:Z|UTC|[+-]\d{2}(?::?\d{2})?)$")


def suffix_of(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def parse_column_map(text: str | None) -> dict[str, str]:
    """Parse ``"close=Last,volume=Vol"`` into ``{"close": "Last", "volume": "Vol"}``.

    Raises:
        ConfigError: a pair without ``=`` or with an empty side, a repeated target, or an
            unknown target (the message lists the valid ones).
    """
    mapping: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in (text or "").split(","))):
        target, sep, source = (part.strip() for part in pair.partition("="))
        if not sep or not target or not source:
            raise ConfigError(f"--columns: {pair!r} is not target=source (e.g. close=Last)")
        if target.lower() in mapping:
            raise ConfigError(f"--columns: target {target!r} is mapped twice")
        mapping[target.lower()] = source
    return check_column_map(mapping)


def check_column_map(mapping: dict[str, str]) -> dict[str, str]:
    mapping = {str(k).lower(): str(v) for k, v in mapping.items()}
    unknown = sorted(set(mapping) - set(COLUMN_TARGETS))
    if unknown:
        raise ConfigError(
            f"--columns: unknown target(s) {', '.join(map(repr, unknown))}; valid targets: "
            f"{', '.join(COLUMN_TARGETS)}"
        )
    return mapping


def column_key(name: object) -> str:
    """Normalised column name: lower case, runs of non-alphanumerics as one space."""
    return re.sub(r"[^a-z0-9]+", " ", str(name).lower()).strip()


def row_label(path: Path, i: int) -> str:
    """How to find row `i` (0-based) of `path`: the CSV line (header = line 1) or row index."""
    return f"line {i + 2}" if suffix_of(path) != ".parquet" else f"row {i}"


def _find(columns: dict[str, str], names: Sequence[str]) -> str | None:
    """The first original column name whose normalised name is in `names`."""
    return next((columns[n] for n in names if n in columns), None)


def _local_and_utc(raw: pd.Series, path: Path, column: str) -> tuple[pd.Series, pd.Series]:
    """Parse timestamps; returns (wall-clock time in its own zone, UTC time), both naive."""
    if is_datetime64_any_dtype(raw):
        if getattr(raw.dt, "tz", None) is None:
            return raw, raw
        return raw.dt.tz_localize(None), raw.dt.tz_convert("UTC").dt.tz_localize(None)
    text = raw.astype("string").str.strip()
    utc = pd.to_datetime(text, format="ISO8601", utc=True, errors="coerce")
    bad = np.flatnonzero(utc.isna().to_numpy())
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path}: column {column!r} has {bad.size} value(s) that are not ISO-8601 "
            f"timestamps (YYYY-MM-DD[ HH:MM:SS][+HH:MM]), first at {row_label(path, i)}: "
            f"{raw.iloc[i]!r}"
        )
    local = pd.to_datetime(text.str.replace(_OFFSET, r"\1", regex=True), format="ISO8601")
    return local, utc.dt.tz_localize(None)


def _iso(raw: pd.Series, path: Path, column: str) -> pd.Series:
    """ISO text: dates if every wall-clock time is midnight (daily), else UTC date-times."""
    local, utc = _local_and_utc(raw, path, column)
    if (local == local.dt.normalize()).all():
        return local.dt.strftime("%Y-%m-%d")
    fraction = (utc.dt.microsecond != 0) | (utc.dt.nanosecond != 0)
    return utc.dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if fraction.any() else "%Y-%m-%dT%H:%M:%SZ")


def _numeric(raw: pd.Series, path: Path, column: str) -> pd.Series:
    """float64; DataError naming the first value that is neither empty nor a number."""
    if is_numeric_dtype(raw):
        return raw.astype(float)
    values = pd.to_numeric(raw, errors="coerce").astype(float)
    bad = np.flatnonzero((values.isna() & raw.notna()).to_numpy())
    if bad.size:
        i = int(bad[0])
        raise DataError(
            f"{path}: column {column!r} has {bad.size} non-numeric value(s), first at "
            f"{row_label(path, i)}: {raw.iloc[i]!r}"
        )
    return values


def _is_numeric_text(raw: pd.Series) -> bool:
    """True if every non-missing value of `raw` is a number (and there is at least one)."""
    if is_numeric_dtype(raw) and not pd.api.types.is_bool_dtype(raw):
        return bool(raw.notna().any())
    if is_datetime64_any_dtype(raw):
        return False
    present = raw.dropna()
    return bool(len(present)) and bool(pd.to_numeric(present, errors="coerce").notna().all())


def normalise(
    frame: pd.DataFrame,
    path: Path,
    layout: str,
    symbol_column: str,
    timestamp_column: str | None,
    mapping: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame | None, list[str]]:
    """One input file -> (series rows with their ``row`` number, indicator rows or None, the
    optional price fields the file lacks)."""
    mapping = mapping or {}
    columns: dict[str, str] = {}
    for name in frame.columns:
        columns.setdefault(column_key(name), name)
    used: set[str] = set()

    def need(names: Sequence[str], what: str) -> str:
        found = _find(columns, names)
        if found is None:
            raise DataError(
                f"{path} has no {what} column (looked for {', '.join(map(repr, names))}; "
                f"has {', '.join(map(repr, map(str, frame.columns)))})"
            )
        used.add(found)
        return found

    for target, source in mapping.items():
        if column_key(source) not in columns:
            raise DataError(
                f"{path} has no column {source!r} (mapped to {target} by --columns; "
                f"has {', '.join(map(repr, map(str, frame.columns)))})"
            )
    if "symbol" in mapping:
        symbol_column = mapping["symbol"]
    if "timestamp" in mapping:
        timestamp_column = mapping["timestamp"]
    symbol_names = (column_key(symbol_column),)
    if symbol_column == "symbol" and "symbol" not in mapping:
        symbol_names = SYMBOL_ALIASES
    long = layout == "long" or (layout == "auto" and _find(columns, symbol_names) is not None)
    out = pd.DataFrame({"row": np.arange(len(frame))})
    if long:
        name = need(symbol_names, f"symbol ({symbol_column!r})")
        symbols = frame[name].astype("string").str.strip()
        missing = np.flatnonzero((symbols.isna() | (symbols == "")).to_numpy())
        if missing.size:
            raise DataError(
                f"{path}: column {name!r} has {missing.size} empty symbol(s), first at "
                f"{row_label(path, int(missing[0]))}"
            )
        out["symbol"] = symbols.astype(object).to_numpy()
    else:
        out["symbol"] = path.name[: len(path.name) - len(suffix_of(path))].upper()
        found = _find(columns, symbol_names)
        if found is not None:
            used.add(found)

    if timestamp_column is not None:
        stamp = need((column_key(timestamp_column),), f"timestamp ({timestamp_column!r})")
        raw = frame[stamp]
    elif "date" in columns and "time" in columns and not _find(columns, TIMESTAMP_ALIASES[:2]):
        stamp = f"{columns['date']} + {columns['time']}"
        used.update((columns["date"], columns["time"]))
        date, time = (frame[columns[k]].astype("string") for k in ("date", "time"))
        raw = date + " " + time
    else:
        stamp = need(TIMESTAMP_ALIASES, "timestamp")
        raw = frame[stamp]
    out["timestamp"] = _iso(raw, path, stamp).astype(object).to_numpy()

    adj = _find(columns, ADJ_CLOSE)
    if adj is not None:
        used.add(adj)
    absent = []
    for price in PRICES:
        names = PRICE_ALIASES.get(price, (price,))
        if price in mapping:
            names = (column_key(mapping[price]),)
        elif price == "close" and _find(columns, names) is None and adj is not None:
            names = (column_key(adj),)
        if price in OPTIONAL_PRICES and _find(columns, names) is None:
            absent.append(price)  # e.g. adjusted closes only: NULL, allowed by the contract
            out[price] = np.nan
            continue
        name = need(names, price)
        out[price] = _numeric(frame[name], path, name).to_numpy()

    indicator_rows = []
    taken = {column_key(name) for name in used}  # also skips a second spelling ("Close", "close")
    for name in frame.columns:
        key = column_key(name)
        if key in taken or IGNORED.match(key) or not _is_numeric_text(frame[name]):
            continue
        values = _numeric(frame[name], path, name).to_numpy()
        keep = ~np.isnan(values)
        indicator_rows.append(
            pd.DataFrame(
                {
                    "row": out["row"].to_numpy()[keep],
                    "symbol": out["symbol"].to_numpy()[keep],
                    "timestamp": out["timestamp"].to_numpy()[keep],
                    "name": key.replace(" ", "_"),
                    "value": values[keep],
                }
            )
        )
    indicators = pd.concat(indicator_rows, ignore_index=True) if indicator_rows else None
    return out, indicators, absent
