"""A run's objective: the validation metric(s) a sweep selects on, their directions and values.

``optimized_metric`` is one ``val_*`` key of ``metrics.json`` (single objective) or a list of
them (multi-objective, e.g. ``[val_sharpe, val_max_drawdown]``); ``optimized_direction`` is
``minimize`` | ``maximize`` | null, or a list of the same length whose null entries are derived
from the metric's name. A test metric is never an objective. With several objectives there is no
single best trial: the best are the trials on the Pareto front (``pareto_front``).

The catalogue stores a list-valued config key as JSON text (``'["val_sharpe", ...]'``);
``objective_metrics`` and ``objective_directions`` read both forms.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np

from plusultra.errors import ConfigError

DIRECTIONS = ("minimize", "maximize")
# Metric-name endings (after the split prefix) whose direction is unambiguous.
_MINIMIZE = ("loss", "error", "volatility", "turnover", "duration", "cost_share")
_MAXIMIZE = (
    "sharpe",
    "sortino",
    "return",
    "calmar",
    "hit_rate",
    "ic",
    "ic_ir",
    "information_ratio",
    "max_drawdown",  # a negative fraction: closer to 0 is better
    "cvar_95",  # signed per-bar return of the worst 5 %: higher is better
)


def as_list(value: object) -> list | None:
    """A list from a list/tuple/ListConfig or from its catalogue JSON text; None otherwise."""
    if isinstance(value, str) and value.startswith("["):
        try:
            parsed = json.loads(value)
        except ValueError:
            return None
        return parsed if isinstance(parsed, list) else None
    if isinstance(value, Sequence) and not isinstance(value, str):  # list, tuple, ListConfig
        return list(value)
    return None


def objective_metrics(metric: object) -> list[str]:
    """The objective metric names: ``[metric]`` for one name, the list itself for several.

    Raises:
        ConfigError: the list is empty, a name is not a ``val_*`` metric, or one repeats.
    """
    names = as_list(metric)
    names = [metric] if names is None else names
    if not names:
        raise ConfigError("optimized_metric=[]: name at least one val_* metric")
    for name in names:
        if not isinstance(name, str) or not name.startswith("val_"):
            raise ConfigError(
                f"optimized_metric={name!r}: a sweep selects on the validation segment, so "
                "every objective must be a val_* metric (e.g. val_loss, val_sharpe); test_* "
                "metrics are only reported"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"optimized_metric={names}: a metric is listed twice")
    return [str(n) for n in names]


def objective_direction(metric: str, direction: str | None = None) -> str:
    """The direction a sweep optimises ``metric`` in.

    Args:
        metric: the objective, a ``val_*`` key of ``metrics.json`` (``optimized_metric``).
        direction: ``minimize`` | ``maximize``; None derives it from the name: minimize for
            names ending in loss, error, volatility, turnover, duration or cost_share;
            maximize for Sharpe, Sortino, returns, Calmar, hit rate, IC, information ratio,
            max drawdown (a negative fraction) and CVaR (a signed return).

    Raises:
        ConfigError: ``metric`` is not a validation metric, ``direction`` is not one of
            ``DIRECTIONS``, or it is None and the name does not say.
    """
    if not isinstance(metric, str) or not metric.startswith("val_"):
        raise ConfigError(
            f"optimized_metric={metric!r}: a sweep selects on the validation segment, so the "
            "objective must be a val_* metric (e.g. val_loss, val_sharpe); test_* metrics are "
            "only reported"
        )
    if direction is not None:
        if direction not in DIRECTIONS:
            raise ConfigError(f"optimized_direction={direction!r}; valid: {list(DIRECTIONS)}")
        return direction
    if metric.endswith(_MINIMIZE):
        return "minimize"
    if metric.endswith(_MAXIMIZE):
        return "maximize"
    raise ConfigError(
        f"optimized_direction is null and {metric!r} does not say whether lower or higher is "
        "better; set optimized_direction=minimize or optimized_direction=maximize"
    )


def objective_directions(metric: object, direction: object = None) -> list[str]:
    """One direction per objective metric (``objective_metrics``), null entries from the name.

    Args:
        metric: ``optimized_metric``: a name or a list of names.
        direction: ``optimized_direction``: null, one direction (single objective only) or a
            list as long as ``metric``.

    Raises:
        ConfigError: as ``objective_metrics`` and ``objective_direction``, or the two lists
            differ in length, or a single direction is given for several metrics.
    """
    names = objective_metrics(metric)
    given = as_list(direction)
    if given is None:
        if direction is not None and len(names) > 1:
            raise ConfigError(
                f"optimized_direction={direction!r} for {len(names)} metrics {names}: give a "
                "list with one direction (or null) per metric"
            )
        given = [direction] * len(names)
    if len(given) != len(names):
        raise ConfigError(
            f"optimized_direction has {len(given)} entries {given} but optimized_metric has "
            f"{len(names)} {names}; give one direction (or null) per metric"
        )
    return [objective_direction(n, d) for n, d in zip(names, given, strict=True)]


def objective_value(metrics: Mapping[str, float], metric: object) -> float | list[float]:
    """The value(s) a run returns to the sweeper: ``metrics[metric]``, or one per listed metric.

    Returns:
        A float for a single metric name, a list of floats (in ``metric`` order) for a list.

    Raises:
        ConfigError: the run produced no such metric (the message lists the val_* keys).
    """
    names = objective_metrics(metric)
    for name in names:
        if name not in metrics:
            valid = sorted(k for k in metrics if k.startswith("val_"))
            raise ConfigError(
                f"optimized_metric={name!r} is not a metric of this run; valid: {valid}"
            )
    values = [metrics[n] for n in names]
    return values if as_list(metric) is not None else values[0]


def check_sweeper_directions(directions: list[str], sweeper_direction: object) -> None:
    """Refuses a sweep whose ``hydra.sweeper.direction`` disagrees with the run's objective.

    Args:
        directions: From ``objective_directions``.
        sweeper_direction: ``hydra.sweeper.direction`` (a name or a list); None: the sweeper
            has no such key (Hydra's basic sweeper) and there is nothing to check.

    Raises:
        ConfigError: naming both, when they differ in length or in any entry.
    """
    if sweeper_direction is None:
        return
    listed = as_list(sweeper_direction)
    sweeper = [str(d) for d in (listed if listed is not None else [sweeper_direction])]
    if sweeper != directions:
        raise ConfigError(
            f"hydra.sweeper.direction={sweeper} but optimized_metric/optimized_direction "
            f"give {directions}; the sweeper would optimise the returned values the wrong "
            "way: set hydra.sweeper.direction to match (one entry per metric)"
        )


def pareto_front(values: np.ndarray, directions: Sequence[str]) -> np.ndarray:
    """Which points no other point dominates.

    A point dominates another when it is at least as good on every objective and strictly
    better on one. Rows with a NaN are never on the front and dominate nothing; identical
    points are all on the front.

    Args:
        values: (N, K) objective values.
        directions: K of ``minimize`` | ``maximize``.

    Returns:
        (N,) bool mask of the front.
    """
    values = np.asarray(values, dtype=float)
    sign = np.array([1.0 if d == "maximize" else -1.0 for d in directions])
    score = values * sign  # (N, K), higher is better
    valid = ~np.isnan(score).any(axis=1)  # (N,)
    s = np.where(valid[:, None], score, -np.inf)
    at_least = (s[:, None, :] >= s[None, :, :]).all(axis=2)  # (N, N): j >= i everywhere
    strictly = (s[:, None, :] > s[None, :, :]).any(axis=2)  # (N, N): j > i somewhere
    dominated = (at_least & strictly & valid[:, None]).any(axis=0)  # some valid j beats i
    return valid & ~dominated


def pareto_front_ref(values: Sequence[Sequence[float]], directions: Sequence[str]) -> list[bool]:
    """Naive reference of ``pareto_front``: two loops, one comparison at a time."""
    sign = [1.0 if d == "maximize" else -1.0 for d in directions]
    rows = [[v * s for v, s in zip(row, sign, strict=True)] for row in values]
    ok = [not any(v != v for v in row) for row in rows]  # NaN != NaN
    front = []
    for i, a in enumerate(rows):
        beaten = False
        for j, b in enumerate(rows):
            if i == j or not ok[j]:
                continue
            if all(bk >= ak for ak, bk in zip(a, b, strict=True)) and any(
                bk > ak for ak, bk in zip(a, b, strict=True)
            ):
                beaten = True
                break
        front.append(ok[i] and not beaten)
    return front
