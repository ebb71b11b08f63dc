"""Whole-universe windows on a common calendar, for models that attend across assets.

One sample per decision bar ``t``: the features of *every* symbol over bars
``t - window + 1 .. t``, with masks saying which (bar, symbol) cells are real. Survivorship is
explicit: `tradable` (``(T, S)``, e.g. `plusultra.data.datasets.panel.tradable_mask`) is False
before a
symbol lists, after it delists and on days without a bar, and a cell is visible to the model
(``mask``) only if its features are finite *and* the symbol was tradable at that bar, so
forward-filled features outside a symbol's life can never leak in. Targets count only for
symbols tradable at ``t``. Inputs use bars ``<= t`` only; targets are future values by
construction and never enter ``x``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from plusultra.data.datasets.windows import valid_window_mask

__all__ = ["CrossAssetDataset", "cross_asset_times"]


def _visible(feats: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """(T, S) bool: every feature finite and the symbol tradable at that bar."""
    if tradable.shape != feats.shape[:2]:
        raise ValueError(f"tradable {tradable.shape} must be (T, S) = {feats.shape[:2]}")
    return np.isfinite(feats).all(axis=-1) & tradable.astype(bool)


def cross_asset_times(
    feats: np.ndarray,
    tradable: np.ndarray,
    window: int,
    lo: int,
    hi: int,
    min_symbols: int = 2,
    targets: np.ndarray | None = None,
) -> np.ndarray:
    """Decision bars with enough symbols that have a complete, tradable window.

    Args:
        feats: (T, S, F) features, NaN where undefined.
        tradable: (T, S) bool, inside the listed life and has a bar.
        window: bars per sample.
        lo, hi: inclusive range of decision bars (clipped to ``window - 1 .. T - 1``).
        min_symbols: symbols needed at t whose whole window is visible (finite and tradable
            at every bar, hence tradable at t).
        targets: optional (T, S, H); if given, a symbol counts only if its targets at t are
            also all finite.

    Returns:
        (N,) int64 decision bars, increasing.
    """
    ok = _visible(feats, tradable)
    complete = valid_window_mask(np.where(ok, 0.0, np.nan)[..., None], window)  # (T, S)
    if targets is not None:
        complete &= np.isfinite(targets).all(axis=-1)
    enough = complete.sum(axis=1) >= min_symbols  # (T,)
    enough[: max(lo, window - 1)] = False
    enough[max(hi + 1, 0) :] = False
    return np.flatnonzero(enough).astype(np.int64)


class CrossAssetDataset(Dataset):
    """One item per decision bar t: the whole universe's window.

    Args:
        feats: (T, S, F) float32, normalised, NaN where undefined.
        window: bars per sample.
        times: (N,) int decision bars, each in ``window - 1 .. T - 1`` (see
            `cross_asset_times`).
        targets: (T, S, H) scaled targets, or None for inference.
        tradable: (T, S) bool, inside the listed life and has a bar.

    Items are dicts of tensors:

    * ``x`` (window, S, F) float32, features with NaN -> 0;
    * ``mask`` (window, S) bool, True where the bar's features are all finite and the symbol
      was tradable at that bar;
    * ``tradable`` (S,) bool at t;
    * ``y`` (S, H) float32 with NaN -> 0, and ``y_mask`` (S,) bool where every horizon of the
      target is finite and the symbol is tradable at t (both only with targets).

    Batched fetching (`__getitems__`) gathers a batch with one fancy-index per tensor and
    returns the same keys stacked: x (B, window, S, F), mask (B, window, S), tradable (B, S),
    y (B, S, H), y_mask (B, S). Use it with `plusultra.data.datasets.windows.passthrough_collate`.
    """

    def __init__(
        self,
        feats: np.ndarray,
        window: int,
        times: np.ndarray,
        targets: np.ndarray | None,
        tradable: np.ndarray,
    ) -> None:
        if feats.ndim != 3:
            raise ValueError(f"feats must be (T, S, F), got shape {feats.shape}")
        times = np.asarray(times, dtype=np.int64).reshape(-1)
        n_bars = feats.shape[0]
        if times.size and (times.min() < window - 1 or times.max() > n_bars - 1):
            raise ValueError(
                f"decision bars must lie in [{window - 1}, {n_bars - 1}] for window={window}, "
                f"got {times.min()}..{times.max()}"
            )
        visible = _visible(feats, tradable)
        self.feats = torch.from_numpy(np.nan_to_num(feats.astype(np.float32), nan=0.0))
        self.visible = torch.from_numpy(visible)  # (T, S)
        self.tradable = torch.from_numpy(np.ascontiguousarray(tradable, dtype=bool))  # (T, S)
        self.targets = self.target_ok = None
        if targets is not None:
            if targets.shape[:2] != feats.shape[:2] or targets.ndim != 3:
                raise ValueError(f"targets {targets.shape} must be (T, S, H) over {feats.shape}")
            self.targets = torch.from_numpy(np.nan_to_num(targets.astype(np.float32), nan=0.0))
            ok = np.isfinite(targets).all(axis=-1) & tradable.astype(bool)
            self.target_ok = torch.from_numpy(ok)  # (T, S)
        self.times = torch.from_numpy(times)
        self.offsets = torch.arange(-window + 1, 1)  # (W,)

    def __len__(self) -> int:
        return len(self.times)

    def __getitems__(self, items: list[int]) -> dict[str, torch.Tensor]:
        t = self.times[torch.as_tensor(items, dtype=torch.long)]  # (B,)
        rows = t[:, None] + self.offsets[None, :]  # (B, W)
        out = {
            "x": self.feats[rows],  # (B, W, S, F)
            "mask": self.visible[rows],  # (B, W, S)
            "tradable": self.tradable[t],  # (B, S)
        }
        if self.targets is not None:
            out["y"] = self.targets[t]  # (B, S, H)
            out["y_mask"] = self.target_ok[t]  # (B, S)
        return out

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {key: value[0] for key, value in self.__getitems__([i]).items()}
