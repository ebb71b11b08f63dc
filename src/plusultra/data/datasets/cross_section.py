"""Batches of whole cross-sections: every listed symbol's window at each decision date.

The cross-asset model (``plusultra.models.cross_asset``, ``cross_asset.enabled=true``) sees at
decision bar ``t`` the window ``t - window + 1 .. t`` of *every* symbol of the universe at once,
so that a symbol's forecast can depend on the others' recent bars. One item of
`CrossSectionDataset` is one decision date; the data module batches consecutive dates with the
date-block sampler (``plusultra.data.datasets.sampler.BlockBatchSampler``).

Which symbols take part at ``t`` (``members``, the listing mask): those whose whole window is
*visible*, i.e. every feature finite and the symbol tradable (listed, with a bar) at every bar of
the window, as the cross-asset views of ``plusultra.data.features.cross_asset`` define it. A
non-member is never attended to and never scored. This is stricter than the pooled datasets'
rule (features finite over the window): a symbol with a missing bar inside its window sits
that date out. Among the members, ``rows`` are those whose output the model returns: members
whose targets (and, for portfolio losses, execution return) are finite in a labelled dataset;
every member for inference. Inputs use bars ``<= t`` only; targets never enter ``x``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset

from plusultra.data.datasets.windows import valid_window_mask
from plusultra.data.features.cross_asset import CrossAssetDataset, cross_asset_times

__all__ = ["CrossSectionDataset", "window_members"]


def window_members(feats: np.ndarray, tradable: np.ndarray, window: int) -> np.ndarray:
    """(T, S) bool: the symbol's whole window ending at t is visible (features finite and
    tradable at every bar); False for ``t < window - 1``."""
    visible = np.isfinite(feats).all(axis=-1) & tradable.astype(bool)  # (T, S)
    return valid_window_mask(np.where(visible, 0.0, np.nan)[..., None], window)


class CrossSectionDataset(Dataset):
    """One item per decision date: the windows of all symbols, with the listing masks.

    Args:
        feats: (T, S, F) float32 normalised features, NaN where undefined.
        tradable: (T, S) bool, inside the listed life and has a bar.
        window: bars per window.
        lo, hi: inclusive range of decision bars.
        targets: (T, S, H) scaled targets, or None for inference.
        labels: (T, S, R) int market-state labels, or None.
        returns: (T, S) execution returns for the portfolio losses, or None; needs targets.

    A date is kept when at least one symbol has a row there. Batched fetching
    (`__getitems__`, with `plusultra.data.datasets.windows.passthrough_collate`) returns a tuple
    in the order the cross-asset module takes it:

    * ``x`` (B, W, S, F) float32 windows (NaN -> 0; a non-member's window is never read);
    * ``members`` (B, S) bool listing mask; ``rows`` (B, S) bool, the members whose outputs
      the model returns (see the module docstring);
    * ``labels`` (B, W, S, R) int64, only with labels;
    * with targets: ``y`` (N, H) of the N rows, flattened date-major then symbol
      (``rows.nonzero()`` order), the order of the module's outputs;
    * with returns: then the rows' decision bar t (N,), symbol s (N,) and execution return (N,).

    Attributes:
        times: (D,) int64 decision bar of each item.
        index: (N, 2) int64 (t, s) of every row of the dataset in output order: what a
            predictions frame labels its rows with.
        symbols_per_item: S, the symbol-windows one item holds at most.
    """

    def __init__(
        self,
        feats: np.ndarray,
        tradable: np.ndarray,
        window: int,
        lo: int,
        hi: int,
        targets: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        returns: np.ndarray | None = None,
    ) -> None:
        if returns is not None and targets is None:
            raise ValueError("CrossSectionDataset: execution returns are served with targets only")
        members = window_members(feats, tradable, window)  # (T, S)
        rows = members.copy()
        if targets is not None:
            rows &= np.isfinite(targets).all(axis=-1)
        if returns is not None:
            rows &= np.isfinite(returns)
        times = cross_asset_times(feats, tradable, window, lo, hi, 1, targets)
        times = times[rows[times].any(axis=1)]  # (D,) dates with a row
        self.view = CrossAssetDataset(feats, window, times, targets, tradable)
        self.times = self.view.times
        self.members = torch.from_numpy(members)
        self.rows = torch.from_numpy(rows)
        self.labels = None if labels is None else torch.from_numpy(labels.astype(np.int64))
        self.returns = None if returns is None else torch.from_numpy(returns.astype(np.float32))
        d, s = np.nonzero(rows[times])  # date-major, then symbol
        self.index = torch.from_numpy(np.stack([times[d], s], axis=1).astype(np.int64))
        self.symbols_per_item = feats.shape[1]
        self.offsets = self.view.offsets

    def __len__(self) -> int:
        return len(self.times)

    def __getitems__(self, items: list[int]) -> tuple[torch.Tensor, ...]:
        view = self.view.__getitems__(items)  # x (B, W, S, F), y (B, S, H) ...
        t = self.times[torch.as_tensor(items, dtype=torch.long)]  # (B,)
        rows = self.rows[t]  # (B, S)
        out = (view["x"], self.members[t], rows)
        if self.labels is not None:
            out += (self.labels[t[:, None] + self.offsets[None, :]],)  # (B, W, S, R)
        if "y" not in view:
            return out
        out += (view["y"][rows],)  # (N, H)
        if self.returns is None:
            return out
        b, s = rows.nonzero(as_tuple=True)  # (N,) each, date-major
        return (*out, t[b], s, self.returns[t[b], s])

    def __getitem__(self, i: int) -> tuple[torch.Tensor, ...]:
        """Date `i` as a batch of one (the rows stay flattened)."""
        return self.__getitems__([i])
