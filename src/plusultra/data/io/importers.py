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
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from plusultra.data.io.fixture import SCHEMA
from plusultra.data.io.normalise import (
    COLUMN_TARGETS,
    OPTIONAL_PRICES,
    PRICES,
    SUFFIXES,
    check_column_map,
    column_key,
    normalise,
    parse_column_map,
    row_label,
    suffix_of,
)
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


def _expand(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Files named in `inputs`, directories replaced by the supported files directly inside."""
    if isinstance(inputs, str | os.PathLike):
        inputs = [inputs]
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if p.is_file() and suffix_of(p))
            if not found:
                raise DataError(f"directory {item} has no {', '.join(SUFFIXES)} files to import")
            files += found
        elif not item.exists():
            raise DataError(f"input {item} does not exist")
        elif not suffix_of(item):
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
        if suffix_of(path) == ".parquet":
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
        f"{Path(r.file).name} {row_label(Path(r.file), r.row)}" for r in same.itertuples()
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
    columns = {column_key(c): c for c in given.columns}
    if "symbol" not in columns:
        have = ", ".join(map(str, given.columns))
        raise DataError(f"assets file {assets} has no 'symbol' column (has {have})")
    table = pd.DataFrame({"symbol": given[columns["symbol"]].astype("string").str.strip()})
    table = table.astype(object)
    for name in ASSET_COLUMNS[1:]:
        key = column_key(name)
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
    mapping = check_column_map(dict(columns or {}))
    out = Path(out)
    if out.is_dir():
        raise DataError(f"output {out} is a directory; give a database file name")
    if out.exists() and not overwrite:
        raise DataError(f"output {out} exists; pass overwrite=True (--overwrite) to replace it")

    series_parts, indicator_parts, counts, absent = [], [], {}, {}
    for path in _expand(inputs):
        frame = read_input(path)
        series, indicators, lacks = normalise(
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
