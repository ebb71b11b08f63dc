"""Query the run catalogue with DuckDB.

``connect`` opens an in-memory DuckDB connection with a view ``runs`` over every
``<catalogue_dir>/*.parquet`` file (one-row files and compacted ones, see
``plusultra.catalogue.compact``; one row per ``run_id``), read with ``union_by_name=true`` so
rows with different column sets line up (a column absent from a run is NULL there; a column
that is an int in one run and a float in another is DOUBLE). Timestamps are shown in UTC.
When the directory holds no parquet file yet, ``runs`` still exists with the core columns and
no rows. The trial columns (``trials.TRIAL_COLUMNS``: ``optuna.study``, ``optuna.trial``,
``optuna.params``, ``objective``, ``objectives``) always exist, NULL where no row has them.

Column names with dots or slashes must be double-quoted in SQL::

    SELECT run_id, backbone, "backbone.depth", "trainer.max_epochs", test_sharpe
    FROM runs WHERE status = 'completed' ORDER BY test_sharpe DESC

The connection also holds a table ``sweeps``: one row per trial of every study (the completed
multirun runs sharing the ``study`` column, across every invocation) with the trial chosen by
the study's validation objective (``is_best``) and every trial's deflated Sharpe ratio, computed
by ``plusultra.catalogue.sweeps.sweep_table`` when ``connect`` is called (a snapshot: runs
recorded later need a fresh connection). Columns: see ``SWEEP_COLUMNS`` (``study``,
``sweep_dir``, ``run_id``, ``run_dir``, ``job_num``, ``trial``, ``params``, ``n_trials``,
``n_sweeps``, ``selected_by``, ``direction``, ``objective``, ``objectives``, ``is_best`` (for a
multi-objective study: on its validation Pareto front), ``test_sharpe``,
``sharpe_variance``, ``expected_max_sharpe``, ``deflated_sharpe``, ...); it is empty, with these
columns, when no study has a completed trial with a test Sharpe::

    SELECT study, n_trials, selected_by, objective, test_sharpe, deflated_sharpe
    FROM sweeps WHERE is_best ORDER BY deflated_sharpe DESC

Saved queries are ``experiments/queries/NAME.sql`` of the source checkout (``QUERIES_DIR``),
listed by ``saved_queries`` and read by ``saved_query`` (``plusultra-catalogue --query NAME``).
"""

from __future__ import annotations

import contextlib
import os
import pathlib

import duckdb
import pandas as pd
import pyarrow as pa

from plusultra.catalogue.compact import DEDUPE, row_files
from plusultra.catalogue.rows import CORE_COLUMNS
from plusultra.catalogue.sweeps import (
    INPUT_COLUMNS,
    SWEEP_COLUMNS,
    objective_columns,
    sweep_table,
)
from plusultra.catalogue.trials import TRIAL_COLUMNS
from plusultra.errors import PlusUltraError, did_you_mean

VIEW = "runs"
SWEEPS = "sweeps"
# Saved queries live in the source checkout (the documented way to use the project), next to
# conf/ as run.CONF_DIR does: <repo>/experiments/queries/NAME.sql.
QUERIES_DIR = pathlib.Path(__file__).resolve().parents[3] / "experiments" / "queries"
_GLOB_CHARS = set("*?[]{}")


class CatalogueError(PlusUltraError):
    """The catalogue directory is missing or empty, or a query on it failed."""


def _duckdb_type(typ: pa.DataType) -> str:
    if pa.types.is_timestamp(typ):
        return "TIMESTAMPTZ"
    if pa.types.is_floating(typ):
        return "DOUBLE"
    if pa.types.is_integer(typ):
        return "BIGINT"
    if pa.types.is_boolean(typ):
        return "BOOLEAN"
    return "VARCHAR"


