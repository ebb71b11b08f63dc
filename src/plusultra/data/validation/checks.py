"""A fast, lazy validator of the SQLite contract (schemas: `schemas.py`).

Every table is checked before anything trains (`validate_tables`, called by
`plusultra.data.datasets.panel.load_panel`) and on its own by ``plusultra-data validate DB``
(`validate_database`). All failures are collected at once into a :class:`ValidationReport`
(`validation_report.py`, which also formats and writes it): one row per (table, column, check)
with how many values fail and up to five example rows.

Checks, by the name they have in reports (`column` in brackets; ``*`` is the whole table):

============================  ==================================================================
``table present``             [*] a required table (assets, series) or a declared extra table
``column present``            a required column of the table's schema
``column allowed``             a column a ``strict=True`` (caller's) schema does not declare
``coercible to <type>``       values convert to the schema's type (e.g. text in ``close``)
``not null``                  a non-nullable column holds NULL
``unique``                    a unique column (``assets.symbol``) or key such as
                              ``(symbol, timestamp)`` repeats
``unique after parsing``      two spellings of one instant in a key (``2018-01-02`` and
                              ``2018-01-02T00:00:00Z``): with the rows in any order, "timestamps
                              strictly increase per symbol" means ISO-8601 and this and ``unique``
``ISO-8601``                  timestamp / ex_date / listed / delisted is not
                              ``YYYY-MM-DD[(T| )HH:MM[:SS[.f]][Z|+HH[:MM]]]`` or no real date
``finite``, ``> 0``           prices (open/high/low/close) and corporate action values;
                              ``finite`` also for indicators.value (NULL allowed there)
``>= 0``                      volume
``high >= max(open, close)``  [high]; ``low <= min(open, close)`` [low]; on the values present
                              (open, high, low and volume may be NULL; close may not)
``in {split, dividend}``      corporate_actions.action
``symbol in assets``          a symbol of series/indicators/corporate_actions (or an extra table
                              with a ``symbol`` column) is not in assets
``not all null``              a column of a non-empty table is entirely NULL; except
                              ``assets.delisted`` (NULL while listed, so all NULL when nothing
                              has been delisted), ``assets.sector`` (optional metadata),
                              ``series`` open/high/low/volume (close-only data) and
                              non-nullable columns (already ``not null``)
``gap <= N days``             [timestamp] rule ``max_gap_days``: consecutive bars of a symbol more
                              than N calendar days apart (one failure value per gap)
``stale run <= N bars``       [close] rule ``max_stale_bars``: more than N consecutive bars of a
                              symbol with an identical close (one failure value per run)
``could not run``             a check of a (caller's) schema raised an exception
============================  ==================================================================

The schemas are ordinary pandera schemas, but they are evaluated by the small vectorised runner
below rather than by ``schema.validate(lazy=True)``: pandera's lazy mode materialises one failure
case per failing value and formats them all, which took over ten minutes on a 2.3M-row series
table with every close negative. The runner walks the same schema (columns, dtype, nullable,
unique, column and DataFrame-level ``Check`` objects, ``unique`` keys, ``strict``), calls each
``Check`` through pandera's check backend, and keeps only counts and five example rows. Row
numbers in examples are 0-based positions in the table as read.
"""

from __future__ import annotations

import numbers
import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import ParserError

from plusultra.data.io import tables as tables_io
from plusultra.data.validation.report import ValidationReport, _Failures, _fmt, _row
from plusultra.data.validation.schemas import (  # noqa: F401  (re-exported: part of this module's API)
    _NAME_RE,
    ALL_NULL_ALLOWED,
    ASSETS_SCHEMA,
    CONTRACT_TABLES,
    CORPORATE_ACTIONS_SCHEMA,
    FAILURE_COLUMNS,
    FRAME_CHECK_COLUMNS,
    INDICATORS_SCHEMA,
    MAX_EXAMPLES,
    SCHEMAS,
    SERIES_SCHEMA,
    TIME_COLUMNS,
    iso8601_check,
    parse_iso,
)
from plusultra.errors import ConfigError


