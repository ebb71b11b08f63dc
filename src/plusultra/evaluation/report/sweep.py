"""Sweep report of a multirun: `sweep_report.html` (self-contained) and `sweep_report.md`.

`plusultra-report SWEEP_DIR`. For an Optuna sweep: the study (name, storage without password,
directions, trials by state, search space), the optimisation history, fANOVA parameter
importance, the Pareto front (several objectives) or the objective against its most important
parameter (one objective), and the top trials ranked on the validation objective with their
validation and test metrics side by side. A plain grid (`-m seed=1,2,3`) gets its jobs table
only. Reads the sweep dir's job dirs and the study's storage (`sweep_data`); computes in
`sweep_analysis`; plots in `sweep_plots`; this module lays out, renders and writes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from optuna.distributions import CategoricalDistribution
from optuna.trial import TrialState

from plusultra.evaluation.report import sweep_plots
from plusultra.evaluation.report.blocks import Block, render_html, render_markdown
from plusultra.evaluation.report.sweep_analysis import (
    best_so_far,
    complete_trials,
    describe_distribution,
    directions,
    importance,
    last_value,
    objective_names,
    pareto_front,
    rank_trials,
    search_space,
    state_counts,
)
from plusultra.evaluation.report.sweep_data import Job, Sweep, load_sweep
from plusultra.io import write_bytes_atomic, write_text_atomic

TOP_TRIALS = 10  # default rows of the top-trials table (`plusultra-report --top`)
SHOWN = ("sharpe", "max_drawdown", "loss", "total_return", "sortino", "rank_ic")  # val | test
RANKING_NOTE = (
    "Ranked on the validation objective told to the study{how}. The test columns are shown "
    "beside it, never used to rank or select."
)
ELSEWHERE_NOTE = (
    "A job named <sweep dir>/<job> ran in another invocation of the study (a resumed sweep "
    "has one sweep dir per invocation); its metrics come from its catalogue row."
)
MISSING_NOTE = (
    "Job 'not found': no job dir here and no catalogue row (optuna.study, optuna.trial) for "
    "that trial, so its metrics are n/a."
)


def _fmt(v: object) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, int | float):
        return str(v)
    return f"{v:.4g}"


def shown_metrics(objectives: list[str], jobs: list[Job]) -> list[str]:
    """Metric stems (`sharpe`, ...) shown as `val_x | test_x`: the objectives' first, then
    SHOWN, each where some job has its val or test value."""
    stems = [o.removeprefix("val_") for o in objectives] + list(SHOWN)
    have = set().union(*(j.metrics for j in jobs)) if jobs else set()
    out = []
    for s in stems:
        if s not in out and (f"val_{s}" in have or f"test_{s}" in have):
            out.append(s)
    return out


def _pairs(stems: list[str]) -> list[str]:
    return [f"{split}_{s}" for s in stems for split in ("val", "test")]


def _header(sweep: Sweep) -> list[str]:
    lines = [f"Sweep directory: {sweep.sweep_dir}", f"Sweeper: {sweep.sweeper}"]
    done = sum(j.completed for j in sweep.jobs)
    lines.append(f"Jobs in this directory: {len(sweep.jobs)} ({done} with metrics.json)")
    return lines


def _study_blocks(sweep: Sweep, top: int) -> tuple[list[str], list[Block], dict]:
    """Header lines, blocks and plots of an Optuna sweep, in page order."""
    study = sweep.study
    names, dirs = objective_names(study, sweep.optimized_metric), directions(study)
    header = [
        f"Study: {study.study_name}",
        f"Storage: {sweep.storage}",
        "Directions: " + ", ".join(f"{d} {n}" for d, n in zip(dirs, names, strict=True)),
        "Trials: " + ", ".join(f"{v} {k}" for k, v in state_counts(study).items()),
    ]
    rows = [[k, describe_distribution(d)] for k, d in search_space(study).items()]
    blocks: list[Block] = [("h2", "Search space")]
    blocks.append(("table", ["parameter", "distribution"], rows) if rows else ("note", "None."))
    plots: dict[str, tuple[str, bytes]] = {}
    blocks += _history_blocks(study, names, dirs, plots)
    scores = [_importance_blocks(study, i, name, blocks, plots) for i, name in enumerate(names)]
    front = pareto_front(study)
    if len(names) > 1:
        blocks += _pareto_blocks(study, names, dirs, front, plots)
    else:
        blocks += _param_blocks(study, names[0], scores[0], plots)
    blocks += _top_blocks(sweep, names, front, top)
    return header, blocks, plots


def _history_blocks(study, names: list[str], dirs: list[str], plots: dict) -> list[Block]:
    done = complete_trials(study)
    blocks: list[Block] = [("h2", "Optimisation history")]
    if not done:
        return blocks + [("note", "No complete trial: nothing to plot.")]
    pruned = [  # one objective: a pruned trial's last reported value is on its scale
        (t.number, last_value(t))
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if len(names) == 1 and last_value(t) is not None
    ]
    for i, (name, d) in enumerate(zip(names, dirs, strict=True)):
        values = [t.values[i] for t in done]
        png = sweep_plots.history(
            [t.number for t in done], values, best_so_far(values, d), pruned, name, d
        )
        caption = f"{name} of each complete trial and the best so far ({d})."
        if len(names) > 1:
            caption += " Best so far of this objective alone, ignoring the others."
        plots[f"history_{i}"] = (caption, png)
        blocks.append(("img", f"history_{i}"))
    return blocks


def _importance_blocks(
    study, i: int, name: str, blocks: list[Block], plots: dict
) -> dict[str, float] | None:
    """Append objective `i`'s importance (table and bars, or the reason there is none)."""
    if i == 0:
        blocks.append(("h2", "Parameter importance (fANOVA)"))
    scores, note = importance(study, i)
    blocks += [("h3", name), ("note", note)]
    if scores:
        rows = [[k, f"{v:.3f}"] for k, v in scores.items()]
        blocks += [("table", ["parameter", "importance"], rows), ("img", f"importance_{i}")]
        png = sweep_plots.importance(scores, name)
        plots[f"importance_{i}"] = (f"fANOVA importance for {name}.", png)
    return scores


