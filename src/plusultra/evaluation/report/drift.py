"""The "Feature drift" section of the run report, from ``<run dir>/drift.parquet``.

Reads the drift the run computed (`plusultra.evaluation.drift_run`: validation and test
against a train-segment sample; no file: no section) and returns report blocks
(``report.blocks``): the regime-shift warnings, a table per segment of the features with the
largest PSI, and one plot of every shown feature's PSI in both segments against the level
thresholds. Definitions and thresholds: docs/evaluation.md, "Drift".
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from plusultra.evaluation.drift import MAJOR, MODERATE, regime_warnings
from plusultra.evaluation.drift_run import TABLE_FILE
from plusultra.evaluation.report.blocks import Block
from plusultra.evaluation.report.plots import _figure, _png

TOP_FEATURES = 10  # rows per segment table and bars per segment in the plot
SEGMENT_LABELS = {"val": "Validation", "test": "Test"}
HEADER = ["feature", "PSI", "level", "KS statistic", "KS p-value", "median (train 1-99 %)"]


def _g(v: float, digits: int = 3) -> str:
    return "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):.{digits}g}"


# --------------------------------------------------------------------------- analysis


def top_features(table: pd.DataFrame, segment: str, n: int = TOP_FEATURES) -> pd.DataFrame:
    """The `n` features of `segment` with the largest PSI (NaN, insufficient data, last)."""
    rows = table[table["segment"] == segment]
    return rows.sort_values("psi", ascending=False, na_position="last").head(n)


def table_rows(top: pd.DataFrame) -> list[list[str]]:
    """Rows of a segment's table (`HEADER`)."""
    return [
        [
            r.feature,
            _g(r.psi),
            r.level,
            _g(r.ks_stat),
            _g(r.ks_pvalue, 2),
            f"{_g(r.current_median)} ({_g(r.reference_q01)} to {_g(r.reference_q99)})",
        ]
        for r in top.itertuples()
    ]


def segment_warnings(table: pd.DataFrame) -> dict[str, list[str]]:
    """Segment -> its regime-shift warnings (`drift.regime_warnings`)."""
    return {s: regime_warnings(table[table["segment"] == s]) for s in table["segment"].unique()}


# --------------------------------------------------------------------------- plot


def drift_plot(table: pd.DataFrame, n: int = TOP_FEATURES) -> bytes:
    """Horizontal bars: PSI per feature (the `n` largest of any segment), one bar per segment,
    the moderate and major thresholds dashed."""
    worst = table.groupby("feature")["psi"].max().sort_values(ascending=False).head(n)
    names = list(worst.index[::-1])  # largest on top
    segments = list(table["segment"].unique())
    fig, ax = _figure(max(2.4, 0.32 * len(names) * len(segments) + 1.2))
    height = 0.8 / max(1, len(segments))
    y = np.arange(len(names))
    for i, seg in enumerate(segments):
        psi = table[table["segment"] == seg].set_index("feature")["psi"].reindex(names)
        ax.barh(y + i * height, psi.fillna(0.0), height, label=SEGMENT_LABELS.get(seg, seg))
    for value, label in ((MODERATE, "moderate"), (MAJOR, "major")):
        ax.axvline(value, color="0.4", ls="--", lw=0.9)
        ax.text(value, len(names) - 0.4, f" {label}", fontsize=7, color="0.3")
    ax.set_yticks(y + height * (len(segments) - 1) / 2, names, fontsize=8)
    ax.set(xlabel="PSI against the train segment", title="Feature drift (PSI)")
    ax.legend(frameon=False, fontsize=8, loc="lower right")
    return _png(fig)


# --------------------------------------------------------------------------- section


def drift_section(run_dir: str | Path) -> tuple[list[Block], dict[str, tuple[str, bytes]]]:
    """(blocks, plots) of the section; ``([], {})`` for a run without ``drift.parquet``."""
    path = Path(run_dir) / TABLE_FILE
    table = pd.read_parquet(path) if path.is_file() else None
    if table is None or table.empty:
        return [], {}
    blocks: list[Block] = [
        ("h2", "Feature drift"),
        (
            "note",
            "The model's inputs at each decision bar (normalised features) in each segment "
            f"against a sample of the train segment's (drift_reference.parquet). PSI < "
            f"{MODERATE}: none, < {MAJOR}: moderate, otherwise major; 'insufficient': too few "
            "values. Definitions in docs/evaluation.md (Drift); every feature in drift.parquet.",
        ),
    ]
    warnings = segment_warnings(table)
    for seg in table["segment"].unique():
        label = SEGMENT_LABELS.get(seg, seg)
        blocks.append(("h3", f"{label}: features with the largest PSI"))
        for sentence in warnings.get(seg, []):
            blocks.append(("p", sentence))
        if not warnings.get(seg):
            blocks.append(("note", "No regime-shift warning."))
        blocks.append(("table", HEADER, table_rows(top_features(table, seg))))
    caption = (
        f"PSI against the train segment of the {TOP_FEATURES} features with the largest PSI "
        f"in any segment; dashed: the moderate ({MODERATE}) and major ({MAJOR}) thresholds."
    )
    blocks.append(("img", "drift"))
    return blocks, {"drift": (caption, drift_plot(table))}