@dataclass(frozen=True)
class ValidationRules:
    """Configurable data-quality rules (conf: data.validation.*). None disables a rule."""

    max_gap_days: int | None = None  # flag consecutive bars of a symbol > this many days apart
    max_stale_bars: int | None = None  # flag runs of > this many bars with an identical close

    def __post_init__(self) -> None:
        for key, unit in (("max_gap_days", "calendar days"), ("max_stale_bars", "bars")):
            value = getattr(self, key)
            ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
            if value is not None and (not ok or value < 1):
                raise ConfigError(
                    f"data.validation.{key} must be a positive integer ({unit}) or null to "
                    f"disable the rule, got {value!r}"
                )

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> ValidationRules:
        """Build from a config mapping (``data.validation``); unknown keys are a ConfigError."""
        values = dict(values or {})
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(known))
        if unknown:
            raise ConfigError(
                f"data.validation: unknown key(s) {', '.join(unknown)}; valid: {', '.join(known)}"
            )
        return cls(**values)


# ------------------------------------------------------------------ runner
def _keys(schema: pa.DataFrameSchema, frame: pd.DataFrame) -> list[str]:
    """Columns that identify a row in examples: the schema's unique key, else symbol/timestamp."""
    keys = list(schema.unique or []) or [n for n, c in schema.columns.items() if c.unique]
    keys = keys or ["symbol", *TIME_COLUMNS]
    return [k for k in keys if k in frame.columns]


def _coerce(values: pd.Series, dtype) -> tuple[pd.Series, np.ndarray, str]:
    """Convert to the schema dtype; returns (values, mask of non-coercible values, type label)."""
    no = np.zeros(len(values), dtype=bool)
    name = str(dtype)
    if dtype is None or name == "None":
        return values, no, ""
    if name == "str":
        if pd.api.types.infer_dtype(values, skipna=True) in ("string", "empty"):
            return values, no, "str"
        return values.where(values.isna(), values.astype(str)), no, "str"
    try:
        kind = np.dtype(name).kind
    except TypeError:
        kind = ""
    if kind in ("f", "i", "u"):
        number = pd.to_numeric(values, errors="coerce")
        bad = (number.isna() & values.notna()).to_numpy()
        if kind in ("i", "u"):
            fraction = (number % 1 != 0) & number.notna()
            bad |= fraction.to_numpy()
            number = number.where(~fraction)
            label = "int"
            if not number.isna().any():
                number = number.astype(name)
        else:
            label, number = "float", number.astype(name)
        return number, bad, label
    try:
        return dtype.try_coerce(values), no, name
    except ParserError as err:
        index = pd.to_numeric(err.failure_cases["index"], errors="coerce").dropna()
        bad = values.index.isin(index)
        return values.where(~bad), bad, name


def _check_name(check: pa.Check) -> str:
    return str(check.error or check.name)


def _run_check(check: pa.Check, obj: pd.Series | pd.DataFrame) -> np.ndarray | bool:
    """Failing rows of `check` on `obj` (bool array), or a bool for a whole-object check.

    Raises:
        Exception: whatever the check function raises.
    """
    output = check(obj).check_output
    if isinstance(output, pd.DataFrame):
        output = output.all(axis=1)
    if isinstance(output, pd.Series):
        # ignore_na checks see non-null values only: the others pass
        passed = output.reindex(obj.index, fill_value=True).fillna(False).astype(bool)
        return ~passed.to_numpy()
    return not bool(output)


