"""``plusultra-catalogue``: query the run catalogue with SQL."""

from __future__ import annotations

import argparse
import json
import math
import os
import pathlib
import sys
import tempfile
import textwrap

import duckdb
import pandas as pd

from plusultra.catalogue.compact import compact, count_row_files
from plusultra.catalogue.query import (
    QUERIES_DIR,
    CatalogueError,
    catalogue_files,
    one_paragraph,
    query,
    saved_queries,
    saved_query,
)
from plusultra.errors import PlusUltraError
from plusultra.io import write_parquet_atomic

PROG = "plusultra-catalogue"
FORMATS = ("table", "csv", "json", "parquet")
EXPORTS = ("csv", "parquet")  # --export X: the issue's spelling of --format X
LAST_RUNS = 20  # runs in the curated view (no SQL given)
# The curated view: (column, shown as), in display order; a column an older catalogue lacks is
# left out. `execution` is the simulator's fill timing where runs record it.
CURATED = (
    ("run_id", "run_id"),
    ("status", "status"),
    ("started_at", "started"),
    ("data", "data"),
    ("backbone", "backbone"),
    ("head", "head"),
    ("loss", "loss"),
    ("depth", "depth"),
    ("d_model", "d_model"),
    ("window", "window"),
    ("n_params", "n_params"),
    ("val_loss", "val_loss"),
    ("val_sharpe", "val_sharpe"),
    ("test_sharpe", "test_sharpe"),
    ("test_max_drawdown", "test_max_drawdown"),
    ("execution", "execution"),
    ("simulator.execution", "execution"),
)

EPILOG = textwrap.dedent(
    """\
    The view `runs` has one row per run: run_id, run_dir, status, error, started_at,
    finished_at, duration_s, git_revision, overrides, multirun, job_num; one column per
    config group holding the chosen option (backbone, head, data, hardware, ...); the
    resolved config with dotted names (seed, depth, "backbone.depth",
    "trainer.max_epochs", ...); the metrics (val_loss, test_sharpe, n_params, ...); and the
    trial columns "optuna.study", "optuna.trial", "optuna.params" (JSON), objective, objectives.
    The table `sweeps` has one row per trial of each study (multirun jobs sharing `study`,
    across invocations): study, sweep_dir, run_id, job_num, trial, params, n_trials,
    selected_by (the val_* objective), objective, objectives, is_best (best objective, or on
    the Pareto front), test_sharpe, expected_max_sharpe (annualised), deflated_sharpe, ...
    Column names containing dots or slashes must be double-quoted in SQL ("trainer.max_epochs",
    "a/b"); SQL strings use single quotes. In bash, put the query in double quotes and escape
    the inner ones as \\", or put it in single quotes when it has no string literal.

    Saved queries (--query NAME) are the files experiments/queries/NAME.sql of the source
    checkout: leaderboard (completed runs ranked by val_sharpe, test metrics beside),
    best_per_backbone, variance_over_seeds, pareto_front (val_sharpe against val max
    drawdown), sweep_trials; --list-queries (or --query alone) lists them. Add your own there.

    Without a query it prints a curated view of the last 20 runs (run_id, status, started,
    data, backbone, head, loss, depth, d_model, window, n_params, val_loss, val_sharpe,
    test_sharpe, test_max_drawdown, execution; columns an older catalogue lacks are left out);
    every column: plusultra-catalogue "SELECT * FROM runs".

    examples:
      plusultra-catalogue
      plusultra-catalogue "SELECT * FROM runs ORDER BY started_at"
      plusultra-catalogue "SELECT run_id, backbone, depth, n_params, test_sharpe FROM runs"
      plusultra-catalogue 'SELECT run_id, "trainer.max_epochs", val_loss FROM runs'
      plusultra-catalogue "SELECT backbone, \\"trainer.max_epochs\\", avg(test_sharpe) AS sharpe
          FROM runs WHERE status = 'completed' GROUP BY ALL ORDER BY sharpe DESC"
      plusultra-catalogue "SELECT run_id, error FROM runs WHERE status = 'failed'"
      plusultra-catalogue "DESCRIBE runs"
      plusultra-catalogue "SELECT * FROM sweeps WHERE is_best"
      plusultra-catalogue --format csv "SELECT * FROM runs" > runs.csv
      plusultra-catalogue --query leaderboard
      plusultra-catalogue --query variance_over_seeds --export parquet --out seeds.parquet
      plusultra-catalogue --list-queries
      plusultra-catalogue --out best.json "SELECT * FROM runs ORDER BY test_sharpe DESC LIMIT 5"
    """
)


