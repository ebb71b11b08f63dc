"""Exact resume: what a checkpoint carries beyond Lightning's own state, and step checkpoints.

Lightning restores the weights, optimiser, scheduler, loop counters and (through
``data.datasets.sampler.ResumableLoader``) the train loader's position. This module adds the
rest (docs/training.md, "Resume"):

- ``checkpoint["plusultra"]`` in every checkpoint a stage writes: the run's flattened config
  (``resume_config.flat_config``), the stage's name, and the python / numpy / torch (and CUDA)
  RNG states as lists and tensors, so ``torch.load(weights_only=True)`` reads it;
- `ResumeCheckpoint`, a Lightning checkpoint callback that writes ``checkpoints/resume.ckpt``
  (``<stage>-resume.ckpt`` for a non-final stage) every ``every_n_train_steps`` optimiser steps
  and when SIGINT / SIGTERM stops training; a signal that arrives inside a training step is
  held until the step ends, so the checkpoint is taken between two steps;
- on resume, the saved RNG states are put back just before the first training batch, so the
  draws of that batch (dropout, masks, augmentations) are those of the uninterrupted run.

Checkpoints are written to a temporary name and renamed over the target (atomic): a run killed
while saving leaves the previous checkpoint intact.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Checkpoint
from lightning.pytorch.trainer.states import TrainerFn

from plusultra.data.datasets.sampler import ResumableLoader
from plusultra.errors import ConfigError
from plusultra.io import fsync_dir
from plusultra.lifecycle import Interrupted

log = logging.getLogger(__name__)

KEY = "plusultra"  # checkpoint["plusultra"]: config, stage, rng
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def rng_state() -> dict[str, Any]:
    """The global RNG states as ``weights_only``-loadable values (lists, ints, tensors)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [
            kind,
            torch.from_numpy(keys.astype(np.int64)),
            int(pos),
            int(has_gauss),
            float(cached),
        ],  # fmt: skip
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back the RNG states `rng_state` returned (CUDA ones only where CUDA is in use)."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        else:  # another machine: the CPU states still come back
            log.warning("CUDA RNG states of %d devices not restored on %d", len(cuda),
                        torch.cuda.device_count())  # fmt: skip


def reseed(seed: int, offset: int) -> None:
    """Seed python, numpy and torch with ``seed + offset`` (a stage start, evaluation): what
    follows draws the same numbers in a resumed run and an uninterrupted one."""
    L.seed_everything(int(seed) + int(offset), workers=True, verbose=False)


def train_loaders(trainer: L.Trainer) -> list[ResumableLoader]:
    """The trainer's resumable train loaders."""
    loaders = trainer.train_dataloader
    if loaders is None:
        return []
    flat = loaders if isinstance(loaders, list | tuple) else [loaders]
    if isinstance(loaders, dict):
        flat = list(loaders.values())
    return [dl for dl in flat if isinstance(dl, ResumableLoader)]


def save_atomic(trainer: L.Trainer, path: Path) -> None:
    """``trainer.save_checkpoint`` to a temporary name, renamed over `path` (rank zero)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    # every rank calls it: the strategy gathers the state, rank zero writes
    trainer.save_checkpoint(tmp, weights_only=False)
    if trainer.is_global_zero:
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)


class ResumeCheckpoint(Checkpoint):
    """Step and interruption checkpoints, and the plusultra state of every checkpoint.

    Args:
        dirpath: the run's checkpoint directory.
        every_n_train_steps: optimiser steps between two step checkpoints; 0: none (the
            epoch-end ``last.ckpt`` and the interruption checkpoint remain).
        filename: file stem of the final stage's checkpoint; `Stage.fit` prefixes the stage
            name for earlier stages (``<stage>-resume``).
    """

    def __init__(self, dirpath: str, every_n_train_steps: int = 200, filename: str = "resume"):
        if isinstance(every_n_train_steps, bool) or int(every_n_train_steps) < 0:
            raise ConfigError(
                "callbacks.resume_checkpoint.every_n_train_steps must be an integer >= 0, got "
                f"{every_n_train_steps!r}"
            )
        self.dirpath, self.filename = Path(dirpath), filename
        self.every = int(every_n_train_steps)
        self.meta: dict[str, Any] = {}  # {"config", "stage"}: set by the run for each stage
        self._pending_rng: dict[str, Any] | None = None  # restored before the next batch
        self._pending_data: list[dict] | None = None  # train loader states, restored at start
        self._held: int | None = None  # a signal received inside a training step
        self._previous: dict[int, Any] = {}
        self._saved_step = -1  # global step of this callback's last checkpoint

    @property
    def path(self) -> Path:
        """Where this callback writes."""
        return self.dirpath / f"{self.filename}.ckpt"

    # -- every checkpoint carries the run's config, the stage and the RNG states -------------
    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        checkpoint[KEY] = {**self.meta, "rng": rng_state()}

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get(KEY)
        self._pending_rng = None if state is None else state.get("rng")
        loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        self._pending_data = loop.get("combined_loader")

    def on_train_start(self, trainer, pl_module) -> None:
        """Put the train loaders at the saved position. Lightning (2.6) would do it in
        ``FitLoop.setup_data``, but a module whose ``configure_optimizers`` reads
        ``trainer.estimated_stepping_batches`` (ours: the warmup-cosine schedule) builds the
        loaders before the loop state is restored, and Lightning then skips it."""
        if not self._pending_data:
            return
        for loader, state in zip(train_loaders(trainer), self._pending_data, strict=False):
            loader.load_state_dict(state)
        fetcher = trainer.fit_loop._data_fetcher
        if fetcher is not None:
            iter(fetcher)  # a new iterator from the restored position (drops the prefetch)
        self._pending_data = None

    # -- signals are held inside a step; the data position follows each consumed batch -------
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        self._hold_signals()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        last = trainer.fit_loop.epoch_loop.batch_progress.is_last_batch
        # the next batch to train on: the next one of this epoch, or the next epoch's first
        epoch = trainer.current_epoch
        position = (epoch + 1, 0) if last else (epoch, batch_idx + 1)
        for loader in train_loaders(trainer):
            loader.mark(*position)
        held = self._release_signals()
        due = self.every and trainer.global_step % self.every == 0 and not last
        if due or held is not None:
            self._save(trainer)
        if held is not None:  # now let the run's handler end it (Interrupted)
            log.info("checkpoint %s written after signal %d", self.path, held)
            handler = signal.getsignal(held)
            if callable(handler):
                handler(held, None)
            else:
                signal.raise_signal(held)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._release_signals()
        if not isinstance(exception, Interrupted | KeyboardInterrupt):
            return  # only an interruption is worth a checkpoint; a bug is not
        if trainer.state.fn != TrainerFn.FITTING or trainer.global_step in (0, self._saved_step):
            return  # nothing trained yet, or written after the held signal already
        self._save(trainer)
        log.info("interrupted: checkpoint %s written (resume with resume=true)", self.path)

    def _save(self, trainer: L.Trainer) -> None:
        save_atomic(trainer, self.path)
        self._saved_step = trainer.global_step

    def _hold_signals(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        self._held = None

        def hold(signum: int, frame) -> None:
            if self._held is None:
                self._held = signum

        self._previous = {s: signal.signal(s, hold) for s in SIGNALS}

    def _release_signals(self) -> int | None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        held, self._held = self._held, None
        return held

    def state_dict(self) -> dict[str, Any]:
        return {"every_n_train_steps": self.every}
