"""Plots of the run report: matplotlib figures rendered to PNG bytes (Agg, no pyplot state)."""

from __future__ import annotations

import io
import math
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from plusultra.evaluation.report.summary import BASELINE_LABELS

if TYPE_CHECKING:
    from plusultra.evaluation.report.artifacts import RunArtifacts

ROLLING_SHARPE_BARS = 63  # window of the rolling Sharpe plot (about a quarter)
MAX_HEATMAP_BARS = 400  # time columns of the position heatmap before subsampling


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return buf.getvalue()


def _figure(height: float = 3.6):
    from matplotlib.figure import Figure  # object API: no pyplot, no global backend state

    fig = Figure(figsize=(9.0, height), layout="constrained")
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return fig, ax


def growth_of_one(r: pd.Series) -> pd.Series:
    return (1.0 + r.fillna(0.0)).cumprod()


def _series(run: RunArtifacts) -> dict[str, pd.Series]:
    """Label -> per-bar return of the model and every baseline."""
    out = {"model": run.backtest["strategy_return"]}
    out.update({BASELINE_LABELS[b]: run.backtest[f"{b}_return"] for b in run.baselines})
    return out


def make_plots(run: RunArtifacts) -> dict[str, tuple[str, bytes]]:
    """Plot name -> (caption, PNG bytes). The cost plot only exists with cost columns."""
    bt, plots = run.backtest, {}
    series = _series(run)
    bench = series.get(BASELINE_LABELS["buyhold"])

    fig, ax = _figure()
    for i, (label, r) in enumerate(series.items()):
        ax.plot(growth_of_one(r), label=label, lw=2.2 if i == 0 else 1.2, color=f"C{i}")
    caption = "Growth of 1 unit of capital, model against every baseline."
    blocks = run.walk_forward
    refits = [] if blocks is None else pd.to_datetime(blocks.loc[blocks["refit"], "start"])
    for i, start in enumerate(refits):
        ax.axvline(start, color="0.5", ls=":", lw=1, label="walk-forward refit" if i == 0 else None)
    if len(refits):
        caption += " Dotted lines: the model (and ridge) refitted before that bar."
    ax.set(ylabel="growth of 1", title="Equity: model vs baselines")
    ax.legend(frameon=False, fontsize=8)
    plots["equity"] = (caption, _png(fig))

    fig, ax = _figure(3.0)
    for i, (label, r) in enumerate(series.items()):
        if i == 0 or r is bench:
            g = growth_of_one(r)
            ax.fill_between(g.index, g / g.cummax() - 1, 0, alpha=0.35, label=label, color=f"C{i}")
    ax.yaxis.set_major_formatter(_percent())
    ax.set(ylabel="drawdown", title="Drawdown")
    ax.legend(frameon=False, fontsize=8)
    plots["drawdown"] = ("Fall from the running peak of equity.", _png(fig))

    fig, ax = _figure(3.0)
    for i, (label, r) in enumerate(series.items()):
        if i == 0 or r is bench:
            roll = r.rolling(ROLLING_SHARPE_BARS, min_periods=ROLLING_SHARPE_BARS)
            ax.plot(roll.mean() / roll.std() * math.sqrt(run.periods_per_year), label=label)
    ax.axhline(0, color="black", lw=0.8)
    ax.set(ylabel="Sharpe (annualised)", title=f"Rolling Sharpe ({ROLLING_SHARPE_BARS} bars)")
    ax.legend(frameon=False, fontsize=8)
    plots["rolling_sharpe"] = (
        f"Annualised Sharpe over trailing {ROLLING_SHARPE_BARS}-bar windows.",
        _png(fig),
    )

    plots["positions"] = _position_heatmap(run.predictions)

    if run.cost_columns:
        fig, ax = _figure(3.2)
        cum = bt[run.cost_columns].fillna(0.0).cumsum()
        labels = [c.removeprefix("cost_") for c in run.cost_columns]
        ax.stackplot(cum.index, cum.to_numpy().T, labels=labels, alpha=0.85)
        ax.set(ylabel="cumulative cost (currency)", title="Trading costs by type")
        ax.legend(frameon=False, fontsize=8, loc="upper left")
        plots["costs"] = ("Cumulative costs, stacked by type.", _png(fig))

    fig, ax = _figure(3.2)
    model = series["model"].dropna()
    data = [model] + ([bench.dropna()] if bench is not None else [])
    lo, hi = np.nanpercentile(np.concatenate([d.to_numpy() for d in data]), [0.5, 99.5])
    bins = np.linspace(lo, hi, 60) if hi > lo else 30
    ax.hist(model, bins=bins, alpha=0.6, label="model", density=True)
    if bench is not None:
        ax.hist(bench.dropna(), bins=bins, alpha=0.5, label="buy & hold", density=True)
    ax.xaxis.set_major_formatter(_percent())
    ax.set(xlabel="return per bar", ylabel="density", title="Distribution of bar returns")
    ax.legend(frameon=False, fontsize=8)
    plots["returns"] = ("Histogram of per-bar returns (0.5–99.5 % range).", _png(fig))
    return plots


def _percent():
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0)


def _position_heatmap(preds: pd.DataFrame) -> tuple[str, bytes]:
    wide = preds.pivot_table(index="symbol", columns="timestamp", values="position", aggfunc="sum")
    wide = wide.sort_index(axis=1)
    step = max(1, math.ceil(wide.shape[1] / MAX_HEATMAP_BARS))
    wide = wide.iloc[:, ::step]
    fig, ax = _figure(max(2.5, min(9.0, 0.18 * len(wide) + 1.5)))
    ax.grid(False)
    vmax = float(np.nanmax(np.abs(wide.to_numpy()))) if wide.size else 1.0
    vmax = vmax if vmax > 0 and math.isfinite(vmax) else 1.0
    image = ax.imshow(
        wide.to_numpy(), aspect="auto", cmap="RdBu", vmin=-vmax, vmax=vmax, interpolation="nearest"
    )
    fig.colorbar(image, ax=ax, label="weight", shrink=0.9)
    if len(wide) <= 40:
        ax.set_yticks(range(len(wide)), wide.index, fontsize=7)
    else:
        ax.set_yticks([])
        ax.set_ylabel(f"{len(wide)} symbols")
    ticks = np.linspace(0, wide.shape[1] - 1, min(6, wide.shape[1])).astype(int)
    ax.set_xticks(ticks, [wide.columns[t].date().isoformat() for t in ticks], fontsize=7)
    ax.set_title("Positions (blue long, red short)")
    note = f", one bar in {step}" if step > 1 else ""
    return f"Weight per symbol and bar{note}.", _png(fig)