def default_catalogue_dir() -> pathlib.Path:
    """``$PLUSULTRA_OUTPUT_DIR/catalogue`` if that variable is set, else ``outputs/catalogue``."""
    base = os.environ.get("PLUSULTRA_OUTPUT_DIR")
    return pathlib.Path(base) / "catalogue" if base else pathlib.Path("outputs/catalogue")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for docs and tests)."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Query the PlusUltra run catalogue (one parquet file per run) with DuckDB SQL "
        "over the view `runs` and the table `sweeps`.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "sql",
        nargs="?",
        default=None,
        help=f"the query; quote dotted names: 'SELECT \"trainer.max_epochs\" FROM runs' "
        f"(default: a curated view of the last {LAST_RUNS} runs)",
    )
    parser.add_argument(
        "--catalogue",
        metavar="DIR",
        type=pathlib.Path,
        default=None,
        help="catalogue directory (default: $PLUSULTRA_OUTPUT_DIR/catalogue if that is set, "
        "else outputs/catalogue)",
    )
    parser.add_argument(
        "--query",
        metavar="NAME",
        nargs="?",
        const="",
        default=None,
        help=f"run the saved query {QUERIES_DIR}/NAME.sql instead of SQL (without NAME: list them)",
    )
    parser.add_argument(
        "--list-queries",
        action="store_true",
        help="list the saved queries with what each shows, and exit",
    )
    parser.add_argument(
        "--format",
        choices=FORMATS,
        default=None,
        help="output format (default: table; with --out, taken from the file's "
        ".csv/.json/.parquet suffix). json is a list of records; parquet needs --out",
    )
    parser.add_argument(
        "--export",
        choices=EXPORTS,
        default=None,
        help="the same as --format csv|parquet, usually with --out FILE",
    )
    parser.add_argument(
        "--compact",
        action="store_true",
        help="merge the catalogue's row files into one parquet file (fast queries on large "
        "catalogues; safe while jobs run) and exit; jobs also do it once 256 files pile up",
    )
    parser.add_argument(
        "--out",
        metavar="FILE",
        type=pathlib.Path,
        default=None,
        help="write the result to FILE (atomically) instead of stdout",
    )
    return parser


def _format_float(value: float) -> str:
    if math.isfinite(value) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def _table(df: pd.DataFrame) -> str:
    if df.columns.empty:
        return "(no result)\n"
    shown = df.copy()
    for name in shown.columns:
        col = shown[name]
        if isinstance(col.dtype, pd.DatetimeTZDtype) or pd.api.types.is_datetime64_dtype(col):
            shown[name] = col.dt.floor("s")
        elif col.dtype == object:
            shown[name] = col.map(lambda v: v.replace("\n", "\\n") if isinstance(v, str) else v)
        if not pd.api.types.is_float_dtype(col) and col.isna().any():
            # Show every SQL NULL alike (pandas would print None, <NA> or NaT by dtype).
            shown[name] = shown[name].astype(object).where(col.notna(), "NULL")
    if shown.empty:
        return "  ".join(map(str, shown.columns)) + "\n(0 rows)\n"
    return shown.to_string(index=False, float_format=_format_float, na_rep="NULL") + "\n"


def render(df: pd.DataFrame, fmt: str) -> str:
    """Renders a query result as an aligned table, CSV or JSON records."""
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        # pandas maps NaN/NA to null and timestamps to ISO text; json.dumps gives plain layout.
        records = json.loads(df.to_json(orient="records", date_format="iso", date_unit="us"))
        return json.dumps(records, indent=2, ensure_ascii=False) + "\n"
    return _table(df)


def curated_sql(columns: set[str] | list[str], last: int = LAST_RUNS) -> str:
    """The query of the curated view over the catalogue's ``columns`` (the newest last).

    Args:
        columns: The columns the view ``runs`` has (``DESCRIBE runs``).
        last: How many of the most recent runs to show.
    """
    present, shown, select = set(columns), set(), []
    for column, label in CURATED:
        if column in present and label not in shown:
            shown.add(label)
            value = _ident(column)
            if column == "started_at":  # to the second, in UTC, as text: compact and unambiguous
                value = f"strftime(timezone('UTC', {value}), '%Y-%m-%d %H:%M:%S')"
            select.append(f"{value} AS {_ident(label)}")
    inner = f"SELECT {', '.join(select)}, started_at AS _t FROM runs"
    inner += f" ORDER BY started_at DESC, run_id DESC LIMIT {int(last)}"
    return f"SELECT * EXCLUDE (_t) FROM ({inner}) ORDER BY _t, run_id"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _write_atomic(path: pathlib.Path, text: str) -> None:
    directory = path.parent if str(path.parent) else pathlib.Path(".")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def list_queries() -> str:
    """The saved queries, one per line: name and the first line of its header comment."""
    queries = saved_queries()
    if not queries:
        return f"(no saved queries in {QUERIES_DIR})\n"
    width = max(map(len, queries))
    lines = [f"{name:<{width}}  {about}".rstrip() for name, about in queries.items()]
    lines.append(f"\n(run one: {PROG} --query NAME; the files are in {QUERIES_DIR})")
    return "\n".join(lines) + "\n"


