"""The deflated Sharpe of the whole sweep and the data-dependent facts of docs/results.md.

Both read only the saved queries' results (``results_deflated.sql``, ``results_rl_seeds.sql``
and ``report_tables.wide`` of ``results_table.sql``); every number in the text is formatted from
them.
"""

from __future__ import annotations

import math

import pandas as pd

from experiments.results.report_tables import interval, label, main_rows, structure_rows
from plusultra.evaluation.metrics.deflated import deflated_sharpe, expected_max_sharpe


def _num(x) -> float:
    return float("nan") if x is None or x is pd.NA else float(x)


def deflated(row: pd.Series | None) -> dict | None:
    """The deflated Sharpe of the best-on-validation configuration against the whole sweep.

    Args:
        row: ``results_deflated.sql``'s one row (None or a row without a selected configuration:
            no completed run outside the timing part).

    Returns:
        None without a selected configuration; else the inputs and ``dsr`` (probability that the
        true Sharpe exceeds the expected maximum of ``n_configs`` zero-skill ones, NaN when
        undefined), ``sr0`` (that expected maximum, per period) and ``sr0_annual``;
        ``normal_moments`` is true where skew or kurtosis was missing and 0 and 3 were used.
        ``runs``: (seed, run directory) of the selected configuration's runs.
    """
    if row is None or pd.isna(row.get("family")) or pd.isna(row.get("sharpe_per_period")):
        return None
    n = int(row["n_configs"])
    var = _num(row["sharpe_variance"])
    var = 0.0 if math.isnan(var) else var  # one configuration: no spread
    skew, kurt = _num(row["test_skew"]), _num(row["test_kurtosis"])
    normal = math.isnan(skew) or math.isnan(kurt)
    skew, kurt = (0.0, 3.0) if normal else (skew, kurt)
    t = _num(row["test_n_periods"])
    periods = int(t) if math.isfinite(t) else 0
    sr = float(row["sharpe_per_period"])
    sr0 = expected_max_sharpe(n, var)
    dsr = deflated_sharpe(sr, n, var, periods, skew, kurt)
    ppy = float(row["periods_per_year"])
    return {
        **{k: row[k] for k in ("family", "depth", "horizon", "features", "variant", "data")},
        "part": row["part"],
        "runs": list(zip(row.get("run_seeds", []), row.get("run_dirs", []), strict=True)),
        "n_seeds": int(row["n_seeds"]),
        "n_configs": n,
        "sharpe_variance": var,
        "test_sharpe": float(row["test_sharpe"]),
        "sharpe_per_period": sr,
        "skew": skew,
        "kurtosis": kurt,
        "n_periods": periods,
        "normal_moments": normal,
        "periods_per_year": ppy,
        "sr0": sr0,
        "sr0_annual": sr0 * math.sqrt(ppy),
        "dsr": dsr,
    }


def deflated_table(d: dict | None) -> str:
    """Markdown: one row of the deflated Sharpe's inputs and result."""
    if d is None:
        return "_No completed run outside the timing part: nothing selected, nothing deflated._"
    normal = d["normal_moments"]
    moments = " (normal moments assumed: the runs lack skew/kurtosis)" if normal else ""
    return "\n".join(
        [
            "| configurations tried (N) | variance of their per-period test Sharpes (V) "
            "| selected on validation | seeds | its test Sharpe (annualised; per period) "
            "| skew | kurtosis | test periods (T) "
            "| expected max Sharpe of N null configurations (annualised; per period) "
            "| deflated Sharpe (probability) |",
            "|---|---|---|---|---|---|---|---|---|---|",
            f"| {d['n_configs']} | {d['sharpe_variance']:.3g} "
            f"| {d['family']}, depth {d['depth']}, horizon {d['horizon']}, {d['features']}, "
            f"{d['variant']}, {d['data']} | {d['n_seeds']} "
            f"| {d['test_sharpe']:.2f}; {d['sharpe_per_period']:.4f} "
            f"| {d['skew']:.2f} | {d['kurtosis']:.2f}{moments} | {d['n_periods']} "
            f"| {d['sr0_annual']:.2f}; {d['sr0']:.4f} "
            f"| {'n/a' if math.isnan(d['dsr']) else format(d['dsr'], '.3f')} |",
        ]
    )


