"""Import CSV or parquet price files into a database that follows the SQLite contract.

``plusultra-data import`` calls :func:`import_files`. What it accepts and how it maps it:

* Inputs: files ending in ``.csv``, ``.csv.gz`` or ``.parquet``, or directories (every such file
  directly inside, sorted by name). Layout ``per_symbol``: one file per symbol, the symbol is
  the file name without its suffixes, upper-cased (``aapl.csv.gz`` -> ``AAPL``). Layout
  ``long``: a symbol column (``symbol_column``, default ``symbol``; ``ticker`` also matches the
  default). ``auto`` decides per file: long if it has the symbol column.
* Column names are matched case-insensitively, ignoring spaces, ``_``, ``-`` and ``.``:
  timestamp <- ``timestamp``, ``datetime``, ``date``, ``time`` (first found; a separate
  ``date`` and ``time`` pair is joined) or ``timestamp_column``; ``open``, ``high``, ``low``,
  ``close``, ``volume`` (also ``vol``) by name. ``adj close`` is ignored when ``close`` exists:
  the contract stores raw prices and adjusts them itself from ``corporate_actions``. A file
  with only ``adj close`` uses it as ``close`` (the prices are then already adjusted, so leave
  ``corporate_actions`` empty). ``columns`` maps other names explicitly (CLI
  ``--columns close=Last,volume=Vol``: target = source column; targets ``timestamp``,
  ``symbol`` and the five prices; an unknown target is a ConfigError, a source column the
  file lacks a DataError naming the file).
* Only ``close`` is required. A file without ``open``, ``high``, ``low`` or ``volume`` (e.g.
  adjusted closes only) stores them as NULL, which the contract allows; the summary lists
  each absent field and its files. Features that need them are then skipped with a logged
  reason, and simulators fill at the next close without a volume cap.
* Timestamps become ISO text. A file whose timestamps are all at midnight (wall clock, in their
  own time zone) is daily and keeps its dates (``2020-01-02``); any other file is intraday and
  is converted to UTC (``2020-01-02T14:30:00Z``); timestamps without a zone are taken as UTC.
* Any other numeric column (e.g. ``sentiment``) goes into the ``indicators`` table in long
  format, named in snake case, one row per non-missing value. Text columns other than the
  symbol, and pandas index leftovers (``Unnamed: 0``, ``index``), are ignored.
* ``assets``: from the optional ``assets`` CSV (``symbol`` required; ``name``, ``sector``,
  ``asset_class``, ``currency``, ``listed``, ``delisted`` optional); symbols it lacks, or every
  symbol without it, get ``name`` = symbol, ``sector`` NULL (unknown; sector features
  are then undefined), ``asset_class`` 'equity', ``currency`` 'USD', ``listed`` = first
  timestamp, ``delisted`` NULL. ``corporate_actions`` is created empty.

* Duplicate ``(symbol, timestamp)`` rows (in one file or across files) are an error naming
  the files and lines, unless ``drop_duplicates`` (CLI ``--drop-duplicates``): then the last
  row in input order (files in the order given, rows in file order) is kept, with its
  indicator values, and the summary says how many rows were dropped.

The tables are validated (:func:`plusultra.data.validation.checks.validate_tables`) before
anything is written, then written to a temporary file next to ``out`` and renamed over it, so a
failed import leaves no file behind.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from pandas.api.types import is_datetime64_any_dtype, is_numeric_dtype

from plusultra.data.io.fixture import SCHEMA
from plusultra.data.validation.checks import validate_tables
from plusultra.errors import ConfigError, DataError
from plusultra.io import write_sqlite_atomic

__all__ = [
    "COLUMN_TARGETS",
    "ImportSummary",
    "LAYOUTS",
    "SUFFIXES",
    "import_files",
    "parse_column_map",
    "read_input",
]

LAYOUTS = ("auto", "per_symbol", "long")
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
ASSET_DEFAULTS = {"sector": None, "asset_class": "equity", "currency": "USD"}
ASSET_COLUMNS = ("symbol", "name", "sector", "asset_class", "currency", "listed", "delisted")


@dataclass
class ImportSummary:
    """What :func:`import_files` wrote.

    Attributes:
        out: the database written.
        symbols: imported symbols, sorted.
        rows: rows in ``series``.
        first, last: earliest and latest timestamp (ISO text).
        files: input file -> rows read from it.
        indicators: indicator names written to ``indicators``.
        absent: price field -> input files that lack it (stored as NULL).
        dropped: duplicate (symbol, timestamp) rows dropped (``drop_duplicates``).
    """

    out: Path
    symbols: list[str]
    rows: int
    first: str
    last: str
    files: dict[str, int] = field(default_factory=dict)
    indicators: list[str] = field(default_factory=list)
    absent: dict[str, list[str]] = field(default_factory=dict)
    dropped: int = 0

    def __str__(self) -> str:
        shown = ", ".join(self.symbols[:10]) + (", ..." if len(self.symbols) > 10 else "")
        per_file = "; ".join(f"{Path(f).name}: {n:,}" for f, n in self.files.items())
        extra = ", ".join(self.indicators) or "none"
        text = (
            f"Imported {self.rows:,} rows of {len(self.symbols)} symbol(s) ({shown}) from "
            f"{self.first} to {self.last} out of {len(self.files)} file(s) into {self.out}; "
            f"indicators: {extra}; rows per file: {per_file}."
        )
        groups: dict[tuple[str, ...], list[str]] = {}  # same files -> one sentence
        for price, files in self.absent.items():
            groups.setdefault(tuple(files), []).append(price)
        for files, prices in groups.items():
            names = ", ".join(Path(f).name for f in files[:5]) + (", ..." if len(files) > 5 else "")
            text += f" No {', '.join(prices)} in {len(files)} file(s) ({names}): stored as NULL."
        if self.dropped:
            text += (
                f" Dropped {self.dropped:,} duplicate (symbol, timestamp) row(s), kept the last."
            )
        return text


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
    return _check_column_map(mapping)


def _check_column_map(mapping: dict[str, str]) -> dict[str, str]:
    mapping = {str(k).lower(): str(v) for k, v in mapping.items()}
    unknown = sorted(set(mapping) - set(COLUMN_TARGETS))
    if unknown:
        raise ConfigError(
            f"--columns: unknown target(s) {', '.join(map(repr, unknown))}; valid targets: "
            f"{', '.join(COLUMN_TARGETS)}"
        )
    return mapping


def _key(name: object) -> str:
    """Normalised column name: lower case, runs of non-alphanumerics as one space."""
    return re.sub(r"[^a-z0-9]+", " ", str(name).lower()).strip()


def _suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in sorted(SUFFIXES, key=len, reverse=True) if name.endswith(s)), None)


def _expand(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named in `inputs`, directories replaced by the supported files directly inside."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and _suffix(p))
            if not found:
                raise DataError(f"directory {item} has no {', '.join(SUFFIXES)} files to import")
            files += found
        elif not item.exists():
            raise DataError(f"input {item} does not exist")
        elif not _suffix(item):
            raise DataError(f"input {item}: unsupported file type; use {', '.join(SUFFIXES)}")
        else:
            files.append(item)
    if not files:
        raise DataError("no input files given")
    return files


def read_input(path: Path) -> pd.DataFrame:
    """Read one CSV (all columns as text) or parquet file (index moved to a column).

    Raises:
        DataError: the file cannot be parsed, or has no rows.
    """
    try:
        if _suffix(path) == ".parquet":
            frame = pd.read_parquet(path)
            if isinstance(frame.index, pd.DatetimeIndex) and frame.index.name is None:
                frame.index.name = "timestamp"
            if not isinstance(frame.index, pd.RangeIndex):
                frame = frame.reset_index()
        else:  # text, so that symbols like "0700" and timestamps are read verbatim
            frame = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except Exception as exc:  # pandas/pyarrow raise many types for a malformed file
        raise DataError(f"cannot read {path}: {exc}") from exc
    if frame.empty:
        raise DataError(f"{path} has no rows")
    return frame


def _row(path: Path, i: int) -> str:
    """How to find row `i` (0-based) of `path`: the CSV line (header = line 1) or row index."""
    return f"line {i + 2}" if _suffix(path) != ".parquet" else f"row {i}"


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
            f"timestamps (YYYY-MM-DD[ HH:MM:SS][+HH:MM]), first at {_row(path, i)}: "
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
            f"{_row(path, i)}: {raw.iloc[i]!r}"
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


def _normalise(
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
        columns.setdefault(_key(name), name)
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
        if _key(source) not in columns:
            raise DataError(
                f"{path} has no column {source!r} (mapped to {target} by --columns; "
                f"has {', '.join(map(repr, map(str, frame.columns)))})"
            )
    if "symbol" in mapping:
        symbol_column = mapping["symbol"]
    if "timestamp" in mapping:
        timestamp_column = mapping["timestamp"]
    symbol_names = (_key(symbol_column),)
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
                f"{_row(path, int(missing[0]))}"
            )
        out["symbol"] = symbols.astype(object).to_numpy()
    else:
        out["symbol"] = path.name[: len(path.name) - len(_suffix(path))].upper()
        found = _find(columns, symbol_names)
        if found is not None:
            used.add(found)

    if timestamp_column is not None:
        stamp = need((_key(timestamp_column),), f"timestamp ({timestamp_column!r})")
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
            names = (_key(mapping[price]),)
        elif price == "close" and _find(columns, names) is None and adj is not None:
            names = (_key(adj),)
        if price in OPTIONAL_PRICES and _find(columns, names) is None:
            absent.append(price)  # e.g. adjusted closes only: NULL, allowed by the contract
            out[price] = np.nan
            continue
        name = need(names, price)
        out[price] = _numeric(frame[name], path, name).to_numpy()

    indicator_rows = []
    taken = {_key(name) for name in used}  # also skips a second spelling ("Close", "close")
    for name in frame.columns:
        key = _key(name)
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


def _drop_duplicates(
    series: pd.DataFrame, indicators: list[pd.DataFrame]
) -> tuple[pd.DataFrame, list[pd.DataFrame], int]:
    """Keep the last row of each (symbol, timestamp) in input order, and only its indicators.

    Returns:
        (series, indicator frames, number of series rows dropped).
    """
    keep = ~series.duplicated(["symbol", "timestamp"], keep="last")
    dropped = int((~keep).sum())
    if not dropped:
        return series, indicators, 0
    kept = series.loc[keep, ["file", "row"]]
    indicators = [part.merge(kept, on=["file", "row"]) for part in indicators]
    return series[keep], indicators, dropped


def _check_duplicates(series: pd.DataFrame) -> None:
    """DataError naming both files and rows of the first repeated (symbol, timestamp)."""
    dup = series.duplicated(["symbol", "timestamp"], keep=False)
    if not dup.any():
        return
    rows = series[dup].sort_values(["symbol", "timestamp"])
    first = rows.iloc[0]
    same = rows[(rows["symbol"] == first["symbol"]) & (rows["timestamp"] == first["timestamp"])]
    where = " and ".join(
        f"{Path(r.file).name} {_row(Path(r.file), r.row)}" for r in same.itertuples()
    )
    raise DataError(
        f"duplicate rows: {int(dup.sum())} rows share a (symbol, timestamp) with another; e.g. "
        f"{first['symbol']} {first['timestamp']} in {where}. Remove the duplicates (or the "
        "duplicate file), or pass --drop-duplicates to keep the last of each"
    )


def _assets(series: pd.DataFrame, assets: Path | None) -> pd.DataFrame:
    """The assets table: from the `assets` CSV where given, derived defaults for the rest."""
    first = series.groupby("symbol")["timestamp"].min()
    derived = pd.DataFrame(
        {
            "symbol": first.index.astype(object),
            "name": first.index.astype(object),
            **ASSET_DEFAULTS,
            "listed": first.to_numpy(dtype=object),
            "delisted": None,
        }
    )
    if assets is None:
        return derived[list(ASSET_COLUMNS)]
    given = read_input(Path(assets))
    columns = {_key(c): c for c in given.columns}
    if "symbol" not in columns:
        have = ", ".join(map(str, given.columns))
        raise DataError(f"assets file {assets} has no 'symbol' column (has {have})")
    table = pd.DataFrame({"symbol": given[columns["symbol"]].astype("string").str.strip()})
    table = table.astype(object)
    for name in ASSET_COLUMNS[1:]:
        key = _key(name)
        if key in columns:
            values = given[columns[key]]
            table[name] = values.astype(object).where(values.notna(), None)
        elif name == "listed":
            table[name] = table["symbol"].map(first).astype(object)
            table[name] = table[name].where(table[name].notna(), None)
        else:
            table[name] = table["symbol"] if name == "name" else ASSET_DEFAULTS.get(name)
    extra = derived[~derived["symbol"].isin(table["symbol"])]
    return pd.concat([table[list(ASSET_COLUMNS)], extra[list(ASSET_COLUMNS)]], ignore_index=True)


def _write(out: Path, tables: dict[str, pd.DataFrame]) -> None:
    """Write `tables` under the contract's schema atomically (temporary file, then rename)."""
    rows = [
        (
            name,
            frame.shape[1],
            frame.astype(object).where(frame.notna(), None).itertuples(index=False, name=None),
        )
        for name, frame in tables.items()
    ]
    write_sqlite_atomic(out, SCHEMA, rows)


