"""Walk-forward evaluation of the test segment, optionally with rolling refits.

The test segment is cut into consecutive blocks of `refit_every` decision bars (one block when
`refit_every` is None). Each block is predicted bar by bar by one model:

- block 0 by the model the curriculum trained on the train segment and selected on val;
- block k >= 1 by that model refitted at the block's first bar `lo`: it trains for `epochs`
  epochs, from the previous block's weights (`warm_start`) or from the run's initial weights, on
  the labelled windows whose decision bars lie in `fit_lo..fit_hi`, with
  ``fit_hi = lo - embargo`` (the data embargo, at least window + horizon, so every label used
  ended at least `window` bars before `lo`) and `fit_lo` the train segment's first bar
  (expanding window) or ``fit_hi - train_bars + 1`` (rolling window).

Normalisation statistics stay those fitted on the train segment (they are in the past of every
block). A refit has no validation data and no checkpoint selection: it trains for exactly
`epochs` epochs. The module's test metrics (loss, naive loss, ...) are computed per block on its
labelled windows with that block's model and averaged weighted by the block's sample count.
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import torch

from plusultra.errors import ConfigError, DataError
from plusultra.io import write_bytes_atomic
from plusultra.training.device import InferenceDevice
from plusultra.training.predict import predictions_frame

log = logging.getLogger(__name__)

CHECKPOINT = "walk_forward.ckpt"  # weights of the last block's model, in checkpoints/


@dataclass(frozen=True)
class Fold:
    """One walk-forward block (calendar bar indices, inclusive).

    Attributes:
        fold: block number, 0 first.
        lo, hi: the test decision bars this block's model predicts.
        fit_lo, fit_hi: decision bars of the labelled windows the model was last fitted on
            (block 0: the train segment).
        refit: whether the model was refitted at `lo` (False for block 0).
    """

    fold: int
    lo: int
    hi: int
    fit_lo: int
    fit_hi: int
    refit: bool


@dataclass
class WalkForwardResult:
    """Test-segment predictions and metrics of a walk-forward evaluation.

    Attributes:
        predictions: long frame (symbol, timestamp, pred_1..pred_H) over the test segment.
        test_metrics: the module's `test/*` metrics, sample-weighted over the blocks.
        folds: one row per block: bars, dates, sample counts and its test loss.
        blocks: the blocks.
    """

    predictions: pd.DataFrame
    test_metrics: dict[str, float]
    folds: pd.DataFrame
    blocks: list[Fold]


def _check_optional_int(value, key: str, minimum: int) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ConfigError(
            f"walk_forward.{key} must be null or an integer >= {minimum}, got {value!r}"
        )
    return int(value)


class WalkForward:
    """Walk-forward evaluation over the test segment (see the module docstring).

    Args:
        refit_every: decision bars per block; the model is refitted at the start of every block
            after the first. None: one block, the curriculum's model predicts the whole segment.
        train_bars: decision bars a refit trains on, ending `embargo` bars before the block
            (rolling window); None: from the train segment's first bar (expanding window).
        epochs: epochs per refit.
        warm_start: refit from the previous block's weights (True) or from the run's initial,
            untrained weights (False: a fresh fit every block).
    """

    def __init__(
        self,
        refit_every: int | None = None,
        train_bars: int | None = None,
        epochs: int = 1,
        warm_start: bool = True,
    ) -> None:
        self.refit_every = _check_optional_int(refit_every, "refit_every", 1)
        self.train_bars = _check_optional_int(train_bars, "train_bars", 1)
        if _check_optional_int(epochs, "epochs", 1) is None:
            raise ConfigError("walk_forward.epochs must be an integer >= 1, got None")
        self.epochs = int(epochs)
        if not isinstance(warm_start, bool):
            raise ConfigError(f"walk_forward.warm_start must be true or false, got {warm_start!r}")
        self.warm_start = warm_start

    @property
    def refits(self) -> bool:
        """Whether any block is refitted."""
        return self.refit_every is not None

    def folds(self, train: tuple[int, int], test: tuple[int, int], embargo: int) -> list[Fold]:
        """The blocks of the test segment `test` (see the module docstring).

        Raises:
            DataError: a refit would have no training bar (`train_bars` or the data too short).
        """
        lo, hi = test
        if self.refit_every is None:
            return [Fold(0, lo, hi, *train, refit=False)]
        out = []
        for k, start in enumerate(range(lo, hi + 1, self.refit_every)):
            end = min(start + self.refit_every - 1, hi)
            if k == 0:
                out.append(Fold(0, start, end, *train, refit=False))
                continue
            fit_hi = start - embargo
            fit_lo = train[0]
            if self.train_bars is not None:
                fit_lo = max(fit_lo, fit_hi - self.train_bars + 1)
            if fit_hi < fit_lo:
                raise DataError(f"walk-forward block {k} (bar {start}) has no training bar")
            out.append(Fold(k, start, end, fit_lo, fit_hi, refit=True))
        return out

    def run(
        self,
        model: L.LightningModule,
        datamodule,
        trainer: L.Trainer,
        make_trainer: Callable[..., L.Trainer],
        initial_state: dict[str, torch.Tensor] | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
    ) -> WalkForwardResult:
        """Predict (and refit on) the test segment block by block.

        Args:
            model: the trained module; refits update it in place.
            datamodule: the set-up `SQLiteDataModule`.
            trainer: the last curriculum stage's trainer (used to test when nothing is refitted,
                so its logger records `test/*`).
            make_trainer: `make_trainer(**overrides)` builds a Trainer from the run's config.
            initial_state: the module's weights before training (required when not
                `warm_start` and refitting).
            checkpoint_dir: where the last block's weights go as `walk_forward.ckpt` (refits only).
        """
        seg = datamodule.segments
        folds = self.folds(seg.train, seg.test, seg.embargo)
        if self.refits and not self.warm_start and initial_state is None:
            raise ConfigError("walk_forward.warm_start=false needs the model's initial weights")
        panel = datamodule.panel
        dates = pd.DatetimeIndex(panel.dates)
        quiet = dict(
            logger=False, callbacks=[], enable_checkpointing=False, enable_model_summary=False
        )
        frames, rows, tested = [], [], []
        device = InferenceDevice.from_trainer(trainer)  # refits use the same device, precision
        for fold in folds:
            train_set = datamodule.labelled_dataset(fold.fit_lo, fold.fit_hi)
            if fold.refit:
                log.info(
                    "Walk-forward block %d/%d: refit on %d windows, %s..%s, for %d epoch(s)",
                    fold.fold + 1,
                    len(folds),
                    len(train_set),
                    dates[fold.fit_lo].date(),
                    dates[fold.fit_hi].date(),
                    self.epochs,
                )
                if len(train_set) == 0:
                    raise DataError(f"walk-forward block {fold.fold}: no labelled training window")
                if not self.warm_start:
                    model.load_state_dict(initial_state)
                fitter = make_trainer(
                    max_epochs=self.epochs, limit_val_batches=0, num_sanity_val_steps=0, **quiet
                )
                with warnings.catch_warnings():  # no validation data in a refit, by design
                    warnings.filterwarnings("ignore", message=".*no `val_dataloader`.*")
                    fitter.fit(model, train_dataloaders=datamodule.loader(train_set, shuffle=True))
            test_set = datamodule.labelled_dataset(fold.lo, fold.hi)
            metrics = {}
            if len(test_set):
                tester = trainer if not self.refits else make_trainer(**quiet)
                loader = datamodule.loader(test_set)
                metrics = tester.test(model, dataloaders=loader, verbose=False)[0]
                tested.append((len(test_set), metrics))
            frames.append(
                predictions_frame(
                    model,
                    datamodule.inference_dataset(bars=(fold.lo, fold.hi)),
                    panel.dates,
                    panel.symbols,
                    datamodule.norm.target_scale,
                    device=device,
                )
            )
            rows.append(
                {
                    **asdict(fold),
                    "start": dates[fold.lo],
                    "end": dates[min(fold.hi, len(dates) - 1)],
                    "fit_start": dates[fold.fit_lo],
                    "fit_end": dates[fold.fit_hi],
                    "fit_samples": len(train_set),
                    "test_samples": len(test_set),
                    "test_loss": float(metrics.get("test/loss", np.nan)),
                }
            )
        if not tested:
            raise DataError("no labelled window in the test segment")
        weights = np.array([n for n, _ in tested], dtype=np.float64)
        keys = sorted(set().union(*(m.keys() for _, m in tested)))
        test_metrics = {
            k: float(np.average([m.get(k, np.nan) for _, m in tested], weights=weights))
            for k in keys
        }
        if self.refits and checkpoint_dir is not None:
            self.save(model, Path(checkpoint_dir) / CHECKPOINT)
        predictions = pd.concat(frames, ignore_index=True)
        return WalkForwardResult(predictions, test_metrics, pd.DataFrame(rows), folds)

    @staticmethod
    def save(model: torch.nn.Module, path: Path) -> None:
        """Write `{"state_dict": ...}` atomically (the layout `plusultra-predict` loads)."""
        buffer = io.BytesIO()
        torch.save({"state_dict": model.state_dict()}, buffer)
        write_bytes_atomic(path, buffer.getvalue())