def _check_schema(
    table: str, frame: pd.DataFrame, schema: pa.DataFrameSchema, out: _Failures
) -> tuple[pd.DataFrame, dict[str, pd.Series]]:
    """Check one table against its schema.

    Returns:
        The frame with its columns coerced, and parsed time columns of its unique key.
    """
    keys = _keys(schema, frame)
    coerced, missing, nulls, parsed = {}, [], {}, {}
    for name, col in schema.columns.items():
        if name not in frame.columns:
            if col.required:
                missing.append(name)
                out.add(table, name, "column present", 1, [f"columns: {', '.join(frame.columns)}"])
            continue
        values, bad, label = _coerce(frame[name], col.dtype)
        out.add_rows(table, name, f"coercible to {label}", frame, bad, [*keys, name])
        coerced[name] = values
        null = nulls[name] = values.isna().to_numpy() & ~bad  # same as NULL in the raw table
        if not col.nullable:
            out.add_rows(table, name, "not null", frame, null, [*keys, name])
        if col.unique:
            out.add_rows(table, name, "unique", frame, values.duplicated(keep=False) & ~null, keys)
        for check in col.checks:
            _apply(check, values, table, name, frame, [*keys, name], out)
    if schema.strict:
        for name in frame.columns:
            if name not in schema.columns:
                out.add(table, name, "column allowed", 1, [f"schema: {', '.join(schema.columns)}"])
    work = frame.assign(**coerced)
    for subset in [list(schema.unique)] if schema.unique else []:
        if all(c in frame.columns for c in subset):
            null = [nulls[c] if c in nulls else frame[c].isna().to_numpy() for c in subset]
            present = ~np.logical_or.reduce(null)
            dup = frame.duplicated(subset, keep=False) & present
            _sorted_examples(out, table, f"({', '.join(subset)})", "unique", frame, dup, subset)
            time_cols = [c for c in subset if _is_time(c, schema)]
            _parsed_unique(out, table, frame, subset, time_cols, present, parsed)
    if not missing:
        for check in schema.checks:
            name = _check_name(check)
            column, *shown = FRAME_CHECK_COLUMNS.get(name, ("*",))
            # our own frame checks get only the columns they use (isna of text is slow)
            obj = work[[column, *shown]] if name in FRAME_CHECK_COLUMNS else work
            _apply(check, obj, table, column, frame, [*keys, column, *shown], out)
    for name in frame.columns:
        col = schema.columns.get(name)
        if (table, name) in ALL_NULL_ALLOWED or (col is not None and not col.nullable):
            continue
        null = nulls[name] if name in nulls else frame[name].isna().to_numpy()
        if len(frame) and null.all():
            out.add(table, name, "not all null", len(frame), [f"all {len(frame)} values NULL"])
    return work, parsed


def _apply(check, obj, table: str, column: str, frame: pd.DataFrame, show, out: _Failures) -> None:
    name = _check_name(check)
    try:
        bad = _run_check(check, obj)
    except Exception as exc:  # noqa: BLE001 (a broken check is reported, not fatal)
        out.add(table, column, "could not run", 1, [f"check {name!r} raised {exc!r}"])
        return
    if isinstance(bad, bool):
        if bad:
            out.add(table, column, name, 1, ["the check failed on the column as a whole"])
    else:
        out.add_rows(table, column, name, frame, bad, show)


def _sorted_examples(out, table, column, check, frame, bad, keys, key_values=None) -> None:
    """Add a key-collision failure; examples sorted by key so colliding rows sit together."""
    bad = np.asarray(bad, dtype=bool)
    if not bad.any():
        return
    positions = np.flatnonzero(bad)[:10_000]
    sort_keys = (key_values if key_values is not None else frame[keys]).iloc[positions]
    try:
        order = sort_keys.reset_index(drop=True).sort_values(list(sort_keys.columns)).index
    except TypeError:  # mixed types in a key column: keep table order
        order = pd.RangeIndex(len(positions))
    shown = [_row(frame, p, keys) for p in positions[order[:MAX_EXAMPLES]]]
    out.add(table, column, check, int(bad.sum()), shown)


def _is_time(name: str, schema: pa.DataFrameSchema) -> bool:
    """A time column: named timestamp / ex_date, or carrying a check whose error says ISO-8601."""
    col = schema.columns.get(name)
    checks = col.checks if col is not None else []
    return name in TIME_COLUMNS or any("ISO-8601" in _check_name(c) for c in checks)


