"""Investor report of a finished run: `report.html` (self-contained) and `report.md` with plots.

Reads only the run directory (`metrics.json`, `backtest.parquet`, `predictions.parquet`,
`data.json`, optionally `walk_forward.parquet`, `drift.parquet`, `diagnostics/`, `run_id.txt` and
`.hydra/hydra.yaml`), so it can be re-run on any
finished run with `plusultra-report RUN_DIR`.

The attribution and scenario tables, and their return and causality conventions, are computed
in `plusultra.evaluation.report.analysis`; this module loads, renders and writes.
"""

from __future__ import annotations

import base64
import html
import math
import os
from pathlib import Path

import pandas as pd

from plusultra.evaluation.report.analysis import (
    CRASH_BARS,
    VOL_BARS,
    annual_sharpe,
    attribution,
    compound_return,
    guardrail_counts,
    scenarios,
    walk_forward_blocks,
)
from plusultra.evaluation.report.artifacts import RunArtifacts, load_run  # noqa: F401
from plusultra.evaluation.report.plots import growth_of_one, make_plots
from plusultra.evaluation.report.summary import BASELINE_LABELS, summary_rows, summary_table
from plusultra.execution import LABELS
from plusultra.io import write_bytes_atomic, write_text_atomic

MAX_SYMBOL_ROWS = 30  # attribution rows shown; beyond, the best and worst half each
ATTRIBUTION_NOTE = (
    "P&L is the sum over bars of position × the symbol's next-bar return (before costs, not "
    "compounded); shares are of the total over all symbols."
)
# --------------------------------------------------------------------------- rendering


def _pct(v: float, signed: bool = True) -> str:
    if v is None or not math.isfinite(float(v)):
        return "n/a"
    return f"{v:+.2%}" if signed else f"{v:.2%}"


def _num(v: float) -> str:
    return "n/a" if v is None or not math.isfinite(float(v)) else f"{v:.2f}"


FORMATS = {
    "bars": lambda v: f"{int(v)}",
    "bars_held": lambda v: f"{int(v)}",
    "pnl": _pct,
    "share": lambda v: _pct(v, signed=False),
    "hit_rate": lambda v: _pct(v, signed=False),
    "model_return": _pct,
    "buyhold_return": _pct,
    "model_sharpe": _num,
    "buyhold_sharpe": _num,
    "val_events": lambda v: "n/a" if v is None or not math.isfinite(float(v)) else f"{int(v)}",
    "test_events": lambda v: "n/a" if v is None or not math.isfinite(float(v)) else f"{int(v)}",
    "test_loss": lambda v: "n/a" if v is None or not math.isfinite(float(v)) else f"{v:.4f}",
}
HEADERS = {
    "pnl": "P&L (sum of w·r)",
    "share": "share of total",
    "hit_rate": "hit rate",
    "bars_held": "bars held",
    "model_return": "model return",
    "buyhold_return": "buy & hold return",
    "model_sharpe": "model Sharpe",
    "buyhold_sharpe": "buy & hold Sharpe",
    "fitted_to": "last training bar",
    "test_loss": "test loss",
    "val_events": "val interventions",
    "test_events": "test interventions",
}
GUARDRAILS_NOTE = (
    "The guardrails (guardrails=...) changed the model's positions this many times (bars; "
    "symbol-bars for symbol_cap, factor-bars for factor_cap); the baselines are not guarded. "
    "The summary's 'model, no guardrails' column is the same model traded without them; "
    "guardrails.parquet lists every intervention with its values and reason."
)


def _cells(df: pd.DataFrame, index: bool = True) -> tuple[list[str], list[list[str]]]:
    header = ([df.index.name or ""] if index else []) + [HEADERS.get(c, c) for c in df.columns]
    rows = []
    for key, rec in df.iterrows():
        cells = [str(key)] if index else []
        cells += [FORMATS.get(c, str)(rec[c]) for c in df.columns]
        rows.append(cells)
    return header, rows


