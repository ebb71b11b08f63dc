"""Pruning inside an Optuna sweep: report each validation epoch's objective, stop when told.

A job launched by ``hydra/sweeper=plusultra_optuna`` with a ``hydra.sweeper.pruner`` gets
``++optuna.study=<name> ++optuna.trial=<number>``; ``pruning_callbacks`` then opens that trial
in the sweeper's storage, with the sweeper's pruner, and returns a ``PruningCallback`` for the
curriculum's trainers. After every validation epoch of training it reports the epoch's value of
the objective (``optimized_metric``) with ``trial.report(value, epoch)`` and, when
``trial.should_prune()``, writes ``pruned.json`` (``plusultra.lifecycle.write_pruned``) and
raises ``optuna.TrialPruned``; the sweeper tells the trial PRUNED.

The reported value is the objective itself, computed from the epoch's weights the way the final
``metrics.json`` value is (docs/sweeps.md, "Pruning"):

- a metric the module logs per validation epoch (``val_loss`` <- ``val/loss``,
  ``val_naive_loss``, ``val_calibration_error``, ...) is read from the epoch's logged metrics;
- any other ``val_*`` metric (``val_sharpe``, ``val_max_drawdown``, ...) comes from the
  validation backtest: one inference pass over the whole validation segment and the run's
  Backtest and simulator (``training.evaluate.validation_backtest``, the code that computes the
  run's final ``val_*`` metrics);
- a name that is neither fails the first epoch with a ``ConfigError`` naming
  ``optimized_metric`` and ``hydra.sweeper.pruner``.

Ours, not optuna-integration's ``PyTorchLightningPruningCallback``: that one reports in every
validation loop (our post-fit ``trainer.validate`` of the restored best checkpoint would report
again and could prune a trial whose training had finished), numbers steps by the epoch of each
``fit`` (restarting per curriculum stage), and reads only metrics logged by the module, so it
could not prune on a validation Sharpe.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable, Mapping
from typing import Any

import lightning as L
import optuna
from lightning.pytorch.trainer.states import TrainerFn

from hydra_plugins.plusultra_optuna_sweeper.job import open_trial
from plusultra.errors import ConfigError
from plusultra.evaluation.backtest.engine import Backtest, MarketContext
from plusultra.evaluation.report.summary import segment_metrics
from plusultra.lifecycle import write_pruned
from plusultra.training.device import InferenceDevice
from plusultra.training.evaluate import validation_backtest

log = logging.getLogger(__name__)

# (module, datamodule) -> {val_*: value} of the model's current weights
Validation = Callable[[L.LightningModule, Any], Mapping[str, float | str]]


class ValidationBacktest:
    """The ``val_*`` backtest metrics of the model's current weights (see module docstring).

    Args:
        backtest: the run's Backtest (conf/evaluation).
        simulator: the run's simulator (conf/simulator).
    """

    def __init__(self, backtest: Backtest, simulator) -> None:
        self.backtest, self.simulator = backtest, simulator
        self._context: MarketContext | None = None  # built once, on the first epoch

    def __call__(self, module: L.LightningModule, datamodule) -> dict[str, float | str]:
        if self._context is None:
            self._context = MarketContext(**datamodule.context())
        device = InferenceDevice.from_trainer(module.trainer)  # the fit's device and precision
        result = validation_backtest(
            module, datamodule, self.backtest, self.simulator, self._context, False, device
        )
        return segment_metrics("val", result)


class PruningCallback(L.Callback):
    """Reports the objective after each validation epoch of training; prunes when told.

    Only while fitting: the post-fit ``trainer.validate`` and walk-forward refits report nothing.
    Steps are epochs counted over every ``fit`` this callback sees (a multi-stage curriculum
    continues the count), 0-based. Under DDP rank zero reports and decides; the decision is
    broadcast so every rank stops together.

    Args:
        trial: the running trial (``hydra_plugins.plusultra_optuna_sweeper.job.open_trial``).
        metric: the objective, ``optimized_metric`` (a ``val_*`` name).
        run_dir: the job's output directory (``pruned.json`` goes there).
        validation: computes the ``val_*`` backtest metrics of the current weights.
    """

    def __init__(
        self, trial: optuna.Trial, metric: str, run_dir: str | os.PathLike, validation: Validation
    ) -> None:
        super().__init__()
        self.trial, self.metric, self.run_dir = trial, metric, run_dir
        self.validation = validation
        self.logged_key = "val/" + metric.removeprefix("val_")  # val_loss -> val/loss
        self._offset = 0  # epochs of earlier fits
        self._next = 0  # the step after the last one reported

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._offset = self._next

    def value(self, trainer: L.Trainer, module: L.LightningModule) -> float:
        """The objective on the validation segment with the epoch's weights."""
        logged = trainer.callback_metrics.get(self.logged_key)
        if logged is not None:
            return float(logged)
        metrics = self.validation(module, trainer.datamodule)
        if self.metric not in metrics:
            valid = sorted({k.replace("/", "_") for k in trainer.callback_metrics} | set(metrics))
            raise ConfigError(
                f"optimized_metric={self.metric!r} has no per-epoch validation value to prune "
                f"on (valid: {[k for k in valid if k.startswith('val_')]}); choose one of them "
                "or set hydra.sweeper.pruner=null"
            )
        value = metrics[self.metric]
        if isinstance(value, str):
            raise ConfigError(
                f"optimized_metric={self.metric!r} is a label ({value!r}), not a number to "
                "prune on; choose a numeric val_* metric or set hydra.sweeper.pruner=null"
            )
        return float(value)

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        step = self._offset + trainer.current_epoch
        self._next = step + 1
        prune, value = False, math.nan
        if trainer.is_global_zero:
            value = self.value(trainer, pl_module)
            self.trial.report(value, step)
            prune = self.trial.should_prune()
            if trainer.logger is not None:  # the reported curve, beside val/loss
                trainer.logger.log_metrics({f"optuna/{self.metric}": value}, trainer.global_step)
        if not trainer.strategy.broadcast(prune, src=0):
            return
        study, number = self.trial.study.study_name, self.trial.number
        if trainer.is_global_zero:
            write_pruned(self.run_dir, self.metric, value, step, study, number)
        message = f"trial {number} of {study} pruned at epoch {step}: {self.metric}={value:.6g}"
        log.info(message)
        raise optuna.TrialPruned(message)


