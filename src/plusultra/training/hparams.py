"""A run's hyperparameters and final metrics for TensorBoard's HParams plugin.

Every run logs one HParams session at its end, so the runs of a sweep line up in the HParams
tab of ``tensorboard --logdir outputs`` (table, parallel coordinates, scatter plots). The set is
curated and stable, so sessions of different runs share their columns:

- ``GROUPS``: the option chosen in each config group (``backbone=tcn`` -> ``"tcn"``), as text;
- ``KEYS``: the scalar knobs a sweep varies, by dotted config name (root ``seed``, ``depth``,
  ``d_model``, ..., ``optim.*``, ``data.batch_size``, ``trainer.max_epochs``, simulator costs);
  a key the composed config lacks (``simulator.commission_bps`` under ``frictionless``) is left
  out;
- every other scalar the command line set (``backbone.dropout=0.2``, ``loss.weight=...``: what a
  search space samples), so a swept key always shows even when it is not in ``KEYS``.

Values are numbers, booleans or text, never lists; unset (null) values are left out. The metrics
are ``METRICS`` plus the run's objective (``optimized_metric``), numbers only, logged as the
scalars ``summary/<name>`` that the HParams session names (the view needs metric tags that
exist as scalars). Selection stays on validation: the test metrics are shown beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

import yaml
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from omegaconf import DictConfig, OmegaConf

from plusultra.io import write_text_atomic

GROUPS = (
    "data",
    "features",
    "backbone",
    "head",
    "loss",
    "optim",
    "curriculum",
    "simulator",
    "evaluation",
    "walk_forward",
    "hardware",
    "experiment",
)
"""Config groups whose chosen option is a hyperparameter (text; an unset group is left out)."""

KEYS = (
    "seed",
    "depth",
    "d_model",
    "n_heads",
    "window",
    "horizon",
    "optimized_metric",
    "optim.lr",
    "optim.weight_decay",
    "optim.warmup_frac",
    "optim.min_lr_ratio",
    "data.batch_size",
    "trainer.max_epochs",
    "trainer.gradient_clip_val",
    "backbone.dropout",
    "simulator.execution",
    "simulator.commission_bps",
    "simulator.half_spread_bps",
    "simulator.impact_coef",
)
"""Scalar config keys logged when the composed config has them."""

METRICS = (
    "val_loss",
    "val_sharpe",
    "val_max_drawdown",
    "test_loss",
    "test_sharpe",
    "test_sortino",
    "test_max_drawdown",
    "test_total_return",
    "n_params",
)
"""Final metrics (``metrics.json`` keys) shown beside the hyperparameters, when numeric."""

PREFIX = "summary/"  # the scalar tag of each final metric


def _scalar(value: object) -> bool:
    return isinstance(value, (bool, int, float, str))


def hyperparameters(
    cfg: DictConfig, choices: Mapping[str, str | None], overrides: Iterable[str] = ()
) -> dict[str, bool | int | float | str]:
    """The run's hyperparameters (see the module docstring).

    Args:
        cfg: The resolved run config.
        choices: The chosen option per config group (``HydraConfig.runtime.choices``).
        overrides: The command-line overrides (``HydraConfig.overrides.task``).

    Returns:
        Name -> value: group names and dotted config keys, in a stable order.
    """
    params: dict[str, bool | int | float | str] = {
        g: str(choices[g]) for g in GROUPS if choices.get(g) is not None
    }
    keys = list(KEYS)
    for override in overrides:
        key = override.split("=", 1)[0].lstrip("+~")
        if "=" in override and "/" not in key and key not in choices and key not in keys:
            keys.append(key)
    for key in keys:
        value = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if _scalar(value):
            params[key] = value
    return params


def final_metrics(metrics: Mapping[str, object], objective: str | list[str]) -> dict[str, float]:
    """The numeric ``METRICS`` and ``objective`` (one name or several) from ``metrics``, keyed
    ``summary/<name>``."""
    names = dict.fromkeys([*([objective] if isinstance(objective, str) else objective), *METRICS])
    return {
        f"{PREFIX}{k}": float(metrics[k])
        for k in names
        if isinstance(metrics.get(k), (int, float)) and not isinstance(metrics.get(k), bool)
    }


def log_summary(
    logger: Logger,
    params: Mapping[str, object],
    metrics: Mapping[str, object],
    objective: str | list[str],
) -> None:
    """Logs every numeric final metric as ``summary/<name>`` and the HParams session.

    The metrics of ``final_metrics`` go through ``logger.log_hyperparams`` (which writes them as
    scalars and names them in the session); the other numbers through ``logger.log_metrics``.
    With a TensorBoardLogger, ``<log dir>/hparams.yaml`` is rewritten with ``params``
    (Lightning writes it once, empty, when fit ends).

    Args:
        logger: The run's Lightning logger (TensorBoardLogger in ``conf/logger``).
        params: From ``hyperparameters``.
        metrics: The run's ``metrics.json`` content (text values are skipped).
        objective: The validation metric(s) the run is selected on (``optimized_metric``).
    """
    shown = final_metrics(metrics, objective)
    rest = {
        f"{PREFIX}{k}": float(v)
        for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool) and f"{PREFIX}{k}" not in shown
    }
    logger.log_metrics(rest)
    logger.log_hyperparams(dict(params), shown)
    if isinstance(logger, TensorBoardLogger) and Path(logger.log_dir).is_dir():
        # Lightning saves hparams.yaml once, at the end of fit, before these were known.
        text = yaml.safe_dump(dict(params), sort_keys=False)
        write_text_atomic(Path(logger.log_dir) / logger.NAME_HPARAMS_FILE, text)
