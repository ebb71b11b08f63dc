"""Compaction: merge a catalogue's one-row files into one parquet file.

Every job writes its row as ``<run_id>.parquet`` (``rows.write_row``), so a job never waits for
another. Reading many small files is what makes a large catalogue slow: DuckDB opens every
file and reconciles its schema (``union_by_name``), about 15 s for 10,000 rows against 0.03 s
for the same rows in one file (docs/benchmarks.md). ``compact`` rewrites the files into one
``_compacted-<UTC time>-<hex>.parquet`` and then deletes them:

1. an exclusive, non-blocking lock on ``.compact.lock`` (a second compaction skips instead of
   waiting; readers and writers never take it);
2. the rows of every ``*.parquet`` file listed when the lock was taken (earlier compacted files
   included), one row per run id, written to a hidden temporary file, fsynced and renamed;
3. the input files deleted.

Between 2 and 3 a run's row is in two files; readers keep one row per ``run_id`` (``DEDUPE``),
so they never see a duplicate. A file written during a compaction is not among its inputs and
is kept for the next one. A killed compaction leaves either its temporary file (ignored by
the ``*.parquet`` glob, removed by the next compaction) or duplicates that readers drop.

Compaction runs by itself when a job ends with at least ``AUTO_COMPACT_FILES`` files in the
catalogue, and on demand with ``plusultra-catalogue --compact``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import pathlib
import secrets
from collections.abc import Iterator
from datetime import UTC, datetime

import duckdb

from plusultra.io import fsync_dir

log = logging.getLogger(__name__)

LOCK_FILE = ".compact.lock"
PREFIX = "_compacted-"
AUTO_COMPACT_FILES = 256  # a job that ends with this many row files compacts the catalogue
# One row per run id; a run recorded twice (a compacted copy and its original file) keeps the
# row that finished last. Applied by readers over ``read_parquet(..., filename = true)``.
DEDUPE = "QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY finished_at DESC NULLS LAST) = 1"


def row_files(catalogue_dir: pathlib.Path) -> list[pathlib.Path]:
    """The ``*.parquet`` files of the catalogue (one-row and compacted), sorted by name."""
    with os.scandir(catalogue_dir) as entries:
        found = [
            pathlib.Path(e.path)
            for e in entries
            if e.name.endswith(".parquet") and not e.name.startswith(".") and e.is_file()
        ]  # as the glob ``*.parquet`` lists them: hidden files are not rows
    return sorted(found)


def count_row_files(catalogue_dir: pathlib.Path) -> int:
    """How many ``*.parquet`` files the catalogue holds (cheap: one directory scan)."""
    try:
        return len(row_files(catalogue_dir))
    except FileNotFoundError:
        return 0


@contextlib.contextmanager
def _exclusive(catalogue_dir: pathlib.Path) -> Iterator[bool]:
    """Holds the compaction lock if it is free; yields whether it was taken."""
    fd = os.open(catalogue_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def compact(catalogue_dir: str | os.PathLike, min_files: int = 2) -> pathlib.Path | None:
    """Merges the catalogue's parquet files into one (see the module docstring).

    Args:
        catalogue_dir: The catalogue directory.
        min_files: Do nothing when fewer files than this are there.

    Returns:
        The compacted file, or None when there was nothing to do or another process was
        compacting.

    Raises:
        FileNotFoundError: If the directory does not exist.
        duckdb.Error: If a file cannot be read; nothing is deleted then.
    """
    directory = pathlib.Path(catalogue_dir).expanduser().resolve()
    if not directory.is_dir():
        raise FileNotFoundError(f"catalogue directory {directory} does not exist")
    with _exclusive(directory) as locked:
        if not locked:
            log.info("catalogue: %s is being compacted by another process; skipped", directory)
            return None
        for stale in directory.glob(f".{PREFIX}*.tmp"):  # left by a killed compaction
            stale.unlink(missing_ok=True)
        inputs = row_files(directory)
        if len(inputs) < max(min_files, 1):
            return None
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        final = directory / f"{PREFIX}{stamp}-{secrets.token_hex(3)}.parquet"
        tmp = directory / f".{final.name}.tmp"
        source = "[" + ", ".join(_sql_str(str(f)) for f in inputs) + "]"
        con = duckdb.connect(":memory:")
        try:
            con.execute(
                f"COPY (SELECT * FROM read_parquet({source}, union_by_name = true) {DEDUPE} "
                f"ORDER BY started_at, run_id) TO {_sql_str(str(tmp))} (FORMAT parquet)"
            )
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
            os.replace(tmp, final)
            fsync_dir(directory)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        finally:
            con.close()
        for path in inputs:
            path.unlink(missing_ok=True)
        fsync_dir(directory)
        log.info("catalogue: compacted %d files into %s", len(inputs), final.name)
        return final


def maybe_compact(catalogue_dir: str | os.PathLike) -> pathlib.Path | None:
    """``compact`` when the catalogue holds at least ``AUTO_COMPACT_FILES`` files; never raises
    (a failed compaction leaves the files as they were and logs a warning)."""
    directory = pathlib.Path(catalogue_dir)
    if count_row_files(directory) < AUTO_COMPACT_FILES:
        return None
    try:
        return compact(directory)
    except Exception as exc:  # noqa: BLE001 - the rows are safe where they are
        log.warning("catalogue: compaction skipped: %s: %s", type(exc).__name__, exc)
        return None