def pruning_callbacks(
    study: str | None,
    trial: int | None,
    sweeper: Mapping[str, Any],
    metric: str,
    run_dir: str | os.PathLike,
    cwd: str | None,
    validation: Validation,
) -> list[L.Callback]:
    """``[PruningCallback]`` for a job of a pruned Optuna sweep, else ``[]``.

    Args:
        study: ``optuna.study`` (null outside an Optuna sweep).
        trial: ``optuna.trial`` (null outside an Optuna sweep).
        sweeper: the resolved ``hydra.sweeper`` config as plain values; pruning is on when it
            has a non-null ``pruner`` (``hydra/sweeper=plusultra_optuna``).
        metric: ``optimized_metric``.
        run_dir: the job's output directory.
        cwd: the launch directory (``hydra.runtime.cwd``), for a relative ``storage_dir``.
        validation: the ``val_*`` backtest metrics of the current weights.

    Raises:
        ConfigError: the trial cannot be opened (see ``open_trial``).
    """
    if trial is None or study is None or sweeper.get("pruner") is None:
        return []
    try:
        opened = open_trial(sweeper, study, int(trial), cwd)
    except ValueError as exc:
        raise ConfigError(f"hydra.sweeper.pruner is set but {exc}") from None
    log.info("Pruning: trial %d of study %s, reporting %s each epoch", opened.number, study, metric)
    return [PruningCallback(opened, metric, run_dir, validation)]
