"""The trial columns of a catalogue row: which Optuna trial a run is, what it sampled, and its
objective value(s).

``optuna.study`` and ``optuna.trial`` come from the config (the sweeper's ``++optuna.*``
overrides). ``optuna.params``, which the sweeper passes as the list of the keys it sampled
(``++optuna.params=[optim.lr,backbone]``), is replaced by a JSON object of their values as the
job resolved them (``{"optim.lr": 0.001, "backbone": "tcn"}``: a group key gives its chosen
option), so it works wherever the job ran (joblib worker, Slurm). ``objective`` is the run's
value of its ``optimized_metric`` (the first one of a list) and ``objectives`` a JSON list of
its value of each, in order (null when the run has none of them; NaN as null). A trial
stopped by a pruner has no final metrics: its ``objective`` is the last value it reported
(the ``pruned_value`` its row carries).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping

from plusultra.catalogue.objective import as_list, objective_metrics
from plusultra.errors import ConfigError

PRUNED_VALUE = "pruned_value"  # metric of a pruned trial's row: the last value it reported

TRIAL_COLUMNS: dict[str, str] = {
    "optuna.study": "VARCHAR",  # the Optuna study of a sweep job (null outside one)
    "optuna.trial": "BIGINT",  # its trial number
    "optuna.params": "VARCHAR",  # JSON {sampled key: value}
    "objective": "DOUBLE",  # the run's value of optimized_metric (its first metric)
    "objectives": "VARCHAR",  # JSON list, one value per optimized_metric entry
}
"""Columns a sweep's rows carry, with their DuckDB types; the ``runs`` view always has them
(null where a row lacks them, e.g. rows recorded before they existed)."""


def _lookup(config: Mapping[str, object], key: str) -> object:
    """The value at dotted ``key`` of a plain nested config, or None; a digit part indexes a
    list, as in Hydra's override grammar (``curriculum.stages.1.ppo.lr``)."""
    node: object = config
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, Mapping) and part in node:
            node = node[part]
        else:
            return None
    return node


def _number(value: object) -> float:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return math.nan


def trial_columns(
    config: Mapping[str, object],
    choices: Mapping[str, str | None],
    metrics: Mapping[str, object],
) -> dict[str, object]:
    """``optuna.params`` (when the config lists sampled keys) and ``objective(s)`` (when it
    names an ``optimized_metric``); see the module docstring."""
    out: dict[str, object] = {}
    keys = as_list(_lookup(config, "optuna.params"))
    if keys is not None:
        names = [str(k).lstrip("+~") for k in keys]  # an appended key is swept as "+key"
        values = {k: choices[k] if k in choices else _lookup(config, k) for k in names}
        out["optuna.params"] = json.dumps(values, default=str)
    metric = config.get("optimized_metric")
    if metric is None:
        return out
    try:
        names = objective_metrics(metric)
    except ConfigError:
        return out  # a run refused before training for this very reason
    values = [_number(metrics.get(n)) for n in names]
    if len(names) == 1 and math.isnan(values[0]) and PRUNED_VALUE in metrics:
        values = [_number(metrics[PRUNED_VALUE])]  # a pruned trial: its last reported value
    out["objective"] = values[0]
    if not all(math.isnan(v) for v in values):
        out["objectives"] = json.dumps([None if math.isnan(v) else v for v in values])
    return out
