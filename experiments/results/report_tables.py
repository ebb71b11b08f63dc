"""The tables of docs/results.md: the saved query's long rows pivoted wide, then markdown.

``results_table.sql`` gives one row per (configuration or baseline, split, metric) with the mean,
sample std and count over seeds; ``wide`` turns that into one row per configuration or baseline
with columns ``{seg}_{metric}`` (mean) and ``{seg}_{metric}_std``; the ``*_table`` functions
render markdown. Every number comes from the catalogue; a metric the catalogue lacks is "n/a".
"""

from __future__ import annotations

import math

import pandas as pd

from plusultra.evaluation.report.summary import BASELINE_LABELS

KEY = ["kind", "tbl", "part", "family", "depth", "horizon", "features", "variant", "data"]
INFO = ["n_seeds", "seeds", "ir_vs"]
# catalogue name -> label, as the run reports label them (the unguarded book is no baseline)
BASELINES = {k: v for k, v in BASELINE_LABELS.items() if k != "unguarded"}
IR_VS = {"buyhold": "vs B&H", "cash": "vs cash"}


def _keys(df: pd.DataFrame) -> list[str]:
    """One string per row identifying its configuration or baseline (NULLs included)."""
    return ["\x1f".join(map(str, t)) for t in df[KEY].itertuples(index=False)]


