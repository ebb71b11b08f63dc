"""docs/results.md from the results recipe's catalogue: saved DuckDB queries -> tables, plots.

``write_results(out_dir, doc, command)`` runs ``experiments/queries/results_table.sql`` and
``results_deflated.sql`` over ``<out_dir>/catalogue`` (the recipe's ``paths.catalogue_dir``) and
replaces the generated blocks between the markers ``<!-- results-* -->`` of ``doc``; the
hand-written text around them is kept. A ``doc`` that does not exist yet starts as a copy of the
repository's docs/results.md (its method text and markers). Plots are PNG files: in docs/img/
for the repository's docs/results.md, beside ``doc`` otherwise; the equity plot reads the
selected configuration's ``backtest.parquet`` files from the run directories the catalogue
names. Every number comes from the catalogue; the ordering and every selection use validation,
never test.

Columns the catalogue may lack (older runs; LightGBM, cost drag and excess return before they
existed) are NULL in the queries (``open_catalogue``) and "n/a" in the tables.

Re-render without running anything:
    PYTHONPATH=src python -m experiments.results.report --out outputs/results
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
from pathlib import Path

import duckdb
import pandas as pd

from experiments._markers import write_marked
from experiments.results import report_facts, report_plots, report_tables
from plusultra.catalogue.query import connect, saved_query
from plusultra.errors import DataError

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "results.md"
TABLE_QUERY = "results_table"
DEFLATED_QUERY = "results_deflated"
RL_QUERY = "results_rl_seeds"
MARKS = (
    "results-source",
    "results-main",
    "results-variants",
    "results-timing",
    "results-structure",
    "results-deflated",
    "results-facts",
    "results-plots",
    "results-runtime",
)
# Columns the saved queries name outside their COLUMNS(...) patterns, with the type of the NULL
# put in their place when a catalogue lacks them.
PAD = {
    "sweep_name": "VARCHAR",
    "git_revision": "VARCHAR",
    "duration_s": "DOUBLE",
    "started_at": "TIMESTAMP WITH TIME ZONE",
    "backbone": "VARCHAR",
    "data": "VARCHAR",
    "features": "VARCHAR",
    "curriculum": "VARCHAR",
    "evaluation": "VARCHAR",
    "simulator": "VARCHAR",
    "cross_asset.enabled": "BOOLEAN",
    "backbone.dilations": "VARCHAR",
    "backbone.scales": "VARCHAR",
    "seed": "BIGINT",
    "depth": "BIGINT",
    "horizon": "BIGINT",
    "periods_per_year": "DOUBLE",
    "evaluation.periods_per_year": "DOUBLE",
    "val_sharpe": "DOUBLE",
    "val_ic": "DOUBLE",
    "test_sharpe": "DOUBLE",
    "test_skew": "DOUBLE",
    "test_kurtosis": "DOUBLE",
    "test_n_periods": "DOUBLE",
    "test_information_ratio_benchmark": "VARCHAR",
    "ppo_best_epoch": "BIGINT",
    "test_gross_exposure": "DOUBLE",
    "val_buyhold_sharpe": "DOUBLE",  # so the baselines' column pattern always matches one
    "test_buyhold_information_ratio_benchmark": "VARCHAR",
}


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def open_catalogue(out_dir: Path) -> duckdb.DuckDBPyConnection:
    """``connect`` on ``<out_dir>/catalogue``, the view ``runs`` given every ``PAD`` column.

    A missing column becomes a typed NULL column of ``runs`` (the rows are read once into a
    table, and ``runs`` is redefined over it), so the saved queries run on any catalogue.

    Raises:
        DataError: the catalogue has no completed run of a results part
            (``sweep_name`` ``results/...``).
    """
    directory = Path(out_dir) / "catalogue"
    con = connect(directory)
    present = {row[0] for row in con.execute("DESCRIBE runs").fetchall()}
    missing = {name: typ for name, typ in PAD.items() if name not in present}
    if missing:
        nulls = ", ".join(f"CAST(NULL AS {t}) AS {_ident(n)}" for n, t in missing.items())
        con.execute("CREATE TABLE _results_runs AS SELECT * FROM runs")
        con.execute("DROP VIEW runs")
        con.execute(f"CREATE VIEW runs AS SELECT *, {nulls} FROM _results_runs")
    (n,) = con.execute(
        "SELECT count(*) FROM runs WHERE status = 'completed' AND sweep_name LIKE 'results/%'"
    ).fetchone()
    if n == 0:
        con.close()
        raise DataError(
            f"catalogue {directory}: no completed run with a sweep_name starting 'results/' "
            "(the recipe's parts: results/grid, results/alpha158, results/cross_asset, "
            "results/rl, results/timing, results/structure); nothing to report"
        )
    return con


def load(out_dir: Path) -> tuple[pd.DataFrame, dict | None, pd.DataFrame, pd.DataFrame]:
    """(the wide table of every configuration and baseline, the deflated Sharpe, the raw runs,
    the rl part seed by seed: ``results_rl_seeds.sql``).

    The raw runs (``sweep_name``, ``git_revision``, ``duration_s``, ``backbone``, ``depth``,
    ``curriculum``) only feed the source note and the run-time table.
    """
    con = open_catalogue(out_dir)
    try:
        wide = report_tables.wide(con.execute(saved_query(TABLE_QUERY)).df())
        row = con.execute(saved_query(DEFLATED_QUERY)).df()
        rl_seeds = con.execute(saved_query(RL_QUERY)).df()
        runs = con.execute(
            "SELECT sweep_name, git_revision, started_at, duration_s, backbone, depth, curriculum "
            "FROM runs "
            "WHERE status = 'completed' AND sweep_name LIKE 'results/%'"
        ).df()
    finally:
        con.close()
    deflated = report_facts.deflated(None if row.empty else row.iloc[0])
    return wide, deflated, runs, rl_seeds


def _images(doc: Path) -> Path:
    """Where the plots go: docs/img for the repository's page, beside any other page."""
    return DOC.parent / "img" if doc.resolve() == DOC.resolve() else doc.parent


