"""Fast columnar reads of a SQLite database through the Arrow ADBC SQLite driver.

``pandas.read_sql`` builds one Python object per value (~7 s for 2.5M series rows); the ADBC
driver fills Arrow buffers in C, and numeric columns reach numpy without a Python object on
the way (see ``docs/benchmarks.md``, section ``sqlite_reader``). Every connection is opened
read-only (URI ``mode=ro``), values are always bound parameters, and table / column names
are checked against the database's own catalogue before they are quoted into SQL.

Typing. SQLite columns are dynamically typed and the driver infers each result column's Arrow
type from the rows of its first batch (it ignores declared types). Two failure modes follow:

* a column whose first batch holds only integers (``volume`` 100 in a NUMERIC/INTEGER or
  untyped column) or only NULLs is typed int64, and the first float or text value of a later
  batch makes the driver raise ``Type mismatch in column N``;
* a column whose first batch holds no value at all stays int64 (all null).

We do not ``CAST(col AS REAL)`` in the SELECT: SQLite casts non-numeric text to 0.0, which would
turn bad data into plausible prices silently, and a cast does not help NULL-first columns. The
reader instead reads with batches of `BATCH_ROWS` rows; on a type mismatch it counts the rows
and reads again with the whole result as one batch, so every column is typed from every value
(int64 and float64 widen to float64, numbers and text widen to text). All-NULL columns become
Arrow ``null``. :func:`read_frame` then gives float64 for numeric columns and, for text, the dtype
``pandas.read_sql`` gives (object with None for NULL; pandas 3: ``str`` with NaN).

Two corners stay lossy in the driver: in a column holding both numbers and text, the numbers
it meets while inferring are rendered as text with ``%e`` (7 significant digits); a column
holding a BLOB renders every value as bytes. :meth:`SQLiteReader.read_table` knows each
column's declared affinity, spots numbers rendered as text in a column that is not TEXT (or any
bytes), and reads that query again through the Python ``sqlite3`` row API (the reference path,
exact, slow), giving the same mixed object column as ``pandas.read_sql``. Only such (invalid)
data pays for it; :func:`read_sql` / :func:`read_frame` return what the driver gives.
"""

from __future__ import annotations

import os
import sqlite3
import urllib.parse
from collections.abc import Iterable, Sequence

import adbc_driver_manager
import adbc_driver_sqlite
import adbc_driver_sqlite.dbapi
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from plusultra.errors import DataError

__all__ = [
    "BATCH_ROWS",
    "SQLiteReader",
    "affinity",
    "quote_identifier",
    "read_frame",
    "read_sql",
    "read_table",
    "read_table_reference",
    "table_columns",
    "table_names",
]

BATCH_ROWS = 65536  # rows per Arrow batch; the first batch is what the driver infers types from
_BATCH_OPTION = adbc_driver_sqlite.StatementOptions.BATCH_ROWS.value
_MISMATCH = "Type mismatch"  # the driver's message when a later batch breaks the inferred type
# How the driver and SQLite render a number as text: "%lld", "%e" and "%!.15g", inf and nan.
_NUMBER_AS_TEXT = r"^[-+]?(\d+(\.\d*)?([eE][-+]?\d+)?|\.\d+([eE][-+]?\d+)?|[Ii]nf|-?nan)$"


def affinity(declared: str | None) -> str:
    """SQLite's column affinity of a declared type (INTEGER, TEXT, BLOB, REAL or NUMERIC).

    The rules of https://sqlite.org/datatype3.html section 3.1, applied in order.
    """
    kind = (declared or "").upper()
    if "INT" in kind:
        return "INTEGER"
    if any(s in kind for s in ("CHAR", "CLOB", "TEXT")):
        return "TEXT"
    if "BLOB" in kind or not kind:
        return "BLOB"
    if any(s in kind for s in ("REAL", "FLOA", "DOUB")):
        return "REAL"
    return "NUMERIC"


def quote_identifier(name: str, allowed: Iterable[str], what: str) -> str:
    """Quote `name` for SQL after checking that it is one of `allowed`.

    Args:
        name: table or column name, e.g. from a config file or the command line.
        allowed: the names that exist (from :func:`table_names` / :func:`table_columns`).
        what: what the name is, for the error ("table", "column of table series").

    Returns:
        The name in double quotes (inner quotes doubled), safe to put into SQL.

    Raises:
        DataError: `name` is not in `allowed`; the message lists the allowed names.
    """
    names = set(allowed)
    if not isinstance(name, str) or name not in names:
        listing = ", ".join(sorted(names)) or "(none)"
        raise DataError(f"unknown {what} {name!r}; expected one of: {listing}")
    return '"' + name.replace('"', '""') + '"'


def _uri(path: str | os.PathLike) -> str:
    """Read-only SQLite URI of `path`; '?', '#', '%' and spaces in the path are escaped."""
    return "file:" + urllib.parse.quote(os.path.abspath(os.fspath(path))) + "?mode=ro"


