"""Evaluate a trained model on both held-out segments: validation to select, test to report.

- Validation: the module's ``val/*`` metrics, then ONE inference pass over the validation
  segment with the model the curriculum selected on validation (its restored best checkpoint),
  backtested with the run's Backtest and simulator, baselines included: the ``val_*`` backtest
  metrics a sweep selects on. The model is not refitted inside the validation segment.
- Test: the walk-forward evaluation (``training.walk_forward``) predicts the test segment once,
  refitting if configured, and the same Backtest and simulator evaluate it: the ``test_*``
  metrics a run reports.

Validation comes first because walk-forward refits update the model in place.

A policy stage last in the curriculum (``kind: ppo``, `rl.stage.RLStage`) hands over
``positions``: its policy's positions over a segment from one sequential greedy rollout (the
policy reads its own position, so they cannot come from independent windows). Both backtests
then trade those positions instead of the module's forecasts, on the same segments, with the
same Backtest and simulator; the module's ``val/*`` and ``test/*`` metrics (its losses) are
still computed. Walk-forward refits of such a policy are refused (`check_evaluation`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass

import lightning as L
import pandas as pd
import torch

from plusultra.errors import ConfigError
from plusultra.evaluation.backtest.engine import Backtest, BacktestResult, MarketContext
from plusultra.training.device import InferenceDevice
from plusultra.training.predict import predictions_frame
from plusultra.training.walk_forward import WalkForward, WalkForwardResult


@dataclass
class Evaluation:
    """Both segments' metrics and records.

    Attributes:
        val_metrics: the module's ``val/*`` metrics (loss, naive loss, ...).
        val: the validation backtest (model and baselines); ``val.daily`` per val bar.
        test: the test backtest; ``test.daily`` per test bar.
        walk: the walk-forward result (test predictions, ``test/*`` metrics, blocks).
        predictions: test predictions with ``position`` and ``realized_return`` (and, with
            guardrails on, ``guarded_position``: the weight traded after them).
    """

    val_metrics: dict[str, float]
    val: BacktestResult
    test: BacktestResult
    walk: WalkForwardResult
    predictions: pd.DataFrame

    def guardrail_events(self) -> pd.DataFrame | None:
        """Both segments' guardrail events with a ``segment`` column (val, test); None when
        the guardrails are off (the run writes them to ``guardrails.parquet``)."""
        parts = [
            r.guardrail_events.assign(segment=name)
            for name, r in (("val", self.val), ("test", self.test))
            if r.guardrail_events is not None
        ]
        return pd.concat(parts, ignore_index=True) if parts else None


def evaluate(
    model: L.LightningModule,
    datamodule,
    trainer: L.Trainer,
    make_trainer: Callable[..., L.Trainer],
    walk: WalkForward,
    backtest: Backtest,
    simulator,
    initial_state: dict[str, torch.Tensor] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    positions: Callable[[str], pd.DataFrame] | None = None,
) -> Evaluation:
    """Validate, backtest the validation segment, then walk forward and backtest the test one.

    Args:
        model: the trained module, weights as selected on validation.
        datamodule: the set-up `SQLiteDataModule`.
        trainer: the last curriculum stage's trainer (its logger records ``val/*``, ``test/*``).
        make_trainer: builds a Trainer from the run's config (walk-forward refits).
        walk: the walk-forward evaluator.
        backtest: positions, simulation and metrics, shared by both segments.
        simulator: the run's simulator, shared by both segments.
        initial_state: the module's untrained weights (walk-forward cold refits).
        checkpoint_dir: where walk-forward writes its last block's weights (in the run dir).
        positions: the final stage's positions over ``"val"`` / ``"test"`` (a policy stage's
            ``StageResult.positions``), traded instead of the module's forecasts; None: the
            module's.
    """
    if positions is not None:
        check_policy_walk(walk)
    panel = datamodule.panel
    market = (panel.dates, panel.symbols, datamodule.tradable, datamodule.returns, simulator)
    context = MarketContext(**datamodule.context())  # one set of full-calendar arrays
    val_metrics = trainer.validate(model, datamodule=datamodule, verbose=False)[0]
    device = InferenceDevice.from_trainer(trainer)  # fit moved the model back to the CPU
    if positions is None:
        val = validation_backtest(model, datamodule, backtest, simulator, context, device=device)
    else:  # the policy's positions, traded as they are (the same Backtest and simulator)
        val = backtest.run(positions("val"), *market, *datamodule.segments.val, context=context)

    walked = walk.run(model, datamodule, trainer, make_trainer, initial_state, checkpoint_dir)
    if positions is not None:  # one block (refits refused): the module's test/* metrics stay
        walked = dataclasses.replace(walked, predictions=positions("test"))
    refits = [(f.fit_lo, f.fit_hi, f.lo, f.hi) for f in walked.blocks]
    test = backtest.run(
        walked.predictions,
        *market,
        *datamodule.segments.test,
        context=dataclasses.replace(context, refits=refits),
    )
    predictions = backtest.with_positions(
        walked.predictions,
        panel.dates,
        panel.symbols,
        datamodule.tradable,
        test.earned,  # what each position earns under the run's execution timing
        execution=test.execution,  # the positions exactly as traded
    )
    if test.guarded is not None:  # guardrails on: what was traded after them
        rows = pd.DatetimeIndex(panel.dates).get_indexer(predictions["timestamp"])
        cols = pd.Index(panel.symbols).get_indexer(predictions["symbol"])
        predictions["guarded_position"] = test.guarded[rows, cols]
    return Evaluation(val_metrics, val, test, walked, predictions)


def check_policy_walk(walk: WalkForward) -> None:
    """Refuse walk-forward refits for a policy stage's positions: a refit retrains the
    forecaster on labelled windows, not the policy, so the blocks would not be the policy's."""
    if walk.refits:
        raise ConfigError(
            f"walk_forward.refit_every={walk.refit_every}: walk-forward refits are not "
            "supported when the curriculum ends with a PPO stage (a refit retrains the "
            "forecaster, not the policy); set walk_forward.refit_every=null"
        )


def check_evaluation(curriculum, walk: WalkForward) -> None:
    """Before training: refuse an evaluation the curriculum's final stage cannot serve."""
    if getattr(curriculum.stages[-1], "final_only", False):
        check_policy_walk(walk)


def validation_backtest(
    model: L.LightningModule,
    datamodule,
    backtest: Backtest,
    simulator,
    context: MarketContext,
    progress: bool = True,
    device: InferenceDevice | None = None,
) -> BacktestResult:
    """ONE inference pass over the whole validation segment with the model's current weights,
    backtested with the run's Backtest and simulator (baselines included): the ``val_*``
    backtest metrics of a run, and each epoch's pruning value (``training.pruning``).

    `device`: the training device and precision (``InferenceDevice.from_trainer``); None:
    wherever the model is, in float32."""
    panel = datamodule.panel
    preds = predictions_frame(
        model,
        datamodule.inference_dataset("val"),
        panel.dates,
        panel.symbols,
        datamodule.norm.target_scale,
        progress=progress,
        device=device,
    )
    market = (panel.dates, panel.symbols, datamodule.tradable, datamodule.returns, simulator)
    return backtest.run(preds, *market, *datamodule.segments.val, context=context)