def _trim(df: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if len(df) <= MAX_SYMBOL_ROWS:
        return df, ""
    half = MAX_SYMBOL_ROWS // 2
    note = f"The {half} largest and {half} smallest contributors of {len(df)} symbols."
    return pd.concat([df.head(half), df.tail(half)]), note


def _md(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _html_table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def profitability(run: RunArtifacts) -> str:
    """One paragraph: total and annual return, Sharpe (with intervals), drawdown, costs."""
    m, r = run.metrics, run.backtest["strategy_return"]

    def get(key: str, fallback: float = math.nan) -> float:
        v = m.get(f"test_{key}")
        return fallback if v is None or not math.isfinite(float(v)) else float(v)

    def interval(key: str, fmt) -> str:
        lo, hi = get(f"{key}_lo"), get(f"{key}_hi")
        return f" (95 % interval {fmt(lo)} to {fmt(hi)})" if math.isfinite(lo + hi) else ""

    growth = growth_of_one(r)
    sharpe = get("sharpe", annual_sharpe(r, run.periods_per_year))
    text = (
        f"Over {len(r)} test bars ({r.index[0].date()} to {r.index[-1].date()}) the model "
        f"returned {_pct(get('total_return', compound_return(r)))} in total, "
        f"{_pct(get('annual_return'))} a year{interval('annual_return', _pct)}, with a Sharpe "
        f"ratio of {_num(sharpe)}{interval('sharpe', _num)} and a maximum "
        f"drawdown of {_pct(get('max_drawdown', float((growth / growth.cummax() - 1).min())))}."
    )
    bench = get("buyhold_total_return")
    if math.isfinite(bench):
        text += f" Buy & hold returned {_pct(bench)} (Sharpe {_num(get('buyhold_sharpe'))})."
    if run.cost_columns:
        total_cost = float(run.backtest[run.cost_columns].sum().sum())
        share = get("cost_share")
        text += f" Trading costs totalled {total_cost:,.2f} in currency"
        text += (
            f", {_pct(share, signed=False)} of the P&L before costs."
            if math.isfinite(share)
            else "."
        )
    else:
        text += " Frictionless simulator: no costs."
    return text


CSS = """
body { font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #1d2733;
  max-width: 1000px; margin: 2rem auto; padding: 0 1.5rem; line-height: 1.5; }
h1 { font-size: 1.9rem; margin-bottom: .2rem; } h2 { margin-top: 2.2rem; font-size: 1.35rem;
  border-bottom: 2px solid #e3e8ee; padding-bottom: .3rem; } h3 { font-size: 1.1rem; }
.meta { color: #5b6b7c; font-size: .9rem; } .lead { font-size: 1.05rem; background: #f4f7fa;
  border-left: 4px solid #2b6cb0; padding: .8rem 1rem; }
table { border-collapse: collapse; font-size: .86rem; margin: .6rem 0 1rem; }
th, td { padding: .28rem .7rem; text-align: right; border-bottom: 1px solid #e3e8ee; }
th:first-child, td:first-child { text-align: left; } thead th { background: #f4f7fa; }
figure { margin: 1rem 0 1.6rem; } img { max-width: 100%; }
figcaption { color: #5b6b7c; font-size: .85rem; } .note { color: #5b6b7c; font-size: .85rem; }
"""


def _sections(run: RunArtifacts) -> list[tuple[str, list[tuple[str, str, list, list]]]]:
    """(heading, [(subheading, note, header, rows)]) of the attribution and scenario tables."""
    by_symbol, by_sector = attribution(run.predictions, run.sectors)
    shown, note = _trim(by_symbol)
    attr = [
        ("By symbol", f"{ATTRIBUTION_NOTE} {note}".strip(), *_cells(shown)),
        ("By sector", "", *_cells(by_sector)),
    ]
    scen = scenarios(run.backtest, run.periods_per_year)
    titles = {
        "by_year": ("By calendar year", "Compounded returns within each year."),
        "volatility": (
            "Volatility regime",
            f"High volatility: buy & hold's trailing {VOL_BARS}-bar volatility (returns known at "
            "the bar) above its expanding median; warm-up bars lack that history.",
        ),
        "crashes": (
            f"Worst buy & hold {CRASH_BARS}-bar windows",
            "Non-overlapping; the model's compounded return over the same bars.",
        ),
    }
    tables = []
    for key, frame in scen.items():
        title, text = titles[key]
        tables.append((title, text, *_cells(frame, index=key != "crashes")))
    if run.walk_forward is not None and len(run.walk_forward) > 1:
        text = (
            "Each block is predicted by one model: block 0 by the model trained on the train "
            "segment, every later block by a refit on the windows whose decision bars end at "
            "the last training bar, an embargo of window + horizon bars or more before the "
            "block, so every label it learned from was known when the block started."
        )
        blocks = walk_forward_blocks(run.backtest, run.walk_forward, run.periods_per_year)
        tables.append(("By walk-forward block", text, *_cells(blocks)))
    sections = [("Attribution", attr), ("Scenarios", tables)]
    counts = guardrail_counts(run.metrics)
    if counts is not None:
        table = ("Interventions by rule", GUARDRAILS_NOTE, *_cells(counts))
        sections.append(("Guardrails", [table]))
    return sections


def _header_lines(run: RunArtifacts) -> list[str]:
    lines = [f"Run directory: {run.run_dir}"]
    if run.run_id:
        lines.append(f"Run id: {run.run_id}")
    if run.overrides or run.choices:  # as typed, in order; none: the default experiment
        lines.append("Overrides: " + (" ".join(run.overrides) or "none (the default experiment)"))
    n_params = run.metrics.get("n_params", math.nan)
    if isinstance(n_params, int | float) and math.isfinite(n_params):
        lines.append(f"Model size: {int(n_params):,} parameters")
    if run.choices:
        lines.append("Configuration: " + ", ".join(f"{k}={v}" for k, v in run.choices.items()))
    lines.append(f"Annualisation: {run.periods_per_year:g} bars a year")
    if isinstance(run.metrics.get("execution"), str):  # the fill timing; same_close is flagged
        mode = run.metrics["execution"]
        lines.append(f"Execution: {LABELS.get(mode, mode)}")
    segs = "; ".join(f"{k} {a} to {b}" for k, (a, b) in run.segment_dates.items())
    if segs:
        lines.append(f"Segments: {segs}")
    return lines


def render_html(
    run: RunArtifacts, plots: dict[str, tuple[str, bytes]], extra: tuple[list, dict] = ([], {})
) -> str:
    """The self-contained HTML report (inline CSS, plots as data: URIs); `extra` is (blocks,
    plots) of the feature-drift (`report.drift`) and training-diagnostics
    (`report.diagnostics`) sections, rendered last."""
    from plusultra.evaluation.report.blocks import html_blocks  # blocks imports this module

    e = html.escape
    metrics_rows = summary_rows(run.metrics, loss=run.choices.get("loss"))
    header = ["metric", "val", "test: model"]
    header += [BASELINE_LABELS[b] for b in BASELINE_LABELS if f"test_{b}_sharpe" in run.metrics]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>PlusUltra report {e(run.run_id or run.run_dir.name)}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>PlusUltra run report</h1>",
        *(f'<p class="meta">{e(line)}</p>' for line in _header_lines(run)),
        "<h2>Profitability</h2>",
        f'<p class="lead">{e(profitability(run))}</p>',
        "<h2>Summary</h2>",
        _html_table(header, metrics_rows),
        "<h2>Performance</h2>",
    ]
    if not run.cost_columns:
        parts.append('<p class="note">Frictionless: no costs.</p>')
    for caption, png in plots.values():
        uri = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        parts.append(
            f'<figure><img src="{uri}" alt="{e(caption)}"><figcaption>{e(caption)}</figcaption>'
            "</figure>"
        )
    for heading, tables in _sections(run):
        parts.append(f"<h2>{e(heading)}</h2>")
        for title, note, head, rows in tables:
            parts.append(f"<h3>{e(title)}</h3>")
            if note:
                parts.append(f'<p class="note">{e(note)}</p>')
            parts.append(_html_table(head, rows))
    parts += html_blocks(*extra)
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def render_markdown(
    run: RunArtifacts,
    plots: dict[str, tuple[str, bytes]],
    links: dict,
    extra: tuple[list, dict] = ([], {}),
) -> str:
    """The Markdown report; `links` maps plot name -> relative PNG path; `extra` as in
    `render_html`."""
    from plusultra.evaluation.report.blocks import markdown_blocks

    lines = ["# PlusUltra run report", ""]
    lines += [f"{line}  " for line in _header_lines(run)]
    lines += ["", "## Profitability", "", profitability(run), "", "## Summary", ""]
    lines += [
        summary_table(run.metrics, markdown=True, loss=run.choices.get("loss")),
        "",
        "## Performance",
        "",
    ]
    if not run.cost_columns:
        lines += ["Frictionless: no costs.", ""]
    for name, (caption, _) in plots.items():
        lines += [f"![{caption}]({links[name]})", "", f"*{caption}*", ""]
    for heading, tables in _sections(run):
        lines += [f"## {heading}", ""]
        for title, note, head, rows in tables:
            lines += [f"### {title}", ""] + ([note, ""] if note else []) + [_md(head, rows), ""]
    return "\n".join(lines + markdown_blocks(*extra, links))


def write_reports(
    run_dir: str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    metrics: dict[str, float] | None = None,
) -> tuple[Path, Path]:
    """Write `report.html`, `report.md` and `report/*.png` of a finished run (atomically).

    Args:
        run_dir: the finished run directory.
        out_dir: where to write (default `run_dir`).
        metrics: the run's metrics in memory (a run writes `metrics.json` after its reports);
            None reads `metrics.json`.

    Returns:
        (report.html, report.md) paths.

    Raises:
        DataError: the run is not finished (a file is missing).
    """
    run = load_run(run_dir, metrics)
    out = Path(out_dir) if out_dir is not None else run.run_dir
    from plusultra.evaluation.report.diagnostics import diagnostics_section
    from plusultra.evaluation.report.drift import drift_section

    plots = make_plots(run)
    extra = diagnostics_section(run.run_dir)  # ([], {}) for a run without diagnostics/
    drift = drift_section(run.run_dir)  # ([], {}) for a run without drift.parquet
    extra = (drift[0] + extra[0], {**drift[1], **extra[1]})  # drift, then diagnostics
    links = {}
    for name, (_, png) in {**plots, **extra[1]}.items():
        write_bytes_atomic(out / "report" / f"{name}.png", png)
        links[name] = f"report/{name}.png"
    html_path = write_text_atomic(out / "report.html", render_html(run, plots, extra))
    md_path = write_text_atomic(out / "report.md", render_markdown(run, plots, links, extra))
    return html_path, md_path
