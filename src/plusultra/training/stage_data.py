"""The data a curriculum stage trains on: the run's data module seen through a stage's settings.

A stage may train on shorter windows than the run's (a growing-window curriculum), only on
samples whose regime label at the decision bar is in a list, or on inputs alone (self-supervised
pretraining). Segments, normalisation and features are the run's, fitted once on the train
segment; a stage only chooses which (decision bar, symbol) samples and how many bars back each
window reaches. A shorter window reads a subset of the bars the run's window reads for the same
decision bar, so the run's embargo still separates the segments.
"""

from __future__ import annotations

import lightning as L
import numpy as np
from torch.utils.data import DataLoader

from plusultra.data.datasets.windows import WindowDataset, sample_index, valid_window_mask
from plusultra.data.features.regimes import regime_labels
from plusultra.errors import DataError


class StageData(L.LightningDataModule):
    """Train and validation loaders of one stage over a set-up `SQLiteDataModule`.

    Args:
        base: the run's data module, set up.
        window: bars per window (<= ``base.window``); None: the run's window.
        regimes: label name -> classes; training samples are kept only where every named
            label at the decision bar is in its classes. Validation is never filtered, so each
            stage's best validation value is measured on the whole validation segment.
        inputs_only: serve windows without targets (pretraining): every window with complete
            inputs whose decision bar is in the segment.
        stage: the stage's name, for error messages.
    """

    def __init__(
        self,
        base,
        window: int | None = None,
        regimes: dict[str, list[int]] | None = None,
        inputs_only: bool = False,
        stage: str = "",
    ) -> None:
        super().__init__()
        self.base = base
        self.window = base.window if window is None else int(window)
        self.regimes = dict(regimes or {})
        self.inputs_only, self.stage = inputs_only, stage

    def __getattr__(self, name: str):
        """Anything a stage does not change (panel, segments, features ...) is the run's."""
        if name == "base":  # not set yet: avoid recursing
            raise AttributeError(name)
        return getattr(self.base, name)

    def _index(self, segment: str, filtered: bool) -> np.ndarray:
        base = self.base
        ok = valid_window_mask(base.features, self.window)  # (T, S)
        if not self.inputs_only:
            ok &= base.target_ok
        idx = sample_index(ok, *getattr(base.segments, segment))  # (N, 2) (t, s)
        if filtered and self.regimes:
            labels = regime_labels(base.panel, list(self.regimes))  # (T, S) each, -1 undefined
            keep = np.ones(len(idx), dtype=bool)
            for name, classes in self.regimes.items():
                keep &= np.isin(labels[name][idx[:, 0], idx[:, 1]], classes)
            idx = idx[keep]
        if len(idx) == 0:
            raise DataError(
                f"curriculum stage {self.stage!r}: no sample in the {segment} segment with "
                f"window={self.window}" + (f" and regimes={self.regimes}" if filtered else "")
            )
        return idx

    def dataset(self, segment: str, filtered: bool = False) -> WindowDataset:
        """The stage's windows whose decision bar lies in `segment`."""
        base = self.base
        targets = None if self.inputs_only else base.scaled_targets
        idx = self._index(segment, filtered)
        return WindowDataset(base.features, idx, self.window, targets, base.labels)

    def train_dataloader(self) -> DataLoader:
        return self.base.loader(self.dataset("train", filtered=True), shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self.base.loader(self.dataset("val"), shuffle=False)
