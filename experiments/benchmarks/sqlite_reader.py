"""SQLite -> numpy panel: rows/s of our columnar reader against pandas.read_sql, same run.

    .venv/bin/python -m experiments.benchmarks.sqlite_reader            # 500 x 5000, ~2.5 min
    .venv/bin/python -m experiments.benchmarks.sqlite_reader --symbols 50 --days 500 --dry

The database is the synthetic market (`generate_fixture(path, 500, 5000, seed=0)`, ~2.3M
`series` rows and twice as many `indicators` rows), generated once into `outputs/cache/`.
Each reader is checked against its reference, then timed `--repeats` times, round robin
(median):

* ``pandas.read_sql_query`` on a ``sqlite3`` connection (the reference; what `panel.py` did);
* the ``sqlite3`` row API alone (``fetchall``: the floor of any row-by-row reader);
* ``plusultra.data.io.reader.read_frame`` (Arrow ADBC driver -> pandas);
* end to end: ``panel.read_tables`` (all four tables) and a pivot of the five price fields
  into (T, S) numpy arrays, against the same with ``pandas.read_sql_query`` per table.

The issue's target: reader rows/s >= 3x pandas.read_sql. Section ``sqlite_reader`` of
docs/benchmarks.md is rewritten (``--dry`` prints it only).
"""

from __future__ import annotations

import argparse
import gc
import os
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # also runnable as a file
    sys.path.insert(0, str(ROOT))

from experiments.benchmarks._report import machine, write_section  # noqa: E402
from plusultra.data.datasets.panel import PRICE_FIELDS, read_tables  # noqa: E402
from plusultra.data.io.fixture import generate_fixture  # noqa: E402
from plusultra.data.io.reader import read_frame  # noqa: E402

TABLES = ("assets", "series", "indicators", "corporate_actions")


def fixture(n_symbols: int, n_days: int) -> Path:
    """The cached benchmark database, generated on first use."""
    path = ROOT / "outputs" / "cache" / f"bench_sqlite_{n_symbols}x{n_days}_seed0.sqlite"
    if not path.exists():
        print(f"generating {path} ...", flush=True)
        generate_fixture(path, n_symbols, n_days, seed=0)
    return path


def timed(fn: Callable[[], object]) -> float:
    """Wall-clock seconds of one call, its result dropped before the next call.

    The garbage collector stays on, as in a real run: collecting millions of per-value Python
    objects is part of what a row-by-row reader costs. The heap is collected before each call,
    so no reader pays for another's objects.
    """
    gc.collect()
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pivot(series: pd.DataFrame) -> dict[str, np.ndarray]:
    """Long series rows -> {field: (T, S) float64}, NaN where a symbol has no bar."""
    t, dates = pd.factorize(series["timestamp"], sort=True)
    s, symbols = pd.factorize(series["symbol"], sort=True)
    out = {}
    for name in PRICE_FIELDS:
        wide = np.full((len(dates), len(symbols)), np.nan)
        wide[t, s] = series[name].to_numpy(dtype=float)
        out[name] = wide
    return out


def pandas_series(path: Path) -> pd.DataFrame:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        return pd.read_sql_query("SELECT * FROM series", con)


def fetchall_series(path: Path) -> int:
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return len(con.execute("SELECT * FROM series").fetchall())  # rows freed on return
    finally:
        con.close()


def pandas_panel(path: Path) -> dict[str, np.ndarray]:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as con:
        tables = {t: pd.read_sql_query(f"SELECT * FROM {t}", con) for t in TABLES}
    return pivot(tables["series"])


def ours_panel(path: Path) -> dict[str, np.ndarray]:
    return pivot(read_tables(path)["series"])


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--days", type=int, default=5000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--dry", action="store_true", help="print, do not write the docs page")
    args = parser.parse_args(argv)

    path = fixture(args.symbols, args.days)
    load = os.getloadavg()[0]  # other processes compete for the same cores: say so
    with sqlite3.connect(path) as con:
        counts = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in TABLES}
    n_series, n_all = counts["series"], sum(counts.values())

    runs = [
        ("pandas.read_sql_query (sqlite3), series", n_series, lambda: pandas_series(path)),
        ("sqlite3 cursor.fetchall, series", n_series, lambda: fetchall_series(path)),
        (
            "**plusultra read_frame (ADBC), series**",
            n_series,
            lambda: read_frame(path, "SELECT * FROM series"),
        ),
        ("pandas.read_sql_query, 4 tables + pivot", n_all, lambda: pandas_panel(path)),
        ("**plusultra read_tables, 4 tables + pivot**", n_all, lambda: ours_panel(path)),
    ]
    # The fast path must give the reference's numbers, or its speed means nothing.
    pd.testing.assert_frame_equal(runs[2][2](), runs[0][2]())
    fast, slow = runs[4][2](), runs[3][2]()
    for field in PRICE_FIELDS:
        np.testing.assert_array_equal(fast[field], slow[field])
    del fast, slow

    # Round robin, so that load from other processes falls on every reader alike.
    times: dict[str, list[float]] = {name: [] for name, _, _ in runs}
    for _ in range(args.repeats):
        for name, _, fn in runs:
            times[name].append(timed(fn))
    seconds = {name: statistics.median(t) for name, t in times.items()}
    for name, rows, _ in runs:
        print(f"{name:48s} {seconds[name]:7.2f} s  {rows / seconds[name] / 1e6:6.2f} M rows/s")

    reference = {runs[i][0]: seconds[runs[0 if i < 3 else 3][0]] for i in range(len(runs))}
    lines = [
        "## SQLite reader",
        "",
        f"`{' '.join(['.venv/bin/python -m experiments.benchmarks.sqlite_reader', *(argv or [])])}`"
        f" — {machine()}; 1-min load average {load:.1f} when it started.",
        "",
        f"Synthetic market {args.symbols} symbols x {args.days} days "
        f"(`generate_fixture(path, {args.symbols}, {args.days}, seed=0)`): "
        f"{n_series:,} `series` rows, {n_all:,} rows in all four tables. Median of "
        f"{args.repeats} runs, round robin; speed-up against `pandas.read_sql_query` in the "
        "same run (series rows against the series read, panel rows against the four-table "
        "read). Garbage collector on, as in a real run. "
        "Issue target: >= 3x. Results are checked equal to the reference's.",
        "",
        "| reader | seconds | rows/s | speed-up vs pandas.read_sql |",
        "|---|---:|---:|---:|",
    ]
    for name, rows, _ in runs:
        lines.append(
            f"| {name} | {seconds[name]:.2f} | {rows / seconds[name] / 1e6:.2f} M | "
            f"{reference[name] / seconds[name]:.2f}x |"
        )
    md = "\n".join(lines) + "\n"
    print()
    print(md)
    if not args.dry:
        print(f"wrote {write_section('sqlite_reader', md)}")
    return md


if __name__ == "__main__":
    main(sys.argv[1:])