def _parsed_unique(out, table, frame, subset, time_cols, present, parsed: dict) -> None:
    """Key collisions between different spellings of one instant (e.g. with and without 'Z').

    Parsed `time_cols` are stored in `parsed` for the rules.
    """
    if not time_cols:
        return
    parsed.update({c: parse_iso(frame[c]) for c in time_cols})
    key = frame[subset].assign(**{c: parsed[c] for c in time_cols})
    valid = present & key.notna().all(axis=1)
    dup = (key.duplicated(keep=False) & valid).to_numpy()
    if not dup.any():
        return
    cand = key[dup].assign(**{f"raw_{c}": frame.loc[dup, c] for c in time_cols})
    spellings = cand.drop_duplicates()
    several = spellings.loc[spellings.duplicated(subset, keep=False), subset].drop_duplicates()
    hit = cand.assign(_pos=np.flatnonzero(dup)).merge(several, on=subset)["_pos"].to_numpy()
    bad = np.zeros(len(frame), dtype=bool)
    bad[hit] = True
    _sorted_examples(
        out, table, f"({', '.join(subset)})", "unique after parsing", frame, bad, subset, key
    )


def _orphans(out: _Failures, table: str, frame: pd.DataFrame, known: pd.Series) -> None:
    """Rows whose symbol is not in assets; one example per distinct symbol."""
    bad = ~frame["symbol"].isin(known) & frame["symbol"].notna()
    if not bad.any():
        return
    counts = frame.loc[bad, "symbol"].value_counts(sort=False)
    first = frame.loc[bad, "symbol"].drop_duplicates().head(MAX_EXAMPLES)
    when = [c for c in TIME_COLUMNS if c in frame.columns][:1]
    examples = [
        f"symbol={_fmt(sym)} missing from assets ({counts[sym]} row(s), first row {pos}"
        + "".join(f", {c}={_fmt(frame[c].iat[pos])}" for c in when)
        + ")"
        for pos, sym in first.items()
    ]
    out.add(table, "symbol", "symbol in assets", int(bad.sum()), examples)


def _rules(out: _Failures, series: pd.DataFrame, work: pd.DataFrame, parsed: dict, rules):
    """Gap and stale-price rules on series, per symbol in time order (vectorised)."""
    if rules.max_gap_days is None and rules.max_stale_bars is None:
        return
    if not {"symbol", "timestamp", "close"} <= set(series.columns):
        return
    ts = parsed["timestamp"] if "timestamp" in parsed else parse_iso(series["timestamp"])
    ok = (ts.notna() & series["symbol"].notna()).to_numpy()
    codes = pd.factorize(series["symbol"])[0][ok]
    stamps = ts.to_numpy(dtype="datetime64[ns]")[ok].view("int64")
    order = np.lexsort((stamps, codes))
    pos, codes, stamps = np.flatnonzero(ok)[order], codes[order], stamps[order]
    same = codes[1:] == codes[:-1]
    sym, raw = series["symbol"].to_numpy(), series["timestamp"].to_numpy()
    if rules.max_gap_days is not None:
        days = np.diff(stamps) / 86_400e9
        gap = np.flatnonzero(same & (days > rules.max_gap_days))
        if len(gap):
            examples = [
                f"symbol={_fmt(sym[pos[i]])} from={_fmt(raw[pos[i]])} to={_fmt(raw[pos[i + 1]])} "
                f"({days[i]:g} days)"
                for i in gap[:MAX_EXAMPLES]
            ]
            out.add("series", "timestamp", f"gap <= {rules.max_gap_days} days", len(gap), examples)
    if rules.max_stale_bars is not None:
        close = work["close"].to_numpy(dtype=float)[pos]
        start = np.ones(len(pos), dtype=bool)
        start[1:] = ~(same & (close[1:] == close[:-1]))
        starts = np.flatnonzero(start)
        length = np.diff(np.append(starts, len(pos)))
        long = np.flatnonzero(length > rules.max_stale_bars)
        if len(long):
            examples = [
                f"symbol={_fmt(sym[pos[starts[i]]])} from={_fmt(raw[pos[starts[i]]])} "
                f"({length[i]} bars at close={_fmt(close[starts[i]])})"
                for i in long[:MAX_EXAMPLES]
            ]
            check = f"stale run <= {rules.max_stale_bars} bars"
            out.add("series", "close", check, len(long), examples)