def _fmt(x, fmt: str) -> str:
    return "n/a" if x is None or pd.isna(x) else format(float(x), fmt)


def _name(r: pd.Series) -> str:
    if r["kind"] == "baseline":
        return f"{label(r)} ({r['features']}, horizon {int(r['horizon'])})"
    return (
        f"{r['family']} (depth {int(r['depth'])}, horizon {int(r['horizon'])}, {r['features']}, "
        f"{r['variant']})"
    )


def _baseline(rows: pd.DataFrame, name: str, like: pd.Series) -> pd.Series | None:
    """Baseline ``name``'s row on ``like``'s data, features and horizon (None if absent)."""
    hit = rows[(rows["kind"] == "baseline") & (rows["family"] == name)]
    hit = hit[(hit["data"] == like["data"]) & (hit["horizon"] == like["horizon"])]
    same = hit[hit["features"] == like["features"]]
    hit = same if not same.empty else hit
    return None if hit.empty or pd.isna(hit.iloc[0].get("test_sharpe")) else hit.iloc[0]


def _beats(
    models: pd.DataFrame, rows: pd.DataFrame, name: str, seg: str = "test"
) -> tuple[int, int]:
    """(configurations beating ``name``'s mean ``seg`` Sharpe on their data/horizon, with one)."""
    k = m = 0
    col = f"{seg}_sharpe"
    for _, r in models.iterrows():
        b = _baseline(rows, name, r)
        if b is None or pd.isna(r.get(col)) or pd.isna(b.get(col)):
            continue
        m += 1
        k += int(r[col] > b[col])
    return k, m


def _horizons(models: pd.DataFrame) -> str | None:
    """The grid's horizon effect: pairs where the longer horizon has the higher test Sharpe,
    and the median test turnover and cost drag at each horizon (None without two horizons)."""
    grid = models[models["part"] == "grid"].dropna(subset=["test_sharpe"])
    hs = sorted(grid["horizon"].dropna().unique())
    if len(hs) < 2:
        return None
    short, long = hs[0], hs[-1]
    by = grid.set_index(["family", "depth", "horizon"])["test_sharpe"].unstack("horizon")
    by = by[[short, long]].dropna()
    if by.empty:
        return None
    k = int((by[long] > by[short]).sum())
    med = grid.groupby("horizon")[["test_turnover", "test_cost_drag"]].median()
    return (
        f"- The grid at horizon {int(long)} against horizon {int(short)}: {k} of {len(by)} "
        f"(family, depth) pairs have the higher mean test Sharpe at horizon {int(long)}; median "
        f"test turnover {_fmt(med.loc[short, 'test_turnover'], '.2f')} a bar at horizon "
        f"{int(short)} against {_fmt(med.loc[long, 'test_turnover'], '.2f')}, median cost drag "
        f"{_fmt(med.loc[short, 'test_cost_drag'], '.2%')} a year against "
        f"{_fmt(med.loc[long, 'test_cost_drag'], '.2%')}."
    )


def _structure(w: pd.DataFrame) -> list[str]:
    """Per family of the structure part: the setting best on validation, and test beside it."""
    rows = structure_rows(w).dropna(subset=["val_sharpe", "test_sharpe"])
    out = []
    for (family, depth, horizon), g in rows.groupby(["family", "depth", "horizon"], sort=False):
        if len(g) < 2:
            continue
        names = g["variant"].where(g["part"] != "grid", "the default")
        top = g.iloc[0]  # the table's order: the highest mean validation Sharpe first
        best_test = names.loc[g["test_sharpe"].idxmax()]
        line = (
            f"- {family} (depth {int(depth)}, horizon {int(horizon)}), {len(g)} settings of its "
            f"temporal structure: best on validation {names.iloc[0]} (test Sharpe "
            f"{top['test_sharpe']:.2f}); the highest test Sharpe at {best_test}"
        )
        default = g[g["part"] == "grid"]
        if not default.empty:
            line += "; the default (the grid's runs) has test Sharpe "
            line += f"{default.iloc[0]['test_sharpe']:.2f}"
        out.append(line + ".")
    return out