def _source(out_dir: Path, runs: pd.DataFrame, command: str) -> str:
    parts = runs["sweep_name"].value_counts().sort_index()
    shown = ", ".join(f"{name} {count}" for name, count in parts.items())
    revisions = sorted({str(r)[:12] for r in runs["git_revision"].dropna()})
    cat = Path(out_dir).resolve() / "catalogue"
    with_repo = cat.relative_to(REPO) if cat.is_relative_to(REPO) else cat
    return (
        f"Generated on {dt.date.today().isoformat()} by `{command}` from the catalogue "
        f"`{with_repo}`: {len(runs)} completed runs ({shown}); git revision(s) "
        f"{', '.join(revisions) or 'unrecorded'}. Queries: `experiments/queries/"
        f"{TABLE_QUERY}.sql`, `{DEFLATED_QUERY}.sql`, `{RL_QUERY}.sql`." + _compute(runs)
    )


def busy_seconds(start: pd.Series, seconds: pd.Series) -> float:
    """The length of the union of the intervals ``[start, start + seconds]``: wall time during
    which at least one run was going (gaps between sittings of a resumed recipe left out)."""
    begin = pd.to_datetime(start, utc=True)
    spans = sorted(zip(begin, begin + pd.to_timedelta(seconds, unit="s"), strict=True))
    total, cur_start, cur_end = 0.0, None, None
    for b, e in spans:
        if cur_end is None or b > cur_end:
            if cur_end is not None:
                total += (cur_end - cur_start).total_seconds()
            cur_start, cur_end = b, e
        else:
            cur_end = max(cur_end, e)
    if cur_end is not None:
        total += (cur_end - cur_start).total_seconds()
    return total


def _compute(runs: pd.DataFrame) -> str:
    """The runs' own durations (the catalogue's ``duration_s``: start to end of each run), per
    part, and the wall time the runs kept the machine busy.

    The sum is compute, not wall time: the recipe runs ``--jobs`` runs at once. The busy time is
    the union of the runs' intervals: it leaves out the gaps of a recipe resumed later, and each
    multirun's start-up.
    """
    timed = runs.dropna(subset=["duration_s"])
    seconds = timed.groupby("sweep_name")["duration_s"].sum()
    if seconds.empty:
        return ""
    parts = ", ".join(f"{name} {s / 60:.0f} min" for name, s in seconds.sort_index().items())
    text = f" The runs' own durations sum to {seconds.sum() / 3600:.2f} h ({parts})"
    timed = timed.dropna(subset=["started_at"])
    if not timed.empty:
        busy = busy_seconds(timed["started_at"], timed["duration_s"])
        text += (
            f"; at least one run was going for {busy / 3600:.2f} h of wall time (the union of "
            "their intervals: without the gaps between sittings of a resumed recipe and without "
            "each multirun's start-up)"
        )
    return text + "."


def _runtime(runs: pd.DataFrame) -> str:
    """Markdown: seconds per run (the catalogue's ``duration_s``) by part, family, depth and
    curriculum.

    A run's duration is its own start to end (training, evaluation, report), measured while the
    recipe's other jobs shared the machine; a multirun's start-up is not in it.
    """
    timed = runs.dropna(subset=["duration_s"])
    if timed.empty:
        return "_The catalogue records no run duration._"
    keys = ["sweep_name", "backbone", "depth", "curriculum"]
    g = timed.groupby(keys, dropna=False)["duration_s"].agg(["count", "mean", "min", "max", "sum"])
    lines = [
        "| part | family | depth | curriculum | runs | seconds per run (mean; min-max) "
        "| minutes in all |",
        "|---|---|---|---|---|---|---|",
    ]
    for (part, family, depth, curriculum), r in g.sort_index().iterrows():
        d = "" if pd.isna(depth) else int(depth)
        lines.append(
            f"| {str(part).removeprefix('results/')} | {family} | {d} | {curriculum} "
            f"| {int(r['count'])} | {r['mean']:.0f}; {r['min']:.0f}-{r['max']:.0f} "
            f"| {r['sum'] / 60:.1f} |"
        )
    return "\n".join(lines)


