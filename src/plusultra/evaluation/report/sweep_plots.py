"""Plots of the sweep report: optimisation history, fANOVA importance, Pareto front, and the
objective against the most important parameter. PNG bytes, as in the run report's plots."""

from __future__ import annotations

import math

import numpy as np

from plusultra.evaluation.report.plots import _figure, _png


def history(
    numbers: list[int],
    values: list[float],
    best: list[float],
    pruned: list[tuple[int, float]],
    name: str,
    direction: str,
) -> bytes:
    """One objective per trial number, the best-so-far step line, pruned trials' last values.

    Args:
        numbers, values: complete trials' numbers and this objective's value.
        best: best-so-far over `numbers`, in the same order.
        pruned: (number, last reported value) of pruned trials that reported one.
        name, direction: the objective's metric and `minimize` | `maximize`.
    """
    from matplotlib.ticker import MaxNLocator

    fig, ax = _figure(3.2)
    ax.scatter(numbers, values, s=22, color="C0", label="complete trial", zorder=3)
    ax.step(numbers, best, where="post", color="C3", lw=1.6, label=f"best so far ({direction})")
    if pruned:
        px, py = zip(*pruned, strict=True)
        ax.scatter(px, py, marker="x", color="0.5", label="pruned (last value)", zorder=2)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel=name, title=f"Optimisation history: {name}")
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def importance(scores: dict[str, float], name: str) -> bytes:
    """Horizontal bars of the fANOVA importance of each parameter (sum 1), largest on top."""
    items = sorted(scores.items(), key=lambda kv: kv[1])
    fig, ax = _figure(max(1.8, 0.35 * len(items) + 1.0))
    ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
    ax.set(xlabel="fANOVA importance (share of variance)", title=f"Parameter importance: {name}")
    ax.set_xlim(0, 1)
    return _png(fig)


def pareto(
    points: dict[int, tuple[float, float]], front: set[int], names: tuple[str, str]
) -> bytes:
    """Objective 1 against objective 2 of every complete trial, the Pareto front highlighted.

    Args:
        points: trial number -> (objective 1, objective 2).
        front: numbers of the trials on the Pareto front.
        names: the two objectives' metric names.
    """
    fig, ax = _figure(4.2)
    rest = [p for n, p in points.items() if n not in front]
    if rest:
        ax.scatter(*zip(*rest, strict=True), s=22, color="0.6", label="dominated trial")
    on = sorted((points[n], n) for n in front)
    ax.plot([p[0] for p, _ in on], [p[1] for p, _ in on], "o-", color="C3", label="Pareto front")
    for (x, y), n in on:
        ax.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set(xlabel=names[0], ylabel=names[1], title="Pareto front (validation)")
    ax.legend(frameon=False, fontsize=8)
    return _png(fig)


def against_param(
    xs: list[object], ys: list[float], param: str, name: str, log: bool, categorical: bool
) -> bytes:
    """The objective of every complete trial against one parameter's sampled value."""
    fig, ax = _figure(3.2)
    if categorical:
        labels = sorted({str(x) for x in xs})
        pos = {label: i for i, label in enumerate(labels)}
        jitter = np.linspace(-0.15, 0.15, num=len(xs)) if len(xs) > 1 else [0.0]
        ax.scatter([pos[str(x)] + j for x, j in zip(xs, jitter, strict=True)], ys, s=22)
        ax.set_xticks(range(len(labels)), labels)
    else:
        ax.scatter([float(x) for x in xs], ys, s=22)
        if log and all(float(x) > 0 and math.isfinite(float(x)) for x in xs):
            ax.set_xscale("log")
    ax.set(xlabel=param, ylabel=name, title=f"{name} against {param}")
    return _png(fig)
