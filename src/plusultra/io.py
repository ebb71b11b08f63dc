"""Atomic, durable file writes: a temporary file in the target's directory, fsynced, renamed
over the target, then the directory fsynced.

A reader never sees a half-written file; after a crash or power loss the target holds either
its old or its new content, never a torn or empty file; a killed process leaves at most a
`.tmp` file that no glob of results picks up. Temporary names carry the process id and a
random suffix, so concurrent writers never share one.
"""

from __future__ import annotations

import json
import math
import os
import secrets
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import pandas as pd


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(3)}.tmp")


def fsync_dir(directory: str | os.PathLike) -> None:
    """Make a rename or creation in `directory` durable (a no-op where directories cannot be
    opened, e.g. on Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _commit(tmp: Path, path: Path) -> None:
    """fsync `tmp`, rename it over `path`, fsync the directory."""
    _fsync_file(tmp)
    os.replace(tmp, path)
    fsync_dir(path.parent)


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
        _commit(tmp, path)
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
        _commit(tmp, path)
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
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