def _sql_str(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def catalogue_files(catalogue_dir: str | os.PathLike) -> list[pathlib.Path]:
    """Lists the run files of a catalogue.

    Args:
        catalogue_dir: The catalogue directory.

    Returns:
        The ``*.parquet`` files in it, sorted by name (which sorts by start time).

    Raises:
        CatalogueError: If the directory does not exist.
    """
    directory = pathlib.Path(catalogue_dir).expanduser()
    if not directory.is_dir():
        raise CatalogueError(
            f"catalogue directory {directory} does not exist; runs are recorded there when a "
            "`plusultra` job ends (pass --catalogue DIR or set PLUSULTRA_OUTPUT_DIR to look "
            "elsewhere)"
        )
    return row_files(directory)  # the files compaction merges, listed the same way


def _create_sweeps(con: duckdb.DuckDBPyConnection) -> None:
    """Creates the table ``sweeps`` from the view ``runs`` (see the module docstring)."""
    present = {row[0] for row in con.execute(f"DESCRIBE {VIEW}").fetchall()}
    where = "WHERE multirun AND status = 'completed'"
    wanted = list(INPUT_COLUMNS)
    if "optimized_metric" in present:  # the objective columns the trials name
        named = con.sql(f"SELECT DISTINCT optimized_metric FROM {VIEW} {where}").fetchall()
        wanted += objective_columns(pd.DataFrame({"optimized_metric": [r[0] for r in named]}))
    else:
        wanted += objective_columns(pd.DataFrame())
    columns = ", ".join(_ident(name) for name in dict.fromkeys(wanted) if name in present)
    runs = con.sql(f"SELECT {columns} FROM {VIEW} {where}").df()
    trials = sweep_table(runs)
    casts = ", ".join(f"CAST({_ident(n)} AS {t}) AS {_ident(n)}" for n, t in SWEEP_COLUMNS.items())
    con.register("_plusultra_sweeps", trials)
    try:
        con.execute(f"CREATE TABLE {SWEEPS} AS SELECT {casts} FROM _plusultra_sweeps")
    finally:
        con.unregister("_plusultra_sweeps")


def _nulls(columns: dict[str, str], lead: str = "") -> str:
    """``CAST(NULL AS type) AS "name"`` for each column, comma-joined (after ``lead``)."""
    if not columns:
        return ""
    return lead + ", ".join(f"CAST(NULL AS {t}) AS {_ident(n)}" for n, t in columns.items())


def connect(catalogue_dir: str | os.PathLike) -> duckdb.DuckDBPyConnection:
    """Opens an in-memory DuckDB connection with the view ``runs`` and the table ``sweeps``.

    The view reads the files at query time, so runs recorded later show up; a run that adds
    new columns may need a fresh connection. ``sweeps`` is computed once, here.

    Args:
        catalogue_dir: The catalogue directory.

    Returns:
        The connection; close it when done.

    Raises:
        CatalogueError: If the directory does not exist.
    """
    directory = pathlib.Path(catalogue_dir).expanduser().resolve()
    files = catalogue_files(directory)
    con = duckdb.connect(":memory:")
    try:
        # Builds without ICU have no time zones; UTC is their only behaviour anyway.
        with contextlib.suppress(duckdb.Error):
            con.execute("SET TimeZone = 'UTC'")
        if files:
            if _GLOB_CHARS & set(str(directory)):
                source = "[" + ", ".join(_sql_str(str(f)) for f in files) + "]"
            else:
                source = _sql_str(str(directory / "*.parquet"))
            parquet = f"read_parquet({source}, union_by_name = true)"
            present = {r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {parquet}").fetchall()}
            missing = {n: t for n, t in TRIAL_COLUMNS.items() if n not in present}
            # one row per run id: a compaction in progress has a row in two files (compact.py)
            con.execute(
                f"CREATE VIEW {VIEW} AS SELECT *{_nulls(missing, ', ')} FROM {parquet} {DEDUPE}"
            )
        else:
            core = {n: _duckdb_type(t) for n, t in CORE_COLUMNS.items()}
            con.execute(f"CREATE VIEW {VIEW} AS SELECT {_nulls(core | TRIAL_COLUMNS)} WHERE false")
        _create_sweeps(con)
    except duckdb.Error as exc:
        con.close()
        raise CatalogueError(
            f"could not read the catalogue in {directory}: {one_paragraph(str(exc))}"
        ) from exc
    except BaseException:
        con.close()
        raise
    return con


def one_paragraph(message: str) -> str:
    """Joins a multi-line DuckDB message into one line, dropping its ``^^^`` marker lines."""
    lines = [line.strip() for line in message.splitlines()]
    return " ".join(line for line in lines if line and set(line) != {"^"})


def _hint(message: str) -> str:
    if "Referenced table" in message and "not found" in message:
        return (
            ' (column names that contain dots must be double-quoted, e.g. "trainer.max_epochs";'
            f" the tables are {VIEW} and {SWEEPS})"
        )
    if "Referenced column" in message:
        return f" (list the columns with: DESCRIBE {VIEW})"
    return ""


def query(catalogue_dir: str | os.PathLike, sql: str) -> pd.DataFrame:
    """Runs SQL against the catalogue view ``runs`` and table ``sweeps``.

    Args:
        catalogue_dir: The catalogue directory.
        sql: A DuckDB query, e.g. ``SELECT run_id, test_sharpe FROM runs``.

    Returns:
        The result; empty when the statement returns no result set.

    Raises:
        CatalogueError: If the directory does not exist or DuckDB rejects the query; the
            message carries DuckDB's own.
    """
    con = connect(catalogue_dir)
    try:
        result = con.sql(sql)
        return pd.DataFrame() if result is None else result.df()
    except duckdb.Error as exc:
        message = one_paragraph(str(exc))
        empty = "" if catalogue_files(catalogue_dir) else " (the catalogue is empty)"
        raise CatalogueError(
            f"query failed on the catalogue in {catalogue_dir}{empty}: {message}{_hint(message)}"
        ) from exc
    finally:
        con.close()


def saved_queries(directory: str | os.PathLike = QUERIES_DIR) -> dict[str, str]:
    """Lists the saved queries: ``NAME.sql`` files, each headed by ``-- what it shows``.

    Args:
        directory: Where they are (default: ``experiments/queries`` of the source checkout).

    Returns:
        Name -> the first line of its header comment ("" without one), sorted by name.

    Raises:
        CatalogueError: If the directory does not exist.
    """
    path = pathlib.Path(directory)
    if not path.is_dir():
        raise CatalogueError(
            f"the saved-query directory {path} does not exist; saved queries ship in "
            "experiments/queries of a source checkout (install it with `pip install -e .`)"
        )
    found = {}
    for file in sorted(path.glob("*.sql")):
        first = file.read_text(encoding="utf-8").lstrip().splitlines()[:1]
        header = first[0].strip() if first else ""
        found[file.stem] = header[2:].strip() if header.startswith("--") else ""
    return found


def saved_query(name: str, directory: str | os.PathLike = QUERIES_DIR) -> str:
    """The SQL of the saved query ``name`` (``<directory>/<name>.sql``).

    Raises:
        CatalogueError: If there is no such file; the message names the directory, the closest
            name and every available one.
    """
    names = saved_queries(directory)
    if name not in names:
        near = did_you_mean(name, names)
        hint = f" (did you mean {near!r}?)" if near else ""
        raise CatalogueError(
            f"no saved query {name!r} in {pathlib.Path(directory)}{hint}; available: "
            f"{', '.join(names) or 'none'}"
        )
    return (pathlib.Path(directory) / f"{name}.sql").read_text(encoding="utf-8")