def _rl_seeds(seeds: pd.DataFrame | None) -> list[str]:
    """Bullets from ``results_rl_seeds.sql``: per seed, did PPO change the policy kept on
    validation, and its test Sharpe and gross exposure against its supervised reference."""
    if seeds is None or seeds.empty:
        return []
    out = []
    key = ["family", "depth", "horizon", "features", "data", "evaluation"]
    for k, g in seeds.groupby(key, sort=False):
        kept = g[g["ppo_best_epoch"] == -1]
        changed = g[g["ppo_best_epoch"] != -1]
        each = "; ".join(
            f"seed {int(r['seed'])}: test Sharpe {_fmt(r['rl_test_sharpe'], '.2f')} against "
            f"{_fmt(r['supervised_test_sharpe'], '.2f')}, validation "
            f"{_fmt(r['rl_val_sharpe'], '.2f')} against {_fmt(r['supervised_val_sharpe'], '.2f')}"
            f", gross exposure {_fmt(r['rl_test_gross_exposure'], '.2f')} against "
            f"{_fmt(r['supervised_test_gross_exposure'], '.2f')}"
            for _, r in changed.iterrows()
        )
        line = (
            f"- RL seed by seed ({k[0]}, depth {int(k[1])}, horizon {int(k[2])}, {k[3]}, "
            f"evaluation={k[5]}): PPO replaced the supervised policy on validation in "
            f"{len(changed)} of {len(g)} seeds"
        )
        if len(kept):
            line += (
                f"; in the other {len(kept)} no PPO epoch beat the supervised start on validation,"
                " so the run trades it unchanged"
            )
        out.append(line + (f" ({each})." if each else "."))
    return out