def _extra(extra_schemas: Mapping[str, pa.DataFrameSchema] | None) -> dict:
    extra = dict(extra_schemas or {})
    for name in extra:
        if name in CONTRACT_TABLES or not _NAME_RE.fullmatch(str(name)):
            raise ConfigError(
                f"alternative-data table {name!r}: the name must be an SQL identifier "
                f"([A-Za-z_][A-Za-z0-9_]*) and not one of {', '.join(CONTRACT_TABLES)}"
            )
    return extra


def check_tables(
    tables: Mapping[str, pd.DataFrame],
    source: str,
    rules: ValidationRules | None = None,
    extra_schemas: Mapping[str, pa.DataFrameSchema] | None = None,
) -> ValidationReport:
    """Check every table against its schema, cross-table references and the rules, lazily.

    Args:
        tables: table name -> DataFrame as read from SQLite (text timestamps).
        source: where the tables came from (database path), quoted in the report.
        rules: gap / stale-price rules; default: both off.
        extra_schemas: alternative-data table name -> pandera schema; each such table is
            required and checked the same way.

    Returns:
        The report; `report.ok` is False when anything failed.

    Raises:
        ConfigError: an extra schema's table name is not an identifier or is a contract table.
    """
    rules = rules or ValidationRules()
    schemas = {**SCHEMAS, **_extra(extra_schemas)}
    out, n_rows, work = _Failures(), {}, {}
    for table, schema in schemas.items():
        if table not in tables:
            if table in tables_io.REQUIRED_TABLES or table not in SCHEMAS:
                out.add(table, "*", "table present", 1, [f"tables: {', '.join(tables) or 'none'}"])
            continue
        frame = tables[table]
        if not isinstance(frame.index, pd.RangeIndex) or frame.index.start != 0:
            frame = frame.reset_index(drop=True)
        n_rows[table] = len(frame)
        work[table], parsed = _check_schema(table, frame, schema, out)
        if table != "assets" and "assets" in work and "symbol" in frame.columns:
            known = work["assets"].get("symbol", pd.Series(dtype=object))
            _orphans(out, table, work[table], known)
        if table == "series":
            _rules(out, frame, work[table], parsed, rules)
    return ValidationReport(os.fspath(source), out.frame(), n_rows)


def validate_tables(
    tables: Mapping[str, pd.DataFrame],
    source: str,
    rules: ValidationRules | None = None,
    extra_schemas: Mapping[str, pa.DataFrameSchema] | None = None,
) -> None:
    """`check_tables` and raise DataError (summary and failure table) if anything failed."""
    check_tables(tables, source, rules, extra_schemas).raise_if_failed()


def validate_database(
    path: str | os.PathLike,
    rules: ValidationRules | None = None,
    extra_schemas: Mapping[str, pa.DataFrameSchema] | None = None,
) -> ValidationReport:
    """Read every table of an SQLite database (and each declared extra table) and check it.

    A missing required table is reported as a failure along with everything else.

    Raises:
        DataError: the file does not exist or is not an SQLite database.
        ConfigError: a bad extra table name.
    """
    extra = _extra(extra_schemas)
    con = tables_io.connect(path)
    try:
        present = tables_io.table_names(con)
        if all(t in present for t in tables_io.REQUIRED_TABLES):
            tables = tables_io.read_tables(path)
        else:
            tables = {t: tables_io.read_table(con, t) for t in CONTRACT_TABLES if t in present}
        tables.update({t: tables_io.read_table(con, t) for t in extra if t in present})
    finally:
        con.close()
    order = [t for t in (*CONTRACT_TABLES, *extra) if t in tables]
    return check_tables({t: tables[t] for t in order}, os.fspath(path), rules, extra)
