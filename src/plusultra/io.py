"""Atomic file writes: a temporary file in the target's directory, then a rename.

A reader never sees a half-written file, and a killed process leaves at most a `.tmp` file
that no glob of results picks up.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pandas as pd


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def _finite(v: object) -> object:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_finite(x) for x in v]
    return v


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    """Write bytes atomically; returns the final path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write UTF-8 text atomically; returns the final path."""
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: str | os.PathLike, obj: object) -> Path:
    """Write JSON atomically; NaN and infinities become null."""
    return write_text_atomic(path, json.dumps(_finite(obj), indent=2) + "\n")


def write_parquet_atomic(path: str | os.PathLike, frame: pd.DataFrame, index: bool = False) -> Path:
    """Write a DataFrame as parquet atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    try:
        frame.to_parquet(tmp, index=index)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def insert_rows(con: sqlite3.Connection, table: str, n_columns: int, rows: Iterable[tuple]) -> None:
    """executemany INSERT of `rows` into `table` (a fixed name chosen by our code, not input)."""
    con.executemany(f'INSERT INTO "{table}" VALUES ({", ".join("?" * n_columns)})', rows)


def write_sqlite_atomic(
    path: str | os.PathLike, schema: str, tables: Iterable[tuple[str, int, Iterable[tuple]]]
) -> Path:
    """Create a SQLite database from `schema` (statements separated by ';') and rows.

    Everything is written to a temporary file beside `path` in one transaction, synced, then
    renamed over `path`; on any error the temporary file is removed and `path` is untouched.

    Args:
        path: database to (over)write.
        schema: CREATE statements.
        tables: (table, number of columns, rows) triples, inserted in order.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp(path)
    tmp.unlink(missing_ok=True)
    try:
        con = sqlite3.connect(tmp, isolation_level=None)
        try:
            con.execute("PRAGMA journal_mode=OFF")  # the temporary file is the rollback
            con.execute("PRAGMA synchronous=OFF")
            con.execute("BEGIN")
            for statement in filter(str.strip, schema.split(";")):
                con.execute(statement)
            for table, n_columns, rows in tables:
                insert_rows(con, table, n_columns, rows)
            con.execute("COMMIT")
        finally:
            con.close()
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
