"""The plots of docs/results.md, as PNG bytes (matplotlib's object API on Agg, no pyplot state,
the run report's figure style: ``plusultra.evaluation.report.plots``)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from experiments.results.report_tables import label
from plusultra.evaluation.report.plots import _figure, _png


def _short(r: pd.Series) -> str:
    if r["kind"] == "baseline":
        return f"{label(r)} · {r['features']} · h{int(r['horizon'])}"
    extra = "" if r["variant"] == "plain" else f" · {r['variant']}"
    return f"{r['family']} d{int(r['depth'])} h{int(r['horizon'])} · {r['features']}{extra}"


def sharpe_intervals(rows: pd.DataFrame) -> bytes:
    """Mean test Sharpe of every configuration and baseline with its mean 95% bootstrap interval
    (where the runs have one), in the table's order: best on validation on top."""
    rows = rows.dropna(subset=["test_sharpe"]).reset_index(drop=True)
    fig, ax = _figure(max(2.4, 0.26 * len(rows) + 1.2))
    y = np.arange(len(rows))[::-1]
    for kind, color in (("model", "C0"), ("baseline", "C1")):
        sel = (rows["kind"] == kind).to_numpy()
        if not sel.any():
            continue
        r = rows[sel]
        x = r["test_sharpe"].to_numpy(float)
        lo = r.get("test_sharpe_lo", pd.Series(np.nan, index=r.index)).to_numpy(float)
        hi = r.get("test_sharpe_hi", pd.Series(np.nan, index=r.index)).to_numpy(float)
        err = np.vstack([np.where(np.isnan(lo), 0, x - lo), np.where(np.isnan(hi), 0, hi - x)])
        ax.errorbar(x, y[sel], xerr=np.clip(err, 0, None), fmt="o", color=color, capsize=2,
                    label=f"{kind} (mean over seeds, mean 95% interval)")  # fmt: skip
    ax.axvline(0.0, color="0.3", lw=0.8)
    ax.set_yticks(y, [_short(r) for _, r in rows.iterrows()], fontsize=7)
    ax.set(xlabel="test Sharpe (annualised, after costs)", title="Test Sharpe by configuration")
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def val_vs_test(rows: pd.DataFrame) -> bytes:
    """Validation against test Sharpe of every configuration, one colour per family: the
    overfitting picture (points far below the diagonal did better on validation than after)."""
    models = rows[rows["kind"] == "model"].dropna(subset=["val_sharpe", "test_sharpe"])
    fig, ax = _figure(4.2)
    for i, (family, g) in enumerate(models.groupby("family", sort=True)):
        ax.scatter(g["val_sharpe"], g["test_sharpe"], s=26, color=f"C{i % 10}", label=family)
    if len(models):
        first = models.iloc[0]  # rows are in the table's order: best on validation first
        ax.scatter([first["val_sharpe"]], [first["test_sharpe"]], s=140, facecolors="none",
                   edgecolors="k", label="selected on validation")  # fmt: skip
        both = np.concatenate([models["val_sharpe"], models["test_sharpe"]]).astype(float)
        lo, hi = float(both.min()), float(both.max())
        ax.plot([lo, hi], [lo, hi], color="0.5", lw=0.8, ls="--", label="test = validation")
    ax.set(
        xlabel="validation Sharpe (mean over seeds)",
        ylabel="test Sharpe (mean over seeds)",
        title="Validation against test Sharpe, every configuration",
    )
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def ic_by_family(rows: pd.DataFrame) -> bytes:
    """Validation and test IC per family (mean and std over its configurations' seed means),
    beside ridge and LightGBM where the catalogue has their IC."""
    cols = [c for c in ("val_ic", "test_ic") if c in rows]
    kept = rows[rows["kind"].eq("model") | rows["family"].isin(["ridge", "lightgbm"])]
    kept = kept.assign(name=[r["family"] if r["kind"] == "model" else label(r)
                             for _, r in kept.iterrows()])  # fmt: skip
    stats = kept.groupby("name", sort=False)[cols].agg(["mean", "std"]) if cols else None
    if stats is not None:  # a baseline whose IC the catalogue lacks has no bar
        stats = stats[stats.xs("mean", axis=1, level=1).notna().any(axis=1)]
    fig, ax = _figure(3.4)
    if stats is not None and len(stats):
        x = np.arange(len(stats))
        for j, c in enumerate(cols):
            ax.bar(x + (j - 0.5) * 0.38, stats[(c, "mean")], width=0.38,
                   yerr=stats[(c, "std")].fillna(0), capsize=2, color=f"C{j}",
                   label=c.replace("_ic", " IC"))  # fmt: skip
        ax.set_xticks(x, list(stats.index), fontsize=8)
        ax.legend(frameon=False, fontsize=8)
    ax.axhline(0.0, color="0.3", lw=0.8)
    ax.set(ylabel="mean cross-sectional IC", title="IC by family")
    return _png(fig)


def equity(curves: dict[str, pd.Series], title: str) -> bytes:
    """Growth of 1 unit over the test segment, one line per label (per-bar net returns)."""
    fig, ax = _figure(3.8)
    for i, (name, r) in enumerate(curves.items()):
        model = not name.startswith("baseline")
        style = {"lw": 1.6, "ls": "-"} if model else {"lw": 1.1, "ls": "--"}
        growth = (1.0 + r.fillna(0.0)).cumprod()
        ax.plot(growth, label=name.removeprefix("baseline: "), color=f"C{i % 10}", **style)
    ax.set(ylabel="growth of 1 (net of costs)", title=title)
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


EQUITY = "results_equity.png"
EQUITY_CAPTION = (
    "Growth of 1 unit over the test segment, net of costs: the configuration selected on "
    "validation, one line per seed, beside the baselines of its first seed's run (dashed)."
)

PLOTS = {
    "results_sharpe.png": (
        sharpe_intervals,
        "Test Sharpe (after costs) of every configuration and baseline, mean over seeds, with the "
        "mean of the runs' 95% stationary-bootstrap intervals; ordered as the table (best on "
        "validation on top).",
    ),
    "results_val_test.png": (
        val_vs_test,
        "Validation against test Sharpe of every configuration: a selection that works puts the "
        "best on validation near the top right; scatter around the diagonal is what selection "
        "on validation cannot see.",
    ),
    "results_ic.png": (
        ic_by_family,
        "Validation and test IC by family (mean and std over the family's configurations), "
        "beside ridge and LightGBM.",
    ),
}