def _selected(d: dict) -> str:
    return (
        f"Test segment: {d['family']}, depth {d['depth']}, horizon {d['horizon']}, "
        f"{d['features']}, {d['variant']} (selected on validation)"
    )


def equity_curves(d: dict | None) -> tuple[dict[str, pd.Series], str]:
    """Per-bar test returns of the selected configuration's runs, and its first run's baselines.

    Read from each run directory's ``backtest.parquet`` (the test segment's simulated returns,
    net of costs, as the run's own report plots them).

    Returns:
        (label -> returns, "") or ({}, why not): no selection, or no run directory readable.
    """
    if d is None:
        return {}, "no configuration selected"
    curves: dict[str, pd.Series] = {}
    baselines = None
    for seed, run_dir in d["runs"]:
        path = Path(str(run_dir)) / "backtest.parquet"
        if not path.is_file():
            continue
        bt = pd.read_parquet(path)
        curves[f"{d['family']}, seed {seed}"] = bt["strategy_return"]
        baselines = bt if baselines is None else baselines
    if baselines is None:
        return {}, "the selected configuration's run directories (backtest.parquet) are not here"
    for b, name in report_tables.BASELINES.items():
        if f"{b}_return" in baselines:
            curves[f"baseline: {name}"] = baselines[f"{b}_return"]
    return curves, ""


def write_results(out_dir: Path, doc: Path, command: str) -> None:
    """Write the results tables, facts and plots of ``<out_dir>/catalogue`` into ``doc``.

    Args:
        out_dir: the recipe's output directory; its catalogue is ``out_dir / "catalogue"``.
        doc: the markdown page; created from docs/results.md when absent; its ``results-*``
            marker blocks are replaced (a block whose markers are missing is appended).
        command: the command that produced the runs, quoted in the page's source note.

    Raises:
        DataError: no completed results run in the catalogue.
        CatalogueError: the catalogue directory is missing or a query fails.
    """
    doc = Path(doc)
    wide, deflated, runs, rl_seeds = load(Path(out_dir))
    if not doc.exists():
        doc.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(DOC, doc)
    images = _images(doc)
    images.mkdir(parents=True, exist_ok=True)
    main = report_tables.main_rows(wide)
    links = []
    for name, (plot, caption) in report_plots.PLOTS.items():
        (images / name).write_bytes(plot(main))
        rel = os.path.relpath(images / name, doc.parent)
        links.append(f"![{Path(name).stem}]({Path(rel).as_posix()})\n\n*{caption}*")
    curves, why = equity_curves(deflated)
    if curves:
        (images / report_plots.EQUITY).write_bytes(report_plots.equity(curves, _selected(deflated)))
        rel = Path(os.path.relpath(images / report_plots.EQUITY, doc.parent)).as_posix()
        links.append(f"![results_equity]({rel})\n\n*{report_plots.EQUITY_CAPTION}*")
    else:
        links.append(f"*No equity plot: {why}.*")
    best = report_tables.best_family(wide)
    variants_note = (
        ""
        if best is None
        else f"Best family on validation (results/grid): {best['family']}, depth "
        f"{int(best['depth'])}, horizon {int(best['horizon'])}.\n\n"
    )
    blocks = {
        "results-source": _source(Path(out_dir), runs, command),
        "results-main": report_tables.table(main),
        "results-variants": variants_note + report_tables.table(report_tables.variant_rows(wide)),
        "results-timing": report_tables.table(report_tables.timing_rows(wide)),
        "results-structure": report_tables.table(report_tables.structure_rows(wide)),
        "results-deflated": report_facts.deflated_table(deflated),
        "results-facts": report_facts.facts(wide, deflated, rl_seeds),
        "results-plots": "\n\n".join(links),
        "results-runtime": _runtime(runs),
    }
    for mark in MARKS:
        write_marked(doc, mark, blocks[mark], append=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the recipe's output dir")
    parser.add_argument("--doc", type=Path, default=DOC, help="the page (default docs/results.md)")
    parser.add_argument(
        "--command", default="python -m experiments.results", help="quoted as the runs' source"
    )
    args = parser.parse_args(argv)
    write_results(args.out, args.doc, args.command)
    print(args.doc)


if __name__ == "__main__":
    main()
