"""Point-in-time joins of alternative data (macro, funding rates, sentiment, implied vol).

A side table in the SQLite database holds observations ``(timestamp[, symbol], value...)``. An
:class:`AlternativeDataSpec` says which table and columns to join, and when a value becomes
usable. :func:`load_alternative` turns each value column into a ``(T, S)`` array on the panel
calendar with an **as-of backward** join:

* The value at bar ``t`` is the latest observation whose *available time* ``ts + lag`` is
  ``<= dates[t]`` (``lag`` = ``publication_lag``). Nothing observed or published after a bar is
  ever visible at that bar.
* Daily bars are dated at 00:00 of their day, and a date-only side-table timestamp
  (``2018-12-31``) means "known by the close of that day": with lag ``0D`` it is usable at the
  bar of the same day; with lag ``2D`` a value dated Friday is first usable on Sunday, i.e. at
  Monday's bar. A timestamp with a time of day (``2018-12-31T15:30:00Z``, converted to UTC) is
  compared exactly, so on daily bars it is first usable at the next day's bar (conservative).
* ``ffill_limit`` counts bars of the panel calendar since the observation first became
  available: 0 shows it only at the first bar at or after its available time, ``k`` at that bar
  and the next ``k``; beyond that the value is NaN until a newer observation arrives. An
  observation available before the first bar counts from the first bar (the calendar does not
  reach further back). ``None`` carries values forward without limit.
* Each value column is joined over its own non-NULL rows: a NULL means "not observed", so the
  previous non-NULL value (within ``ffill_limit``) shows through.
* With ``symbol_column`` the join is per symbol: a panel symbol without rows is all NaN and
  table symbols outside the panel are ignored. Without it the series is market-wide and
  broadcast to every symbol.

Identifier safety: table and column names must be plain identifiers (checked when the spec is
built) and must exist in the database before any query uses them; they are then double-quoted.
Reads go through the one read-only access path of the package,
:class:`plusultra.data.io.reader.SQLiteReader` (allow-listed identifiers, bound parameters,
``mode=ro``), so no values are interpolated into SQL and nothing is written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.errors import SchemaErrors

from plusultra.data.io.reader import SQLiteReader
from plusultra.errors import ConfigError, DataError

__all__ = [
    "AlternativeDataSpec",
    "AlternativeSpecError",
    "alt_schema",
    "asof_join",
    "load_alternative",
    "specs_from_config",
]

CONFIG_KEY = "data.alternative"
MAX_EXAMPLES = 5
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_PREFIX = re.compile(r"[A-Za-z0-9_]*")


class AlternativeSpecError(ConfigError):
    """An invalid :class:`AlternativeDataSpec` field; `key` is the field name."""

    def __init__(self, key: str, reason: str) -> None:
        self.key, self.reason = key, reason
        super().__init__(f"{CONFIG_KEY}.{key}: {reason}")


def _identifier(key: str, value: object) -> None:
    if not isinstance(value, str) or not _IDENTIFIER.fullmatch(value):
        raise AlternativeSpecError(
            key, f"must be a plain identifier [A-Za-z_][A-Za-z0-9_]*, got {value!r}"
        )


def _parse_lag(value: object) -> pd.Timedelta:
    """Parse a non-negative Timedelta string that has a unit ('0D', '45D', '16h')."""
    try:
        if not isinstance(value, str) or not re.search(r"[A-Za-z]", value):
            raise ValueError("needs a unit")
        lag = pd.Timedelta(value)
    except ValueError:
        lag = pd.NaT
    if pd.isna(lag) or lag < pd.Timedelta(0):
        raise AlternativeSpecError(
            "publication_lag",
            "must be a non-negative pandas Timedelta string such as '0D', '2D', '45D' or '16h', "
            f"got {value!r}",
        )
    return lag


@dataclass(frozen=True)
class AlternativeDataSpec:
    """One side table joined point in time onto the panel.

    Attributes:
        table: SQLite table name.
        columns: value columns to join; each becomes the feature ``prefix + column``.
        timestamp_column: when the value was observed / dated (ISO-8601 text).
        symbol_column: per-symbol key column; None for a market-wide series broadcast to all.
        publication_lag: pandas Timedelta string; a value dated ``ts`` is usable from
            ``ts + lag`` (e.g. ``'45D'`` for a monthly macro print). Must be >= 0.
        ffill_limit: carry a value at most this many bars after it became available; None:
            without limit.
        prefix: feature-name prefix; None means ``f"{table}_"``.
        model_input: append the columns (and the table's availability flag) as ``alt_`` model
            inputs; false: only registered features read them (as ``ind_<name>``), e.g. a
            non-stationary index level that only feeds the index features.
    """

    table: str
    columns: list[str]
    timestamp_column: str = "timestamp"
    symbol_column: str | None = None
    publication_lag: str = "0D"
    ffill_limit: int | None = None
    prefix: str | None = None
    model_input: bool = True

    def __post_init__(self) -> None:
        _identifier("table", self.table)
        if isinstance(self.columns, str | bytes) or not isinstance(self.columns, Sequence):
            raise AlternativeSpecError(
                "columns", f"must be a list of column names, got {self.columns!r}"
            )
        object.__setattr__(self, "columns", list(self.columns))
        if not self.columns:
            raise AlternativeSpecError("columns", "must name at least one value column")
        for column in self.columns:
            _identifier("columns", column)
        if len(set(self.columns)) != len(self.columns):
            raise AlternativeSpecError("columns", f"has duplicates: {self.columns}")
        _identifier("timestamp_column", self.timestamp_column)
        if self.symbol_column is not None:
            _identifier("symbol_column", self.symbol_column)
        keys = {self.timestamp_column, self.symbol_column}
        if keys & set(self.columns):
            raise AlternativeSpecError(
                "columns", f"must not contain the key column(s) {sorted(keys & set(self.columns))}"
            )
        _parse_lag(self.publication_lag)
        limit = self.ffill_limit
        if limit is not None and (
            isinstance(limit, bool) or not isinstance(limit, int | np.integer) or limit < 0
        ):
            raise AlternativeSpecError("ffill_limit", f"must be null or an int >= 0, got {limit!r}")
        if not isinstance(self.model_input, bool):
            raise AlternativeSpecError(
                "model_input", f"must be true or false, got {self.model_input!r}"
            )
        if self.prefix is not None and (
            not isinstance(self.prefix, str) or not _PREFIX.fullmatch(self.prefix)
        ):
            raise AlternativeSpecError(
                "prefix", f"must be null or letters, digits and '_', got {self.prefix!r}"
            )

    @property
    def lag(self) -> pd.Timedelta:
        """`publication_lag` as a Timedelta (>= 0)."""
        return _parse_lag(self.publication_lag)

    @property
    def names(self) -> list[str]:
        """Output feature names, one per value column."""
        prefix = f"{self.table}_" if self.prefix is None else self.prefix
        return [prefix + column for column in self.columns]


def specs_from_config(
    entries: Sequence[Mapping | AlternativeDataSpec], key: str = CONFIG_KEY
) -> list[AlternativeDataSpec]:
    """Build specs from config mappings; errors name ``{key}[i].<field>``.

    Raises:
        ConfigError: unknown field, invalid value, or two specs producing the same feature name.
    """
    valid = [f.name for f in fields(AlternativeDataSpec)]
    specs = []
    for i, entry in enumerate(entries):
        if isinstance(entry, AlternativeDataSpec):
            specs.append(entry)
            continue
        if not isinstance(entry, Mapping):
            raise ConfigError(f"{key}[{i}]: must be a mapping of {valid}, got {entry!r}")
        unknown = sorted(set(entry) - set(valid))
        if unknown:
            raise ConfigError(f"{key}[{i}]: unknown key(s) {unknown}; valid keys: {valid}")
        missing = [k for k in ("table", "columns") if k not in entry]
        if missing:
            raise ConfigError(f"{key}[{i}].{missing[0]}: required")
        try:
            specs.append(AlternativeDataSpec(**entry))
        except AlternativeSpecError as err:
            raise ConfigError(f"{key}[{i}].{err.key}: {err.reason}") from None
    _check_unique_names(specs, key)
    return specs


def _check_unique_names(specs: Sequence[AlternativeDataSpec], key: str = CONFIG_KEY) -> None:
    seen: dict[str, int] = {}
    for i, spec in enumerate(specs):
        for name in spec.names:
            if name in seen:
                raise ConfigError(
                    f"{key}[{i}].prefix: feature {name!r} is also produced by {key}[{seen[name]}];"
                    " set distinct prefixes"
                )
            seen[name] = i


def _iso(series: pd.Series) -> pd.Series:
    """True where the text parses as an ISO-8601 date or date-time."""
    return pd.to_datetime(series, format="ISO8601", errors="coerce", utc=True).notna()


def alt_schema(spec: AlternativeDataSpec) -> pa.DataFrameSchema:
    """Pandera schema of a side table: ISO timestamps, float-coercible finite values.

    The symbol column (if any) must be non-null, and ``([symbol,] timestamp)`` unique.
    """
    columns = {
        spec.timestamp_column: pa.Column(
            str, pa.Check(_iso, error="ISO-8601 timestamp"), nullable=False
        )
    }
    if spec.symbol_column is not None:
        columns[spec.symbol_column] = pa.Column(str, nullable=False)
    for column in spec.columns:
        columns[column] = pa.Column(
            float, pa.Check(np.isfinite, error="finite or NULL"), nullable=True, coerce=True
        )
    keys = [spec.timestamp_column]
    if spec.symbol_column is not None:
        keys.insert(0, spec.symbol_column)
    return pa.DataFrameSchema(columns, unique=keys, strict=False, name=spec.table)


def asof_join(
    obs_time: np.ndarray,
    obs_group: np.ndarray,
    obs_value: np.ndarray,
    dates: np.ndarray,
    n_groups: int,
    ffill_limit: int | None = None,
) -> np.ndarray:
    """Vectorised as-of backward join of observations onto a calendar, per group.

    Args:
        obs_time: (N,) datetime64[ns] available times; unique within a group.
        obs_group: (N,) int group (symbol) index in ``[0, n_groups)``.
        obs_value: (N,) float values.
        dates: (T,) datetime64[ns] strictly increasing bar times.
        n_groups: number of groups G.
        ffill_limit: max bars since the observation's first bar at or after its time.

    Returns:
        (T, G) float64: value of the latest observation with time <= dates[t], else NaN.
    """
    n_bars = len(dates)
    out = np.full((n_bars, n_groups), np.nan)
    if len(obs_time) == 0 or n_bars == 0:
        return out
    order = np.lexsort((obs_time, obs_group))  # by group, then time
    time, group, value = obs_time[order], obs_group[order], obs_value[order]
    # Rank every time on one axis so that (group, time) becomes one sortable int64 key.
    axis = np.unique(np.concatenate([time, dates]))
    width = len(axis)
    obs_key = group.astype(np.int64) * width + np.searchsorted(axis, time)
    bar_rank = np.searchsorted(axis, dates)  # (T,)
    query = np.arange(n_groups, dtype=np.int64)[None, :] * width + bar_rank[:, None]  # (T, G)
    pos = np.searchsorted(obs_key, query, side="right") - 1  # (T, G)
    safe = np.maximum(pos, 0)
    hit = (pos >= 0) & (group[safe] == np.arange(n_groups)[None, :])
    out[hit] = value[safe[hit]]
    if ffill_limit is not None:
        first_bar = np.searchsorted(dates, time, side="left")  # (N,) bar where it first shows
        age = np.arange(n_bars)[:, None] - first_bar[safe]  # (T, G)
        out[hit & (age > ffill_limit)] = np.nan
    return out


def _schema_problems(table: str, err: SchemaErrors) -> list[str]:
    """Format pandera failure cases as `table.column: check ... e.g. row i: value` lines."""
    cases = err.failure_cases.copy()
    cases["column"] = cases["column"].fillna("<table>")
    lines = []
    for (column, check), group in cases.groupby(["column", "check"], sort=False, dropna=False):
        head = group.head(MAX_EXAMPLES)
        examples = "; ".join(
            f"row {i}: {v!r}" for i, v in zip(head["index"], head["failure_case"], strict=True)
        )
        lines.append(
            f"  {table}.{column}: check '{check}' failed on {len(group)} value(s); e.g. {examples}"
        )
    return lines


def _read_table(
    con: SQLiteReader, spec: AlternativeDataSpec, where: str, path: str
) -> pd.DataFrame:
    """Check names against the database, then read and validate the spec's columns."""
    tables = sorted(con.table_names())
    if spec.table not in tables:
        raise DataError(
            f"{where}.table: no table {spec.table!r} in {path}; tables: {', '.join(tables)}"
        )
    present = con.table_columns(spec.table)
    wanted = [spec.timestamp_column, *filter(None, [spec.symbol_column]), *spec.columns]
    missing = [c for c in wanted if c not in present]
    if missing:
        raise DataError(
            f"{where}: table {spec.table} in {path} has no column(s) "
            f"{', '.join(map(repr, missing))}; columns: {', '.join(present)}"
        )
    frame = con.read_table(spec.table, wanted)  # identifiers allow-listed again, then quoted
    try:
        return alt_schema(spec).validate(frame, lazy=True)
    except SchemaErrors as err:
        raise DataError(
            f"{where}: table {spec.table} in {path} failed validation:\n"
            + "\n".join(_schema_problems(spec.table, err))
        ) from None


def load_alternative(
    path: str | os.PathLike,
    specs: Sequence[AlternativeDataSpec],
    dates: np.ndarray,
    symbols: Sequence[str],
) -> dict[str, np.ndarray]:
    """Join side tables point in time onto a panel calendar (see the module docstring).

    Args:
        path: SQLite database.
        specs: side tables to join.
        dates: (T,) bar times, datetime64 UTC-naive, strictly increasing (``Panel.dates``).
        symbols: (S,) panel symbols (``Panel.symbols``).

    Returns:
        feature name -> (T, S) float64; the value at bar t is the latest value with
        ``ts + publication_lag <= dates[t]``, NaN if none or older than ``ffill_limit`` bars.

    Raises:
        DataError: missing file, table or column (listing what exists), failed validation.
        ConfigError: two specs produce the same feature name.
    """
    specs = list(specs)
    _check_unique_names(specs)
    dates = np.asarray(dates, dtype="datetime64[ns]")
    if dates.ndim != 1 or np.any(np.diff(dates) <= np.timedelta64(0)):
        raise ValueError("dates must be a strictly increasing (T,) datetime64 array")
    symbols = list(symbols)
    out: dict[str, np.ndarray] = {}
    if not specs:
        return out
    con = SQLiteReader(path)  # read-only; DataError if missing or not SQLite
    try:
        for i, spec in enumerate(specs):
            where = f"{CONFIG_KEY}[{i}]"
            frame = _read_table(con, spec, where, os.fspath(path))
            time = pd.to_datetime(frame[spec.timestamp_column], format="ISO8601", utc=True)
            avail = (time.dt.tz_localize(None) + spec.lag).to_numpy(dtype="datetime64[ns]")
            if spec.symbol_column is None:
                group, n_groups = np.zeros(len(frame), dtype=np.int64), 1
            else:
                group = pd.Index(symbols).get_indexer(frame[spec.symbol_column])
                n_groups = len(symbols)
            keep = group >= 0  # table symbols outside the panel are ignored
            dup = pd.DataFrame({"g": group[keep], "t": avail[keep]}).duplicated(keep=False)
            if dup.any():
                rows = frame.loc[keep].loc[dup.to_numpy()].head(MAX_EXAMPLES)
                raise DataError(
                    f"{where}: table {spec.table} has several rows for the same "
                    f"{'(symbol, timestamp)' if spec.symbol_column else 'timestamp'} after "
                    f"conversion to UTC; e.g. {rows.to_dict('records')}"
                )
            for column, name in zip(spec.columns, spec.names, strict=True):
                values = frame[column].to_numpy(dtype=float)
                ok = keep & ~np.isnan(values)
                joined = asof_join(
                    avail[ok], group[ok], values[ok], dates, n_groups, spec.ffill_limit
                )
                if spec.symbol_column is None:
                    joined = np.repeat(joined, len(symbols), axis=1)
                out[name] = joined
    finally:
        con.close()
    return out