def facts(w: pd.DataFrame, d: dict | None, rl_seeds: pd.DataFrame | None = None) -> str:
    """Markdown bullets: what beats buy-and-hold and LightGBM on test after costs, and how far
    validation predicts test. Selection is by validation throughout; test is only reported.

    ``rl_seeds``: ``results_rl_seeds.sql``'s rows, for the RL part seed by seed (optional)."""
    rows = main_rows(w)
    models = rows[rows["kind"] == "model"]
    if models.empty:
        return "_No completed configuration in the catalogue._"
    out = []
    n_runs = int(models["n_seeds"].sum())
    out.append(f"- {len(models)} configurations ({n_runs} runs) outside the timing part.")
    for name in ("buyhold", "lightgbm"):
        k, m = _beats(models, rows, name)
        title = label(pd.Series({"kind": "baseline", "family": name}))
        if m == 0:
            out.append(f"- {title}: not in this catalogue (its test columns are absent).")
        else:
            kv, mv = _beats(models, rows, name, seg="val")
            out.append(
                f"- {k} of {m} configurations have a higher mean test Sharpe after costs than "
                f"{title} on the same data and horizon ({kv} of {mv} on validation)."
            )
    top = models.iloc[0]  # the table's order: the highest mean validation Sharpe, all parts
    line = (
        f"- Selected on validation (every part but timing): {_name(top)}, validation Sharpe "
        f"{top['val_sharpe']:.2f}, test Sharpe {top['test_sharpe']:.2f} (95% interval "
        f"{interval(top)})"
    )
    same = [(label(b), b["test_sharpe"]) for b in (_baseline(rows, n, top) for n in
            ("buyhold", "lightgbm")) if b is not None]  # fmt: skip
    if same:
        line += "; on the same data, features and horizon, test Sharpe of " + ", ".join(
            f"{name} {value:.2f}" for name, value in same
        )
    out.append(line + ".")
    lgb = rows[(rows["kind"] == "baseline") & (rows["family"] == "lightgbm")]
    lgb = lgb.dropna(subset=["val_sharpe", "test_sharpe"])
    if not lgb.empty:  # rows are in validation order: its first is its best on validation
        g = lgb.iloc[0]
        out.append(
            f"- LightGBM at its best on validation ({g['features']}, horizon {int(g['horizon'])}):"
            f" test IC {_fmt(g.get('test_ic'), '.4f')}, test Sharpe {g['test_sharpe']:.2f};"
            f" the deep configuration selected on validation: test IC "
            f"{_fmt(top.get('test_ic'), '.4f')}, test Sharpe {top['test_sharpe']:.2f}."
        )
    ranked = models.dropna(subset=["val_sharpe", "test_sharpe"])
    if len(ranked) >= 2:
        hit = ranked.loc[ranked["test_sharpe"].idxmax()]
        val_rank = int((ranked["val_sharpe"] > hit["val_sharpe"]).sum()) + 1
        rho = ranked["val_sharpe"].rank().corr(ranked["test_sharpe"].rank())
        out.append(
            f"- The highest test Sharpe ({hit['test_sharpe']:.2f}, {_name(hit)}) ranks "
            f"{val_rank} of {len(ranked)} on validation; the rank correlation of validation and "
            f"test Sharpe across configurations is {rho:.2f}."
        )
    if {"test_turnover", "test_cost_drag"} <= set(models.columns):
        line = _horizons(models)
        if line:
            out.append(line)
    if "test_sharpe_lo" in models:
        sure = models["test_sharpe_lo"].dropna()
        if len(sure):
            out.append(
                f"- {int((sure > 0).sum())} of {len(sure)} configurations have the mean lower "
                "end of their 95% interval of test Sharpe above 0."
            )
    if "test_cost_drag" in models and models["test_cost_drag"].notna().any():
        drag = models["test_cost_drag"].dropna()
        out.append(
            f"- Test cost drag: {drag.median():.2%} a year at the median configuration "
            f"(range {drag.min():.2%} to {drag.max():.2%})."
        )
    rl = models[models["part"] == "rl"]
    tuned = rl[rl["variant"].str.split(", ").map(lambda v: "rl" in v)]
    for _, r in tuned.iterrows():  # against its supervised twin traded the same way
        key = ["family", "depth", "horizon", "features", "data"]
        twin = rl[(rl[key] == r[key]).all(axis=1) & ~rl.index.isin(tuned.index)]
        if twin.empty:
            continue
        t = twin.iloc[0]
        out.append(
            f"- RL fine-tuning ({_name(r)}): test Sharpe {r['test_sharpe']:.2f} against "
            f"{t['test_sharpe']:.2f} for the same supervised model traded the same way "
            f"({t['variant']}; validation {r['val_sharpe']:.2f} against "
            f"{t['val_sharpe']:.2f})."
        )
    out.extend(_rl_seeds(rl_seeds))
    out.extend(_structure(w))
    timing = w[w["tbl"] == "timing"]
    k, m = _beats(timing[timing["kind"] == "model"], timing, "buyhold")
    if m:
        out.append(
            f"- Timing the index pair: {k} of {m} configurations have a higher mean test Sharpe "
            "after costs than buy & hold."
        )
    if d is not None and not math.isnan(d["dsr"]):
        verdict = "at or above" if d["dsr"] >= 0.95 else "below"
        out.append(
            f"- Deflated Sharpe of the selected configuration over {d['n_configs']} tried: "
            f"{d['dsr']:.3f}, {verdict} the 0.95 that a skill claim at 5% would need."
        )
    return "\n".join(out)
