"""A run's resume plan: which curriculum stages are done, and which checkpoint continues which.

`Resumer` is made by ``run.py`` for every run (docs/training.md, "Resume"):

- a fresh run records each finished stage in ``checkpoints/stages.json`` (written atomically),
  with the weights it handed to the next stage in ``checkpoints/<stage>-handed.pt``;
- ``resume=true`` continues in the killed run's own dir (chosen by
  ``lifecycle.RunDirCallback``); ``ckpt_path=FILE`` starts a new run dir from another run's
  checkpoint. Either way, stages recorded as done are skipped (their handed weights are loaded),
  the stage in progress continues from its newest readable checkpoint (``<stage>-resume.ckpt``
  or ``<stage>-last.ckpt``; ``resume.ckpt`` / ``last.ckpt`` for the final stage), later stages
  run as usual, and evaluation runs from its start;
- every stage starts, and evaluation starts, with the global RNGs seeded from ``seed`` and a
  fixed offset, so a resumed run draws the numbers the uninterrupted one drew there.
"""

from __future__ import annotations

import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from plusultra.distributed import is_rank_zero
from plusultra.errors import ConfigError
from plusultra.io import write_bytes_atomic, write_json_atomic
from plusultra.training.resume import ResumeCheckpoint, reseed
from plusultra.training.resume_config import (
    check_compatible,
    newest_checkpoint,
    read_checkpoint,
    stage_checkpoints,
)

log = logging.getLogger(__name__)

RECORD = "stages.json"  # in checkpoints/: the finished stages, in order
STAGE_SEED_STEP = 10_007  # stage i starts from seed + STAGE_SEED_STEP * (i + 1)
EVAL_SEED_OFFSET = 99_991  # evaluation starts from seed + EVAL_SEED_OFFSET


class StageTrainers:
    """`make_trainer` for one stage: the run's factory, with the stage's `ResumeCheckpoint`
    told the run's config and the stage name; ``ckpt_path`` is what the stage continues from
    (None: a fresh start)."""

    def __init__(self, make_trainer: Callable[..., L.Trainer], meta: dict, ckpt_path: str | None):
        self.make_trainer, self.meta, self.ckpt_path = make_trainer, meta, ckpt_path

    def __call__(self, *callbacks: L.Callback, **overrides) -> L.Trainer:
        trainer = self.make_trainer(*callbacks, **overrides)
        for cb in trainer.callbacks:
            if isinstance(cb, ResumeCheckpoint):
                cb.meta = dict(self.meta)
        return trainer


