"""Run outputs: the flat metrics dict, metrics.json and the summary table."""

from __future__ import annotations

import math
import os
from pathlib import Path

from plusultra.evaluation.backtest.engine import BacktestResult
from plusultra.evaluation.metrics.risk import IR_BENCHMARKS as IR_LABELS
from plusultra.io import write_json_atomic

# (metrics key, label, format) of the summary table, in display order.
SUMMARY_ROWS = (
    ("loss", "loss", "{:.4f}"),  # labelled "loss (<name>)" with the loss the run trained on
    ("naive_loss", "loss of a zero forecast", "{:.4f}"),
    ("ic", "IC (next bar)", "{:+.4f}"),
    ("rank_ic", "rank IC (next bar)", "{:+.4f}"),
    ("sharpe", "Sharpe", "{:.2f}"),
    ("sortino", "Sortino", "{:.2f}"),
    ("total_return", "total return", "{:+.2%}"),
    ("annual_return", "annual return", "{:+.2%}"),
    ("annual_volatility", "annual volatility", "{:.2%}"),
    ("max_drawdown", "max drawdown", "{:.2%}"),
    ("calmar", "Calmar", "{:.2f}"),
    ("hit_rate", "hit rate", "{:.1%}"),
    ("turnover", "turnover / bar", "{:.3f}"),
    ("max_drawdown_duration", "max DD duration (bars)", "{:.0f}"),
    ("cvar_95", "CVaR 95% (per bar)", "{:+.2%}"),
    ("information_ratio", "information ratio vs cash|B&H", "{:.2f}"),
    ("excess_annual_return", "excess return / year vs cash|B&H", "{:+.2%}"),
    ("cost_share", "costs / gross P&L", "{:.1%}"),
    ("cost_drag", "cost drag / year", "{:.2%}"),
)
# Baseline columns, in display order, with their headers.
BASELINE_LABELS = {
    "unguarded": "model, no guardrails",  # only with guardrails on: the positions before them
    "buyhold": "buy & hold",
    "equal_weight": "equal weight",
    "momentum": "12-1 momentum",
    "mean_reversion": "mean reversion",
    "ridge": "ridge",
    "lightgbm": "LightGBM",
}


def _value(v: float | str) -> float | str:
    return v if isinstance(v, str) else float(v)


def flat_metrics(
    val_loss: float,
    test_loss: float,
    result: BacktestResult,
    extra: dict[str, float],
    val_result: BacktestResult | None = None,
) -> dict[str, float | str]:
    """`split_metric` names: val_loss, test_loss, test_sharpe, test_buyhold_sharpe, ... and,
    given the validation backtest, val_sharpe, val_buyhold_sharpe, ... (same keys, val_).

    Numbers, except the labels `execution` (the simulator's fill timing: next_open,
    next_close or same_close) and `*_information_ratio_benchmark` (cash or buyhold).
    """
    out = {"val_loss": float(val_loss), "test_loss": float(test_loss)}
    out["execution"] = result.execution
    for split, res in (("val", val_result), ("test", result)):
        if res is not None:
            out.update(segment_metrics(split, res))
    out.update({k: float(v) for k, v in extra.items()})
    return out


def segment_metrics(split: str, result: BacktestResult) -> dict[str, float | str]:
    """One segment's backtest metrics as `split_metric` (val_sharpe) and its baselines' as
    `split_baseline_metric` (val_buyhold_sharpe)."""
    out = {f"{split}_{k}": _value(v) for k, v in result.metrics.items()}
    for name, metrics in result.baselines.items():
        out.update({f"{split}_{name}_{k}": _value(v) for k, v in metrics.items()})
    return out


def _fmt(value: float | str | None, pattern: str, missing: str = "n/a") -> str:
    if value is None:
        return missing  # not recorded (e.g. a run from before validation backtests)
    if isinstance(value, str) or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return pattern.format(value)


def _interval(metrics: dict, prefix: str, pattern: str) -> str:
    """``[lo, hi]``: the stationary-bootstrap 95% interval of ``prefix``'s Sharpe; "" without."""
    lo, hi = metrics.get(f"{prefix}sharpe_lo"), metrics.get(f"{prefix}sharpe_hi")
    return "" if lo is None else f"[{_fmt(lo, pattern)}, {_fmt(hi, pattern)}]"


def _ir_cell(metrics: dict, prefix: str, pattern: str, missing: str = "n/a") -> str:
    """The information ratio with its benchmark, e.g. ``0.42 (cash)``."""
    cell = _fmt(metrics.get(f"{prefix}information_ratio"), pattern, missing)
    bench = metrics.get(f"{prefix}information_ratio_benchmark")
    return f"{cell} ({IR_LABELS.get(bench, bench)})" if isinstance(bench, str) else cell


def _baselines(metrics: dict[str, float]) -> list[str]:
    return [b for b in BASELINE_LABELS if f"test_{b}_sharpe" in metrics]


def summary_rows(
    metrics: dict[str, float], baselines: list[str] | None = None, loss: str | None = None
) -> list[list[str]]:
    """Rows [label, val, test, baseline...] of the summary table (val: the model on the
    validation segment, what a sweep selects on); `loss` names the loss."""
    baselines = _baselines(metrics) if baselines is None else baselines
    rows = []
    for key, label, pattern in SUMMARY_ROWS:
        label = f"{label} ({loss})" if key == "loss" and loss else label
        if key in ("loss", "naive_loss"):
            rows.append(
                [
                    label,
                    _fmt(metrics.get(f"val_{key}"), pattern),
                    _fmt(metrics.get(f"test_{key}"), pattern),
                ]
                + ["" for _ in baselines]
            )
            continue
        if key == "information_ratio":  # each book against its like-for-like benchmark
            row = [
                label,
                _ir_cell(metrics, "val_", pattern, ""),
                _ir_cell(metrics, "test_", pattern),
            ]
            row += [_ir_cell(metrics, f"test_{b}_", pattern) for b in baselines]
            rows.append(row)
            continue
        row = [
            label,
            _fmt(metrics.get(f"val_{key}"), pattern, ""),
            _fmt(metrics.get(f"test_{key}"), pattern),
        ]
        row += [_fmt(metrics.get(f"test_{b}_{key}"), pattern) for b in baselines]
        rows.append(row)
        if key == "sharpe" and f"test_{key}_lo" in metrics:  # stationary-bootstrap intervals
            rows.append(
                ["  95% interval", "", _interval(metrics, "test_", pattern)]
                + [_interval(metrics, f"test_{b}_", pattern) for b in baselines]
            )
    return rows


def summary_table(
    metrics: dict[str, float], markdown: bool = False, loss: str | None = None
) -> str:
    """The val / test table, the model beside every baseline, as aligned text or Markdown.

    `loss` (the loss group's choice, e.g. "pinball") names the loss in the first row.
    """
    baselines = _baselines(metrics)
    header = ["metric", "val", "test: model", *(BASELINE_LABELS[b] for b in baselines)]
    rows = summary_rows(metrics, baselines, loss)
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = zip(row, widths, strict=True)
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(cells))

    return "\n".join([fmt(header), "  ".join("-" * w for w in widths), *map(fmt, rows)])


def write_metrics(run_dir: str | os.PathLike, metrics: dict[str, float]) -> Path:
    return write_json_atomic(Path(run_dir) / "metrics.json", metrics)