def _null_to_type(table: pa.Table) -> pa.Table:
    """Columns with no non-NULL value (typed int64 by the driver) become Arrow ``null``."""
    for i, column in enumerate(table.columns):
        if column.type != pa.null() and column.null_count == len(column):
            table = table.set_column(i, table.field(i).name, pa.nulls(len(column)))
    return table


def _to_frame(table: pa.Table, numeric: Iterable[str] = ()) -> pd.DataFrame:
    """Arrow -> pandas: numbers float64, text as pandas.read_sql gives it (object; pandas 3: str);
    all-NULL columns float64 if in `numeric`, else object."""
    numeric = set(numeric)
    arrays = []
    for field, column in zip(table.schema, table.columns, strict=True):
        kind = field.type
        if pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind):
            arrays.append(column.cast(pa.float64()).to_numpy())
        elif pa.types.is_null(kind):
            empty = field.name in numeric
            arrays.append(
                np.full(len(column), np.nan if empty else None, float if empty else object)
            )
        else:
            arrays.append(column.to_pandas().to_numpy(dtype=object))
    frame = pd.DataFrame(dict(enumerate(arrays)), index=pd.RangeIndex(table.num_rows))
    frame.columns = list(table.column_names)  # by position: keeps duplicates of `SELECT a, a`
    return frame