def _pareto_blocks(
    study, names: list[str], dirs: list[str], front: set[int], plots: dict
) -> list[Block]:
    done = complete_trials(study)
    blocks: list[Block] = [("h2", "Pareto front")]
    if not done:
        return blocks + [("note", "No complete trial: no front.")]
    text = f"{len(front)} of {len(done)} complete trials on the front: "
    text += ", ".join(str(n) for n in sorted(front))
    if len(names) > 2:
        text += f". The plot shows the first two of {len(names)} objectives"
    points = {t.number: (t.values[0], t.values[1]) for t in done}
    plots["pareto"] = (
        f"Validation {names[0]} ({dirs[0]}) against {names[1]} ({dirs[1]}); red: the Pareto "
        "front (no other trial is at least as good on every objective and better on one), "
        "labelled with trial numbers.",
        sweep_plots.pareto(points, front, (names[0], names[1])),
    )
    return blocks + [("note", text + "."), ("img", "pareto")]


def _param_blocks(study, name: str, scores: dict | None, plots: dict) -> list[Block]:
    blocks: list[Block] = [("h2", "Objective against the most important parameter")]
    if not scores:
        return blocks + [("note", "Skipped: no parameter importance to pick the parameter.")]
    param = next(iter(scores))  # sorted by importance, largest first
    dist = search_space(study)[param]
    done = [t for t in complete_trials(study) if param in t.params]
    png = sweep_plots.against_param(
        [t.params[param] for t in done],
        [t.values[0] for t in done],
        param,
        name,
        log=bool(getattr(dist, "log", False)),
        categorical=isinstance(dist, CategoricalDistribution),
    )
    caption = f"{name} of each complete trial against {param}, the parameter fANOVA ranks first."
    plots["objective_vs_param"] = (caption, png)
    return blocks + [("img", "objective_vs_param")]


