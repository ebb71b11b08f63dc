"""The "Training diagnostics" section of the run report, from ``<run dir>/diagnostics/``.

Reads the parquet files the diagnostics callbacks wrote (``plusultra.training.diagnostics``;
none: no section) and returns report blocks (``report.blocks``): a table of summary numbers,
a plot of the gradient norm per layer group and the training loss with its spikes marked, and
the loss-landscape PNG when the run drew one (``diagnostics=full``).
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from plusultra.evaluation.report.blocks import Block
from plusultra.evaluation.report.plots import _figure, _png

FILES = ("gradients", "noise_scale", "activations", "loss_spikes", "calibration", "warnings")


def _load(directory: Path) -> dict[str, pd.DataFrame]:
    return {
        name: pd.read_parquet(directory / f"{name}.parquet")
        for name in FILES
        if (directory / f"{name}.parquet").is_file()
    }


def _g(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(float(v)) else f"{float(v):.4g}"


def _column_max(frame: pd.DataFrame, prefix: str) -> tuple[float, str, int] | None:
    """(max value, column suffix, step) over the columns ``<prefix>/*``."""
    cols = [c for c in frame.columns if c.startswith(prefix + "/")]
    if not cols or frame[cols].isna().all().all():
        return None
    stacked = frame.set_index("step")[cols].stack()
    (step, col), value = stacked.idxmax(), stacked.max()
    return float(value), col.removeprefix(prefix + "/"), int(step)


def summary_rows(data: dict[str, pd.DataFrame]) -> list[list[str]]:
    """Rows [diagnostic, value, detail] of the section's table."""
    rows = []
    grads = data.get("gradients")
    if grads is not None and "grad_norm/total" in grads:
        total = grads["grad_norm/total"]
        rows.append(
            [
                "gradient norm, total (before clipping)",
                _g(total.max()),
                f"median {_g(total.median())}, max at step {grads['step'][total.idxmax()]}",
            ]
        )
        top = _column_max(grads.drop(columns=["grad_norm/total"]), "grad_norm")
        if top:
            rows.append(["largest group gradient norm", _g(top[0]), f"{top[1]}, step {top[2]}"])
        top = _column_max(grads, "update_ratio")
        if top:
            rows.append(["largest update / weight ratio", _g(top[0]), f"{top[1]}, step {top[2]}"])
    noise = data.get("noise_scale")
    if noise is not None and len(noise):
        rows.append(
            [
                "gradient noise scale B_simple (samples)",
                _g(noise["b_simple"].iloc[-1]),
                f"last of {len(noise)} windows; batch {_g(noise['batch'].iloc[-1])}",
            ]
        )
    acts = data.get("activations")
    if acts is not None:
        top = _column_max(acts, "dead")
        if top:
            rows.append(["largest dead-channel fraction", _g(top[0]), f"{top[1]}, step {top[2]}"])
    spikes = data.get("loss_spikes")
    if spikes is not None:
        at = spikes.loc[spikes["loss_spikes/spike"] == 1, "step"].tolist()
        detail = "steps " + ", ".join(map(str, at[:10])) + (" ..." if len(at) > 10 else "")
        rows.append(["loss spikes", str(len(at)), detail if at else f"{len(spikes)} steps"])
    calib = data.get("calibration")
    if calib is not None and len(calib):
        for col, label in (
            ("calibration/ece", "validation ECE"),
            ("calibration/coverage_error", "validation quantile coverage error"),
        ):
            if col in calib:
                rows.append(
                    [
                        label,
                        _g(calib[col].iloc[-1]),
                        f"first epoch {_g(calib[col].iloc[0])}, {len(calib)} epochs",
                    ]
                )
    warn = data.get("warnings")
    counts = warn["condition"].value_counts().sort_index() if warn is not None else pd.Series()
    detail = ", ".join(f"{c} {n}" for c, n in counts.items()) or "none"
    rows.append(["threshold warnings", str(int(counts.sum())), detail])
    return rows


def diagnostics_plot(data: dict[str, pd.DataFrame]) -> bytes | None:
    """Gradient norm per group (log scale) over the loss with its spikes, one PNG."""
    grads, spikes = data.get("gradients"), data.get("loss_spikes")
    if grads is None and spikes is None:
        return None
    fig, ax = _figure(5.4)
    fig.delaxes(ax)
    axes = fig.subplots(2, 1, sharex=True)
    if grads is not None:
        for col in [c for c in grads.columns if c.startswith("grad_norm/")]:
            total = col == "grad_norm/total"
            axes[0].plot(
                grads["step"],
                grads[col],
                lw=2.0 if total else 1.0,
                color="black" if total else None,
                label=col.removeprefix("grad_norm/"),
            )
        axes[0].set(yscale="log", ylabel="gradient norm", title="Gradient norm per layer group")
        axes[0].legend(frameon=False, fontsize=7, ncol=4)
    if spikes is not None:
        axes[1].plot(spikes["step"], spikes["loss_spikes/loss"], lw=1.0, label="training loss")
        axes[1].plot(
            spikes["step"],
            spikes["loss_spikes/threshold"],
            lw=0.8,
            ls="--",
            color="0.5",
            label="spike threshold",
        )
        hit = spikes[spikes["loss_spikes/spike"] == 1]
        axes[1].scatter(
            hit["step"],
            hit["loss_spikes/loss"],
            color="red",
            zorder=3,
            label=f"spikes ({len(hit)})",
        )
        axes[1].set(ylabel="loss", title="Training loss and spikes")
        axes[1].legend(frameon=False, fontsize=7)
    axes[1].set_xlabel("optimiser step")
    for a in axes:
        a.grid(True, alpha=0.3)
    return _png(fig)


def diagnostics_section(run_dir: str | Path) -> tuple[list[Block], dict[str, tuple[str, bytes]]]:
    """(blocks, plots) of the section; ``([], {})`` for a run without ``diagnostics/``."""
    directory = Path(run_dir) / "diagnostics"
    data = _load(directory) if directory.is_dir() else {}
    if not data:
        return [], {}
    blocks: list[Block] = [
        ("h2", "Training diagnostics"),
        (
            "note",
            "Per step or epoch in diagnostics/*.parquet and TensorBoard (diagnostics/*); "
            "definitions and thresholds in docs/diagnostics.md.",
        ),
        ("table", ["diagnostic", "value", "detail"], summary_rows(data)),
    ]
    plots = {}
    png = diagnostics_plot(data)
    if png is not None:
        plots["diagnostics"] = (
            "Gradient norm per layer group (before clipping) and the "
            "training loss with its spike threshold.",
            png,
        )
        blocks.append(("img", "diagnostics"))
    landscape = directory / "loss_landscape.png"
    if landscape.is_file():
        plots["loss_landscape"] = (
            "Validation loss around the final weights along two "
            "filter-normalised random directions.",
            landscape.read_bytes(),
        )
        blocks.append(("img", "loss_landscape"))
    return blocks, plots
