"""Curriculum: the ordered training stages of a run (conf/curriculum, docs/training.md).

``conf/curriculum/<name>.yaml`` holds a name and a list of stages; each stage is a mapping with
a ``kind`` (a key of `STAGES`) and the fields of that kind's dataclass (`training.stages.Stage`
and its subclasses). The schema is checked on construction: an unknown kind or key is a
ConfigError naming the stage and the key. Stage settings the run's data or backbone cannot
serve (a window longer than the run's, one the backbone refuses, a cost on a loss without
one) are refused by `Curriculum.run` before the first stage trains.

Stages run in order on the same module: each starts from the weights the previous one handed
over (its best-validation checkpoint unless ``restore_best: false``). After each stage the
backbone is saved: ``checkpoints/<stage>-backbone.pt``, and ``checkpoints/backbone.pt`` after
the last (what ``init_from=RUN_DIR`` loads).

With a `training.resume_plan.Resumer` (every run of ``run.py``), each stage starts from a
seed derived from the run's, is recorded in ``checkpoints/stages.json`` when it ends, and a
resumed run skips the stages recorded there and continues the stage in progress from its
checkpoint (docs/training.md, "Resume").
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Sequence
from pathlib import Path

import lightning as L

from plusultra.distributed import is_rank_zero
from plusultra.errors import ConfigError
from plusultra.rl.stage import RLStage
from plusultra.training.pretrain import PretrainStage, save_backbone
from plusultra.training.resume_plan import Resumer
from plusultra.training.stages import Stage, StageResult, SupervisedStage, TrainerFactory

log = logging.getLogger(__name__)

# Stage kinds a curriculum may list (`kind:` of each stage).
STAGES: dict[str, type[Stage]] = {
    "supervised": SupervisedStage,  # the run's loss on labelled windows
    "pretrain": PretrainStage,  # masked patches / contrastive views on train inputs only
    "ppo": RLStage,  # PPO fine-tuning on the trading environment (plusultra.rl.stage)
}


def build_stage(index: int, spec: dict) -> Stage:
    """The stage described by one entry of ``curriculum.stages``."""
    where = f"curriculum.stages[{index}]"
    if not isinstance(spec, dict):
        raise ConfigError(f"{where}: a stage is a mapping with kind and name, got {spec!r}")
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind not in STAGES:
        raise ConfigError(f"{where}.kind={kind!r}; valid: {sorted(STAGES)}")
    cls = STAGES[kind]
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(spec) - set(valid))
    if unknown:
        raise ConfigError(f"{where} ({kind}): unknown key(s) {unknown}; valid: {valid}")
    if "name" not in spec:
        raise ConfigError(f"{where} ({kind}): name is required")
    try:
        return cls(**spec)
    except ConfigError as exc:  # name the entry too: curriculum.stages[2] (ppo): ppo.lr=...
        raise ConfigError(f"{where} ({kind}): {exc}") from exc


class Curriculum:
    """Ordered stages; `run` executes them in turn on the same module.

    Args:
        name: the curriculum's name (recorded in the run's config and catalogue row).
        stages: stage mappings (``kind`` + fields), or built `Stage` objects.
        checkpoint_dir: where each stage's backbone is saved; None: not saved.
    """

    def __init__(
        self,
        name: str,
        stages: Sequence[dict | Stage],
        checkpoint_dir: str | os.PathLike | None = None,
    ) -> None:
        self.name = name
        self.stages = [
            s if isinstance(s, Stage) else build_stage(i, s) for i, s in enumerate(stages)
        ]
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        if not self.stages:
            raise ConfigError("curriculum.stages: at least one stage is required")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ConfigError(f"curriculum.stages: stage names must be unique, got {names}")
        early = [s.name for s in self.stages[:-1] if getattr(s, "final_only", False)]
        if early:
            raise ConfigError(
                f"curriculum.stages: {early} must be the last stage (evaluation trades its "
                "policy, so a later stage would be trained for nothing)"
            )
        if not self.stages[-1].trains_head:
            raise ConfigError(
                f"curriculum.stages: the last stage ({names[-1]!r}) must train the forecasting "
                "head (e.g. kind: supervised); evaluation needs a trained model"
            )

    def run(
        self,
        module: L.LightningModule,
        datamodule,
        make_trainer: TrainerFactory,
        callbacks: Sequence[L.Callback] = (),
        resume: Resumer | None = None,
    ) -> list[StageResult]:
        """Check every stage against this run, then train them in order.

        Args:
            module: the run's ForecastModule (trained in place).
            datamodule: the run's set-up data module.
            make_trainer: builds a Trainer from the run's config.
            callbacks: callbacks watching the supervised training and its validation objective
                (pruning, diagnostics), passed to the stages that train on it.
            resume: the run's resume plan: seeds each stage, records finished ones, and skips
                or continues them in a resumed run; None: none of that.
        """
        for i, stage in enumerate(self.stages):
            try:
                stage.check(module, datamodule)
            except ConfigError as exc:  # name the entry: curriculum.stages[1] (ppo): ...
                kind = next((k for k, c in STAGES.items() if type(stage) is c), "stage")
                raise ConfigError(f"curriculum.stages[{i}] ({kind}): {exc}") from exc
        if resume is not None:
            resume.prepare([s.name for s in self.stages])
        results = []
        for i, stage in enumerate(self.stages):
            final = i == len(self.stages) - 1
            log.info(
                "Curriculum %s: stage %d/%d %s", self.name, i + 1, len(self.stages), stage.name
            )
            resumes = resume is not None and stage.resumable
            record = resume.completed(stage.name) if resumes else None
            if record is not None:  # done before the run was killed: its handed weights
                resume.restore(stage.name, module)
                trainer = make_trainer() if final else None  # evaluation validates with it
                results.append(
                    StageResult(
                        stage.name,
                        trainer,
                        record.get("best_checkpoint"),
                        record.get("best_score"),
                        record.get("handed", "best"),
                    )
                )
            else:
                make = make_trainer
                if resume is not None:  # seeded start; continues from a checkpoint if resumable
                    make = resume.start(i, stage.name, make_trainer, stage.resumable)
                result = stage.run(module, datamodule, make, final, callbacks)
                results.append(result)
                if resumes:
                    fields = ("best_checkpoint", "best_score", "handed")
                    resume.finish(stage.name, module, {f: getattr(result, f) for f in fields})
            if self.checkpoint_dir is not None and is_rank_zero():  # DDP: rank 0 writes
                name = "backbone.pt" if final else f"{stage.name}-backbone.pt"
                save_backbone(module.backbone, self.checkpoint_dir / name)
        return results