class Resumer:
    """The resume plan of one run (module docstring).

    Args:
        seed: the run's seed.
        config: the run's flattened config (``resume_config.flat_config``), stored in every
            checkpoint and compared with the checkpoint resumed from.
        ckpt_dir: this run's checkpoint directory.
        resume: continue the run in `ckpt_dir`'s run (``resume=true``).
        ckpt_path: continue from this checkpoint file (``ckpt_path=``), in a new run dir.
    """

    def __init__(
        self,
        seed: int,
        config: dict[str, Any],
        ckpt_dir: str | os.PathLike,
        resume: bool = False,
        ckpt_path: str | os.PathLike | None = None,
    ) -> None:
        if resume and ckpt_path is not None:
            raise ConfigError("set resume=true or ckpt_path=FILE, not both")
        self.seed, self.config = int(seed), dict(config)
        self.ckpt_dir = Path(ckpt_dir)
        self.resume, self.ckpt_path = bool(resume), None if ckpt_path is None else Path(ckpt_path)
        self.source_dir = self.ckpt_path.parent if self.ckpt_path else self.ckpt_dir
        self.records: dict[str, dict] = {}
        self.checkpoint: Path | None = None  # what the stage in progress continues from
        self.in_progress: str | None = None

    @property
    def continuing(self) -> bool:
        """Whether this run continues another (``resume=true`` or ``ckpt_path=``)."""
        return self.resume or self.ckpt_path is not None

    def prepare(self, stages: Sequence[str]) -> None:
        """Find the finished stages and the checkpoint of the stage in progress, and refuse a
        checkpoint of another config (before anything trains).

        Raises:
            ConfigError: nothing to continue from, a checkpoint of another config or of a stage
                this curriculum does not have.
        """
        self.records = {}
        if not self.continuing:
            return
        if self.ckpt_path is not None:
            ckpt = read_checkpoint(self.ckpt_path)
            if ckpt is None:
                raise ConfigError(
                    f"ckpt_path={self.ckpt_path}: not a readable plusultra checkpoint (missing, "
                    "torn, or written without callbacks.resume_checkpoint)"
                )
            stage = ckpt["plusultra"].get("stage")
            if stage not in stages:
                raise ConfigError(
                    f"ckpt_path={self.ckpt_path}: its stage {stage!r} is not a stage of this "
                    f"curriculum {list(stages)}"
                )
            check_compatible(ckpt["plusultra"].get("config", {}), self.config, str(self.ckpt_path))
            done = self._read_records()
            self.records = {s: done[s] for s in stages[: stages.index(stage)] if s in done}
            self.checkpoint, self.in_progress = self.ckpt_path, stage
            return
        self.records = {s: r for s, r in self._read_records().items() if s in stages}
        todo = [s for s in stages if s not in self.records]
        files = [p for s in stages for p in stage_checkpoints(self.ckpt_dir, s, s == stages[-1])]
        newest = newest_checkpoint(files)
        if newest is None and not self.records:
            raise ConfigError(
                f"resume=true: {self.ckpt_dir} holds no readable checkpoint to continue from"
            )
        if newest is not None:  # the config the run trained with, even when all stages are done
            check_compatible(newest[1]["plusultra"].get("config", {}), self.config, str(newest[0]))
        if todo:
            self.in_progress = todo[0]
            found = newest_checkpoint(
                stage_checkpoints(self.ckpt_dir, todo[0], todo[0] == stages[-1])
            )
            self.checkpoint = None if found is None else found[0]
        log.info(
            "Resume: stages done %s; %s continues from %s",
            list(self.records),
            self.in_progress,
            self.checkpoint or "its start",
        )

    def _read_records(self) -> dict[str, dict]:
        path = self.source_dir / RECORD
        if not path.is_file():
            return {}
        try:
            return {r["name"]: r for r in json.loads(path.read_text(encoding="utf-8"))}
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ConfigError(f"{path}: unreadable stage record ({exc})") from exc

    def completed(self, stage: str) -> dict | None:
        """The record of `stage` if a previous run finished it, else None."""
        return self.records.get(stage)

    def restore(self, stage: str, module: torch.nn.Module) -> dict:
        """Load the weights finished stage `stage` handed over into `module`; returns its record
        (a record from another run's dir is copied into this run's)."""
        record = self.records[stage]
        source = self.source_dir / record["weights"]
        state = torch.load(source, map_location="cpu", weights_only=True)["state_dict"]
        module.load_state_dict(state)
        if self.source_dir != self.ckpt_dir:
            self._save_handed(stage, module)
        self._write_records()
        log.info("Resume: stage %s already done; its weights loaded from %s", stage, source)
        return record

    def start(
        self,
        index: int,
        stage: str,
        make_trainer: Callable[..., L.Trainer],
        resumable: bool = True,
    ):
        """Seed the stage's start and return its trainer factory (`StageTrainers`); a stage
        that is not `resumable` starts afresh even where a checkpoint of it exists."""
        reseed(self.seed, STAGE_SEED_STEP * (index + 1))
        here = stage == self.in_progress and self.checkpoint and resumable
        ckpt = str(self.checkpoint) if here else None
        if ckpt:
            log.info("Resume: stage %s continues from %s", stage, ckpt)
        return StageTrainers(make_trainer, {"config": self.config, "stage": stage}, ckpt)

    def finish(self, stage: str, module: torch.nn.Module, result: dict) -> None:
        """Record finished stage `stage` (its result fields) with the weights it hands over."""
        self._save_handed(stage, module)
        self.records[stage] = {**result, "name": stage, "weights": f"{stage}-handed.pt"}
        self._write_records()

    def before_evaluation(self) -> None:
        """Seed evaluation's start (validation, walk-forward refits, backtests)."""
        reseed(self.seed, EVAL_SEED_OFFSET)

    def _save_handed(self, stage: str, module: torch.nn.Module) -> None:
        if not is_rank_zero():  # DDP: rank 0 alone writes (every rank holds the same weights)
            return
        buffer = io.BytesIO()
        torch.save({"state_dict": module.state_dict()}, buffer)
        write_bytes_atomic(self.ckpt_dir / f"{stage}-handed.pt", buffer.getvalue())

    def _write_records(self) -> None:
        if not is_rank_zero():
            return
        write_json_atomic(self.ckpt_dir / RECORD, list(self.records.values()))