class SQLiteReader:
    """A read-only connection to one SQLite file that returns Arrow tables and DataFrames.

    Use as a context manager, or call :meth:`close`. The module functions (:func:`read_sql`,
    :func:`read_frame`, ...) open one per call.

    Raises:
        DataError: ``database file not found`` or ``not a readable SQLite database``.
    """

    def __init__(self, path: str | os.PathLike, batch_rows: int = BATCH_ROWS) -> None:
        self.path = os.fspath(path)
        self.batch_rows = int(batch_rows)
        if not os.path.isfile(self.path):
            raise DataError(
                f"database file not found: {self.path} (set data.path to an existing file)"
            )
        self._con = None
        try:
            self._con = adbc_driver_sqlite.dbapi.connect(_uri(self.path), autocommit=True)
            self._execute("SELECT name FROM sqlite_master LIMIT 1", (), 1)
        except (adbc_driver_manager.Error, OSError) as exc:
            self.close()
            raise DataError(f"{self.path} is not a readable SQLite database: {exc}") from exc
        self._columns: dict[str, dict[str, str]] = {}

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def __enter__(self) -> SQLiteReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, sql: str, params: Sequence, batch_rows: int) -> pa.Table:
        cursor = self._con.cursor()
        try:
            cursor.adbc_statement.set_options(**{_BATCH_OPTION: str(batch_rows)})
            cursor.execute(sql, list(params) if len(params) else None)
            return cursor.fetch_arrow_table()
        finally:
            cursor.close()

    def arrow(self, sql: str, params: Sequence = ()) -> pa.Table:
        """Run one SELECT with bound `params` (``?`` placeholders) and return an Arrow table.

        Column types come from the values (see the module docstring): int64, float64 or
        string; a column with no value is Arrow ``null``.

        Raises:
            DataError: the query fails (the message quotes the database and the error).
        """
        try:
            try:
                table = self._execute(sql, params, self.batch_rows)
            except OSError as exc:
                if _MISMATCH not in str(exc):
                    raise
                # A later batch broke the type inferred from the first: read again with the
                # whole result as one batch, so that every value takes part in the inference.
                count = self._execute(
                    f"SELECT count(*) FROM ({sql.strip().rstrip(';')}\n)", params, 1
                )
                table = self._execute(sql, params, max(int(count.column(0)[0].as_py()), 1))
        except (adbc_driver_manager.Error, OSError) as exc:
            raise DataError(f"query on {self.path} failed: {exc}") from exc
        return _null_to_type(table)

    def frame(self, sql: str, params: Sequence = (), numeric: Iterable[str] = ()) -> pd.DataFrame:
        """Like :meth:`arrow`, as a DataFrame: numeric columns float64 (NULL -> NaN), text
        columns as pandas.read_sql types them (object, NULL -> None; pandas 3: str, NULL -> NaN);
        an all-NULL column is float64 if named in `numeric`,
        object otherwise."""
        return _to_frame(self.arrow(sql, params), numeric)

    def table_names(self) -> set[str]:
        """Names of the tables (not views) in the database."""
        table = self.arrow("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {str(name) for name in table.column(0).to_pylist()}

    def column_types(self, table: str) -> dict[str, str]:
        """Column name -> declared type ('' when none) of `table`, in table order.

        Raises:
            DataError: `table` is not a table of the database.
        """
        if table not in self._columns:
            quote_identifier(table, self.table_names(), f"table of {self.path}")
            info = self.arrow("SELECT name, type FROM pragma_table_info(?)", (table,))
            names, types = info.column(0).to_pylist(), info.column(1).to_pylist()
            self._columns[table] = {n: t or "" for n, t in zip(names, types, strict=True)}
        return dict(self._columns[table])

    def table_columns(self, table: str) -> list[str]:
        """Column names of `table` in table order (DataError if it is not a table)."""
        return list(self.column_types(table))

    def _select(self, table: str, columns: Sequence[str] | None, where: str) -> tuple[str, dict]:
        types = self.column_types(table)
        columns = list(types) if columns is None else list(columns)
        what = f"column of table {table} in {self.path}"
        quoted = [quote_identifier(c, types, what) for c in columns]
        sql = f"SELECT {', '.join(quoted)} FROM {quote_identifier(table, [table], 'table')}"
        return f"{sql} {where}".strip(), {c: affinity(types[c]) for c in columns}

    def read_table(
        self,
        table: str,
        columns: Sequence[str] | None = None,
        where: str = "",
        params: Sequence = (),
    ) -> pd.DataFrame:
        """Read `columns` (default all) of `table` as a DataFrame.

        Args:
            table: checked against the database's tables, then quoted.
            columns: checked against the table's columns, then quoted.
            where: a trusted ``WHERE ...`` clause with ``?`` placeholders, built from fixed
                column names (never from user text); every value goes into `params`.
            params: values bound to the placeholders of `where`.

        Returns:
            One column per name: float64 for INTEGER/REAL columns (and any numeric values),
            text as ``pandas.read_sql`` types it (object; pandas 3: str); columns of text and
            numbers mixed come back as object with exact floats and strings, as
            ``pandas.read_sql`` gives them.

        Raises:
            DataError: unknown table or column (listing the valid ones), failing query.
        """
        sql, affinities = self._select(table, columns, where)
        numeric = [c for c, a in affinities.items() if a in ("INTEGER", "REAL")]
        result = self.arrow(sql, params)
        for name, column in zip(result.column_names, result.columns, strict=True):
            if pa.types.is_binary(column.type):  # a BLOB: the driver renders all as bytes
                return read_table_reference(self.path, table, columns, where, params)
            if affinities[name] == "TEXT" or not pa.types.is_string(column.type):
                continue
            if pc.any(pc.match_substring_regex(column, _NUMBER_AS_TEXT)).as_py():
                return read_table_reference(self.path, table, columns, where, params)
        return _to_frame(result, numeric)


def read_sql(path: str | os.PathLike, sql: str, params: Sequence = ()) -> pa.Table:
    """Run one SELECT on a read-only connection with bound `params`; see SQLiteReader.arrow."""
    with SQLiteReader(path) as reader:
        return reader.arrow(sql, params)


def read_frame(
    path: str | os.PathLike, sql: str, params: Sequence = (), numeric: Iterable[str] = ()
) -> pd.DataFrame:
    """:func:`read_sql` as a DataFrame: numbers float64, text as pandas types it (see
    SQLiteReader.frame)."""
    with SQLiteReader(path) as reader:
        return reader.frame(sql, params, numeric)


def read_table(
    path: str | os.PathLike,
    table: str,
    columns: Sequence[str] | None = None,
    where: str = "",
    params: Sequence = (),
) -> pd.DataFrame:
    """Read a table with allow-listed identifiers; see :meth:`SQLiteReader.read_table`."""
    with SQLiteReader(path) as reader:
        return reader.read_table(table, columns, where, params)


def table_names(path: str | os.PathLike) -> set[str]:
    """Names of the tables in the database at `path`."""
    with SQLiteReader(path) as reader:
        return reader.table_names()


def table_columns(path: str | os.PathLike, table: str) -> list[str]:
    """Column names of `table` (DataError naming the tables if there is no such table)."""
    with SQLiteReader(path) as reader:
        return reader.table_columns(table)


def read_table_reference(
    path: str | os.PathLike,
    table: str,
    columns: Sequence[str] | None = None,
    where: str = "",
    params: Sequence = (),
) -> pd.DataFrame:
    """The slow, obviously-correct reader: Python ``sqlite3`` rows, one object per value.

    Same identifiers checks and dtypes as :meth:`SQLiteReader.read_table` (float64 for
    numbers, object for text, object for mixed columns); used where a column mixes numbers
    and text, and by the tests as the reference the fast reader must match.
    """
    with SQLiteReader(path) as reader:
        sql, affinities = reader._select(table, columns, where)
    try:
        con = sqlite3.connect(_uri(path), uri=True)
        try:
            cursor = con.execute(sql, tuple(params))
            names = [d[0] for d in cursor.description]
            rows = cursor.fetchall()
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise DataError(f"query on {path} failed: {exc}") from exc
    data = {}  # by position, like _to_frame
    for i, name in enumerate(names):
        values = [row[i] for row in rows]
        kinds = {type(v) for v in values if v is not None}
        if kinds and kinds <= {int, float}:
            data[i] = np.array([np.nan if v is None else v for v in values], dtype=float)
        elif not kinds and affinities[name] in ("INTEGER", "REAL"):
            data[i] = np.full(len(values), np.nan)
        else:
            data[i] = np.empty(len(values), dtype=object)
            data[i][:] = values
    frame = pd.DataFrame(data, index=pd.RangeIndex(len(rows)))
    frame.columns = names
    return frame