def wide(long: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration or baseline, in the query's order (best validation first).

    Args:
        long: ``results_table.sql``'s rows.

    Returns:
        ``KEY`` and ``INFO`` columns, then ``{seg}_{metric}`` (mean over seeds) and
        ``{seg}_{metric}_std`` for every metric present, ``rank``: 1 = the highest mean
        validation Sharpe of its table (``tbl``).
    """
    if long.empty:
        return pd.DataFrame(columns=[*KEY, *INFO, "rank"])
    long = long.assign(col=long["seg"] + "_" + long["metric"])
    order = pd.Series(_keys(long), index=long.index)
    rows = []
    for _, g in long.groupby(order, sort=False):  # first appearance order
        row = g.iloc[0][KEY + INFO].to_dict()
        row.update(dict(zip(g["col"], g["mean"], strict=True)))
        row.update(dict(zip(g["col"] + "_std", g["std"], strict=True)))
        rows.append(row)
    out = pd.DataFrame(rows)  # groupby(sort=False): in the query's order
    out["rank"] = out.groupby("tbl").cumcount() + 1
    return out


def label(row: pd.Series) -> str:
    """The family column: a backbone's name, or a baseline's label."""
    if row["kind"] == "baseline":
        return BASELINES.get(row["family"], row["family"])
    return str(row["family"])


def _isnan(x) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA


def cell(row: pd.Series, col: str, fmt: str, std: bool = True) -> str:
    """``mean ± std`` of a column (``mean`` alone for one seed), "n/a" if the catalogue lacks it."""
    mean = row.get(col)
    if _isnan(mean):
        return "n/a"
    sd = row.get(f"{col}_std")
    text = format(float(mean), fmt)
    return text if not std or _isnan(sd) else f"{text} ± {format(float(sd), fmt)}"


def interval(row: pd.Series, seg: str = "test") -> str:
    """The mean over seeds of the run's 95% bootstrap interval of Sharpe."""
    lo, hi = row.get(f"{seg}_sharpe_lo"), row.get(f"{seg}_sharpe_hi")
    return "n/a" if _isnan(lo) or _isnan(hi) else f"[{lo:.2f}, {hi:.2f}]"


def _int(x) -> str:
    return "—" if _isnan(x) else str(int(x))


def _ir(row: pd.Series) -> str:
    text = cell(row, "test_information_ratio", ".2f")
    vs = row.get("ir_vs")
    if text == "n/a" or _isnan(vs):
        return text
    return f"{text} ({' / '.join(IR_VS.get(v, v) for v in str(vs).split('/'))})"


HEADER = (
    "| rank (val) | family | depth | horizon | features | variant | data | seeds "
    "| val IC | val Sharpe | test IC | test ICIR | test rank IC | test rank ICIR | test Sharpe "
    "| test Sharpe 95% interval | test excess annual return | test information ratio "
    "| test max drawdown | test turnover | test cost drag |"
)


def table(rows: pd.DataFrame) -> str:
    """Markdown in Qlib's benchmark format, mean ± std over seeds, in ``rows``' order."""
    if rows.empty:
        return "_No completed run of this part in the catalogue._"
    lines = [HEADER, "|" + "---|" * HEADER.count(" | ") + "---|"]
    for i, (_, r) in enumerate(rows.iterrows(), start=1):
        name = label(r)
        lines.append(
            f"| {i} | {f'**{name}**' if r['kind'] == 'model' else name} | {_int(r['depth'])} "
            f"| {_int(r['horizon'])} | {r['features']} | {r['variant']} | {r['data']} "
            f"| {_int(r['n_seeds'])} "
            f"| {cell(r, 'val_ic', '.4f')} | {cell(r, 'val_sharpe', '.2f')} "
            f"| {cell(r, 'test_ic', '.4f')} | {cell(r, 'test_ic_ir', '.3f')} "
            f"| {cell(r, 'test_rank_ic', '.4f')} | {cell(r, 'test_rank_ic_ir', '.3f')} "
            f"| {cell(r, 'test_sharpe', '.2f')} | {interval(r)} "
            f"| {cell(r, 'test_excess_annual_return', '.2%')} | {_ir(r)} "
            f"| {cell(r, 'test_max_drawdown', '.1%')} | {cell(r, 'test_turnover', '.4f')} "
            f"| {cell(r, 'test_cost_drag', '.2%')} |"
        )
    return "\n".join(lines)


def main_rows(w: pd.DataFrame) -> pd.DataFrame:
    """The main table: every configuration and baseline outside the timing part."""
    return w[w["tbl"] == "main"].reset_index(drop=True)


def timing_rows(w: pd.DataFrame) -> pd.DataFrame:
    """The timing table: the results/timing part (the index pair) and its baselines."""
    return w[w["tbl"] == "timing"].reset_index(drop=True)


def best_family(w: pd.DataFrame) -> pd.Series | None:
    """The grid's configuration with the highest mean validation Sharpe (rows are so ordered).

    The same rule as the recipe's ``results_best_family.sql``: the results/grid part, ordered by
    mean validation Sharpe, then validation IC. None when the grid has no completed run.
    """
    grid = w[(w["kind"] == "model") & (w["part"] == "grid")]
    return None if grid.empty else grid.iloc[0]


def variant_rows(w: pd.DataFrame) -> pd.DataFrame:
    """The best family at its best (depth, horizon): plain, alpha158, cross-asset, rl, with the
    buy-and-hold and LightGBM baselines of that horizon (every feature set)."""
    best = best_family(w)
    if best is None:
        return w.iloc[0:0]
    main = main_rows(w)
    same = (main["horizon"] == best["horizon"]) & (main["data"] == best["data"])
    model = (main["kind"] == "model") & (main["family"] == best["family"])
    model &= (main["depth"] == best["depth"]) & (main["part"] != "structure")
    base = (main["kind"] == "baseline") & main["family"].isin(["buyhold", "lightgbm"])
    return main[same & (model | base)].reset_index(drop=True)


def structure_rows(w: pd.DataFrame) -> pd.DataFrame:
    """The structure part (dilations, scales) beside the grid's runs of the same family, depth,
    horizon and data at the backbone's defaults (variant ``plain``), in the table's order."""
    main = main_rows(w)
    model = main["kind"] == "model"
    swept = model & (main["part"] == "structure")
    key = ["family", "depth", "horizon", "data"]
    keys = set(main.loc[swept, key].itertuples(index=False, name=None))
    default = model & (main["part"] == "grid") & (main["variant"] == "plain")
    default &= pd.Series([k in keys for k in main[key].itertuples(index=False, name=None)],
                         index=main.index)  # fmt: skip
    return main[swept | default].reset_index(drop=True)
