"""What a cross-asset run (``cross_asset.enabled=true``) can and cannot be combined with.

The cross-asset model (``plusultra.models.cross_asset``) trains on batches of whole
cross-sections from the data module. Everything that reaches the data through the data module
works unchanged: supervised stages, pretraining stages (they train the per-symbol backbone
alone on per-symbol windows, which the cross-asset model then reuses), walk-forward refits,
portfolio losses, validation and test predictions. Refused before anything trains, each with a
ConfigError naming the keys:

- a PPO stage (``curriculum=rl`` / ``full``): the trading environment feeds the policy one
  symbol's window at a time, so the cross-symbol attention would never run;
- a supervised stage with ``window`` or ``regimes``: such a stage samples per-symbol windows
  (``training.stage_data.StageData``), not cross-sections;
- ``data.cross_section`` set apart from ``cross_asset.enabled`` (the data config reads it);
- more than one training process (``hardware=ddp``): a batch is a block of whole dates, which a
  DistributedSampler cannot split (as for the portfolio losses' blocks).
"""

from __future__ import annotations

import lightning as L

from plusultra.errors import ConfigError
from plusultra.rl.stage import RLStage
from plusultra.training.stages import SupervisedStage


def check_cross_asset(enabled: bool, cross_section: bool, curriculum) -> None:
    """Refuse a cross-asset configuration this run cannot serve (module docstring).

    Args:
        enabled: ``cross_asset.enabled``.
        cross_section: the data module's ``cross_section`` (``data.cross_section``).
        curriculum: the run's `training.curriculum.Curriculum`.

    Raises:
        ConfigError: naming the keys.
    """
    if enabled != cross_section:
        raise ConfigError(
            f"cross_asset.enabled={enabled} but data.cross_section={cross_section}: the data "
            "config reads cross_asset.enabled; leave data.cross_section unset"
        )
    if not enabled:
        return
    for i, stage in enumerate(curriculum.stages):
        where = f"cross_asset.enabled=true with curriculum.stages[{i}] ({stage.name!r})"
        if isinstance(stage, RLStage):
            raise ConfigError(
                f"{where}: a PPO stage is not supported: its trading environment feeds the "
                "policy one symbol's window at a time, so the cross-symbol attention would never "
                "run; use curriculum=supervised or pretrain_finetune, or cross_asset.enabled=false"
            )
        if isinstance(stage, SupervisedStage) and (stage.window or stage.regimes):
            raise ConfigError(
                f"{where}: window/regimes are not supported: such a stage samples per-symbol "
                "windows, not whole cross-sections; remove them from the stage"
            )


def check_cross_sharding(trainer: L.Trainer, cross_section: bool) -> L.Trainer:
    """Refuse cross-section batches under multi-process training; returns ``trainer``."""
    if cross_section and trainer.world_size > 1:
        raise ConfigError(
            f"cross_asset.enabled=true cannot be sharded across {trainer.world_size} DDP "
            f"processes (trainer.devices={trainer.num_devices}): each batch is a block of whole "
            "dates, which a DistributedSampler cannot split; train on one device "
            "(trainer.devices=1)"
        )
    return trainer