def _top_blocks(sweep: Sweep, names: list[str], front: set[int], top: int) -> list[Block]:
    ranked = rank_trials(sweep.study)
    jobs = [*sweep.elsewhere, *sweep.jobs]  # this dir's job wins over a catalogue row
    by_trial = {j.trial: j for j in jobs if j.trial is not None}
    here = {id(j) for j in sweep.jobs}
    stems = shown_metrics(names, jobs)
    params = list(search_space(sweep.study))
    multi = len(names) > 1
    head = ["rank", "trial", "job"] + (["Pareto"] if multi else [])
    head += [f"objective: {n}" for n in names] + params
    head += _pairs(stems)
    rows, other, missing = [], False, False
    for rank, t in enumerate(ranked[:top], start=1):
        job = by_trial.get(t.number)
        metrics = job.metrics if job is not None else {}
        if job is None:
            where, missing = "not found", True
        elif id(job) in here:
            where = str(job.num)
        else:  # from the catalogue: <its sweep dir>/<job>
            where, other = f"{job.run_dir.parent.name}/{job.num}", True
        row = [str(rank), str(t.number), where]
        row += (["yes" if t.number in front else ""] if multi else []) + [_fmt(v) for v in t.values]
        row += [_fmt(t.params.get(p)) for p in params]
        rows.append(row + [_fmt(metrics.get(m)) for m in _pairs(stems)])
    how = "; several objectives: the Pareto front first, then by the first objective"
    blocks: list[Block] = [
        ("h2", f"Top trials (best {min(top, len(ranked))} of {len(ranked)} complete)"),
        ("note", RANKING_NOTE.format(how=how if multi else "")),
    ]
    if other:
        blocks.append(("note", ELSEWHERE_NOTE))
    if missing:
        blocks.append(("note", MISSING_NOTE))
    blocks.append(("table", head, rows) if rows else ("note", "No complete trial."))
    return blocks


def _grid_blocks(sweep: Sweep) -> list[Block]:
    """Jobs of a sweep without a study: the overrides that differ between jobs, the metrics."""
    keyed = [dict(o.split("=", 1) for o in j.overrides if "=" in o) for j in sweep.jobs]
    keys = list(dict.fromkeys(k for d in keyed for k in d))
    swept = [k for k in keys if len({d.get(k) for d in keyed}) > 1]
    stems = shown_metrics(sweep.optimized_metric, sweep.jobs)
    head = ["job", *swept, "status", *_pairs(stems)]
    rows = [
        [str(j.num), *(d.get(k, "") for k in swept)]
        + ["completed" if j.completed else "no metrics.json"]
        + [_fmt(j.metrics.get(m)) for m in _pairs(stems)]
        for j, d in zip(sweep.jobs, keyed, strict=True)
    ]
    return [
        (
            "note",
            f"Not an Optuna sweep ({sweep.sweeper}): no study, so no history, importance, "
            "Pareto or ranking sections; every job with its validation and test metrics.",
        ),
        ("h2", "Jobs"),
        ("table", head, rows),
    ]


def write_sweep_reports(
    sweep: Sweep | str | os.PathLike,
    out_dir: str | os.PathLike | None = None,
    top: int = TOP_TRIALS,
) -> tuple[Path, Path]:
    """Write `sweep_report.html`, `sweep_report.md` and `sweep_report/*.png` (atomically).

    Everything is computed before the first write, so bad input writes nothing.

    Args:
        sweep: a multirun sweep dir (`outputs/multiruns/<date>/<time>_<id>/`), or one
            loaded with `load_sweep` (and its `elsewhere` jobs filled).
        out_dir: where to write (default `sweep_dir`).
        top: rows of the top-trials table (>= 1).

    Returns:
        (sweep_report.html, sweep_report.md) paths.

    Raises:
        DataError: not a sweep dir, or its study cannot be found.
    """
    if top < 1:
        raise ValueError(f"top must be >= 1, got {top}")
    if not isinstance(sweep, Sweep):
        sweep = load_sweep(sweep)
    header = _header(sweep)
    if sweep.study is not None:
        study_lines, blocks, plots = _study_blocks(sweep, top)
        header = study_lines + header
    else:
        blocks, plots = _grid_blocks(sweep), {}
    out = Path(out_dir) if out_dir is not None else sweep.sweep_dir
    title = "PlusUltra sweep report"
    page = render_html(header, blocks, plots, title)
    links = {name: f"sweep_report/{name}.png" for name in plots}
    text = render_markdown(header, blocks, plots, links, title)
    for name, (_, png) in plots.items():
        write_bytes_atomic(out / links[name], png)
    html_path = write_text_atomic(out / "sweep_report.html", page)
    return html_path, write_text_atomic(out / "sweep_report.md", text)
