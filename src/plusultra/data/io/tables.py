"""The SQLite contract's tables, read as they are (no alignment, no adjustment).

Shared by loading (`data.datasets.panel`) and validation (`data.validation`), so that neither
needs the other's internals.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import pandas as pd

from plusultra.data.io.reader import SQLiteReader
from plusultra.errors import DataError

REQUIRED_TABLES = ("assets", "series")
OPTIONAL_TABLES = ("indicators", "corporate_actions")


def connect(path: str | os.PathLike) -> SQLiteReader:
    # Read-only; DataError "database file not found" / "not a readable SQLite database".
    return SQLiteReader(path)


def table_names(con: SQLiteReader) -> set[str]:
    return con.table_names()


def read_table(con: SQLiteReader, table: str, where: str = "", params: tuple = ()) -> pd.DataFrame:
    # Table and column names are checked against the database's catalogue and quoted; `where`
    # is built below from fixed column names; every value is a bound parameter.
    return con.read_table(table, where=where, params=params)


def read_tables(
    path: str | os.PathLike,
    symbols: list[str] | None = None,
    start: str | None = None,
    end: str | None = None,
) -> dict[str, pd.DataFrame]:
    """Read the contract's tables, restricted to `symbols` and the [start, end] date range.

    Tables are read concurrently, one read-only connection per table (the Arrow driver
    releases the GIL while it reads), so `series` and `indicators` overlap on two cores.
    """
    con = connect(path)
    try:
        present = table_names(con)
    finally:
        con.close()
    missing = [t for t in REQUIRED_TABLES if t not in present]
    if missing:
        raise DataError(
            f"database {path} lacks required table(s) {', '.join(missing)}; the contract "
            f"needs {', '.join(REQUIRED_TABLES)} (optional: {', '.join(OPTIONAL_TABLES)}); "
            "see docs/sqlite_schema.md"
        )
    clauses, params = [], []
    if symbols:
        clauses.append(f"symbol IN ({','.join('?' * len(symbols))})")
        params.extend(symbols)
    queries: dict[str, tuple[str, tuple]] = {}
    for table, time_col in (
        ("assets", None),
        ("series", "timestamp"),
        ("indicators", "timestamp"),
        ("corporate_actions", "ex_date"),
    ):
        if table not in present:
            continue
        cl, pr = list(clauses), list(params)
        if time_col and start:
            cl.append(f"{time_col} >= ?")
            pr.append(str(start))
        if time_col and end:
            cl.append(f"substr({time_col}, 1, 10) <= ?")
            pr.append(str(end))
        queries[table] = (f"WHERE {' AND '.join(cl)}" if cl else "", tuple(pr))

    def read(table: str) -> pd.DataFrame:
        reader = connect(path)
        try:
            return read_table(reader, table, *queries[table])
        except DataError as exc:
            raise DataError(f"cannot read table {table} from {path}: {exc}") from exc
        finally:
            reader.close()

    workers = max(1, min(len(queries), os.cpu_count() or 1))
    with ThreadPoolExecutor(workers, thread_name_prefix="read_tables") as pool:
        futures = {table: pool.submit(read, table) for table in queries}
        return {table: future.result() for table, future in futures.items()}