def _format(args: argparse.Namespace) -> str:
    if args.export is not None and args.format is not None and args.export != args.format:
        raise CatalogueError(f"--export {args.export} and --format {args.format} disagree")
    fmt = args.export or args.format
    if fmt is None:
        suffix = args.out.suffix.lower().lstrip(".") if args.out is not None else ""
        fmt = suffix if suffix in ("csv", "json", "parquet") else "table"
    if fmt == "parquet" and args.out is None:
        raise CatalogueError("parquet is a binary file: give it a name with --out FILE")
    return fmt


def _saved(name: str, catalogue: pathlib.Path) -> pd.DataFrame:
    """Runs the saved query ``name``, naming it in any error."""
    sql = saved_query(name)
    try:
        return query(catalogue, sql)
    except CatalogueError as exc:
        lacks = "Referenced column" in str(exc)
        why = (
            " needs a column this catalogue lacks (no run recorded it yet, or the runs predate it)"
            if lacks
            else " failed"
        )
        raise CatalogueError(
            f"saved query {name!r} ({QUERIES_DIR / name}.sql){why}: {exc}"
        ) from exc


def _write(path: pathlib.Path, df: pd.DataFrame, fmt: str) -> None:
    try:
        if fmt == "parquet":
            write_parquet_atomic(path, df)
        else:
            _write_atomic(path, render(df, fmt))
    except OSError as exc:
        raise CatalogueError(f"could not write {path}: {exc.strerror or exc}") from exc


def _compact(args: argparse.Namespace, catalogue: pathlib.Path) -> int:
    """``--compact``: merge the row files and say what happened."""
    if args.sql is not None or args.query is not None or args.out is not None:
        raise CatalogueError("--compact takes no query, --query or --out")
    if not catalogue.is_dir():
        raise CatalogueError(f"catalogue directory {catalogue} does not exist")
    before = count_row_files(catalogue)
    try:
        merged = compact(catalogue)
    except duckdb.Error as exc:
        raise CatalogueError(
            f"could not compact {catalogue} (nothing was deleted): {one_paragraph(str(exc))}"
        ) from exc
    if merged is None:
        print(
            f"{PROG}: nothing to compact in {catalogue} ({before} file(s), or another "
            "process is compacting it)",
            file=sys.stderr,
        )
    else:
        print(f"{PROG}: compacted {before} files into {merged}", file=sys.stderr)
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.list_queries or args.query == "":
        if args.sql is not None:
            raise CatalogueError("give either SQL or --list-queries, not both")
        sys.stdout.write(list_queries())
        return 0
    if args.query is not None and args.sql is not None:
        raise CatalogueError("give either SQL or --query NAME, not both")
    fmt = _format(args)
    catalogue = args.catalogue if args.catalogue is not None else default_catalogue_dir()
    if args.compact:
        return _compact(args, catalogue)
    if not catalogue_files(catalogue):
        raise CatalogueError(
            f"the catalogue in {catalogue} is empty (no *.parquet files); a row is written "
            "there each time a `plusultra` job ends"
        )
    if args.query is not None:
        result = _saved(args.query, catalogue)
    else:
        sql = args.sql
        if sql is None:
            described = query(catalogue, "DESCRIBE runs")
            sql = curated_sql(described["column_name"].tolist())
        result = query(catalogue, sql)
    if args.out is None:
        sys.stdout.write(render(result, fmt))
        sys.stdout.flush()
    else:
        _write(args.out, result, fmt)
        print(f"{PROG}: wrote {args.out} ({len(result)} rows)", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``plusultra-catalogue``.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit code: 0, or 2 for a user error (reported on stderr without a traceback).
    """
    args = build_parser().parse_args(argv)
    try:
        code = _run(args)
    except PlusUltraError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        code = exc.exit_code
    except BrokenPipeError:
        # The reader (e.g. `| head`) went away; silence the second error at interpreter exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        code = 0
    return code


if __name__ == "__main__":
    sys.exit(main())
