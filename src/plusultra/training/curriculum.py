"""Curriculum: the ordered training stages of a run.

A stage takes the module and data module and trains with a fresh Lightning Trainer made by
`make_trainer` (so each stage gets its own callbacks and checkpoints).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import lightning as L
import torch

from plusultra.errors import ConfigError

log = logging.getLogger(__name__)

TrainerFactory = Callable[..., L.Trainer]


@dataclass
class StageResult:
    """What a stage leaves behind."""

    name: str
    trainer: L.Trainer
    best_checkpoint: str | None
    best_score: float | None


class SupervisedStage:
    """Supervised forecasting with the configured loss.

    Args:
        name: stage name, prefixed to nothing but logged and used in the catalogue.
        restore_best: after fitting, load the weights of the checkpoint with the lowest
            `val/loss` (so evaluation uses the model selected on validation data only).
    """

    def __init__(self, name: str = "supervised", restore_best: bool = True) -> None:
        self.name = name
        self.restore_best = restore_best

    def run(
        self,
        module: L.LightningModule,
        datamodule: L.LightningDataModule,
        make_trainer: TrainerFactory,
    ) -> StageResult:
        trainer = make_trainer()
        trainer.fit(module, datamodule=datamodule)
        ckpt = trainer.checkpoint_callback
        best = getattr(ckpt, "best_model_path", "") or None
        score = getattr(ckpt, "best_model_score", None)
        if self.restore_best and best:
            # this fit's own checkpoint: callbacks.model_checkpoint writes into the run's
            # unique directory, so no other run can have put a file there
            state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
            module.load_state_dict(state)
            shown = "n/a" if score is None else f"{float(score):.6f}"
            log.info("Restored best checkpoint %s (%s=%s)", best, ckpt.monitor, shown)
        return StageResult(self.name, trainer, best, None if score is None else float(score))


@dataclass
class Curriculum:
    """Ordered stages; `run` executes them in turn on the same module."""

    stages: Sequence[SupervisedStage] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.stages:
            raise ConfigError("curriculum.stages: at least one stage is required")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"curriculum.stages: stage names must be unique, got {names}")

    def run(
        self,
        module: L.LightningModule,
        datamodule: L.LightningDataModule,
        make_trainer: TrainerFactory,
    ) -> list[StageResult]:
        results = []
        for stage in self.stages:
            log.info("Curriculum stage %s", stage.name)
            results.append(stage.run(module, datamodule, make_trainer))
        return results