def import_files(
    inputs: list[Path],
    out: Path,
    layout: str = "auto",
    symbol_column: str = "symbol",
    timestamp_column: str | None = None,
    assets: Path | None = None,
    overwrite: bool = False,
    columns: dict[str, str] | None = None,
    drop_duplicates: bool = False,
) -> ImportSummary:
    """Import CSV/parquet files into a new SQLite database following the contract.

    Args:
        inputs: files (``.csv``, ``.csv.gz``, ``.parquet``) and/or directories of them.
        out: database to write; refused if it exists, unless `overwrite`.
        layout: ``per_symbol`` (symbol = file name), ``long`` (a symbol column) or ``auto``
            (long for files that have the symbol column).
        symbol_column: name of the symbol column in long files (case-insensitive).
        timestamp_column: name of the timestamp column (default: the first of timestamp,
            datetime, date, time).
        assets: optional CSV of symbol, name, sector, asset_class, currency.
        overwrite: replace an existing `out`.
        columns: target -> source column name (case-insensitive), overriding the names
            matched by default; targets: `COLUMN_TARGETS`.
        drop_duplicates: keep the last of duplicate (symbol, timestamp) rows instead of
            failing; the count is in the summary.

    Returns:
        What was written; ``str()`` gives a one-paragraph summary.

    Raises:
        ConfigError: unknown `layout` or `columns` target.
        DataError: missing input or column (naming file and column), unparsable values
            (naming file, column and line), duplicate rows, failed validation, existing
            `out`. Nothing is written then.
    """
    if layout not in LAYOUTS:
        raise ConfigError(f"import: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    mapping = _check_column_map(dict(columns or {}))
    out = Path(out)
    if out.is_dir():
        raise DataError(f"output {out} is a directory; give a database file name")
    if out.exists() and not overwrite:
        raise DataError(f"output {out} exists; pass overwrite=True (--overwrite) to replace it")

    series_parts, indicator_parts, counts, absent = [], [], {}, {}
    for path in _expand(inputs):
        frame = read_input(path)
        series, indicators, lacks = _normalise(
            frame, path, layout, symbol_column, timestamp_column, mapping
        )
        series_parts.append(series.assign(file=str(path)))
        if indicators is not None:
            indicator_parts.append(indicators.assign(file=str(path)))
        counts[str(path)] = len(frame)
        for price in lacks:
            absent.setdefault(price, []).append(str(path))
    series = pd.concat(series_parts, ignore_index=True)
    dropped = 0
    if drop_duplicates:
        series, indicator_parts, dropped = _drop_duplicates(series, indicator_parts)
    _check_duplicates(series)
    series = series.sort_values(["symbol", "timestamp"], ignore_index=True)
    columns = ["symbol", "timestamp", "name", "value"]
    indicators = (
        pd.concat(indicator_parts, ignore_index=True).sort_values(
            ["symbol", "timestamp", "name"], ignore_index=True
        )
        if indicator_parts
        else pd.DataFrame({c: pd.Series(dtype=float if c == "value" else object) for c in columns})
    )
    tables = {
        "assets": _assets(series, assets),
        "series": series[["symbol", "timestamp", *PRICES]],
        "indicators": indicators[columns],
        "corporate_actions": pd.DataFrame(
            {
                "symbol": pd.Series(dtype=object),
                "ex_date": pd.Series(dtype=object),
                "action": pd.Series(dtype=object),
                "value": pd.Series(dtype=float),
            }
        ),
    }
    validate_tables(tables, source=f"import into {out}")
    _write(out, tables)
    return ImportSummary(
        out=out,
        symbols=sorted(series["symbol"].unique().tolist()),
        rows=len(series),
        first=str(series["timestamp"].min()),
        last=str(series["timestamp"].max()),
        files=counts,
        indicators=sorted(indicators["name"].unique().tolist()),
        absent={p: absent[p] for p in OPTIONAL_PRICES if p in absent},
        dropped=dropped,
    )
