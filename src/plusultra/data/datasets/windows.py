"""Date segments with an embargo, train-only normalisation, targets and sliding windows.

Timing convention (one bar = one step): a sample's *decision time* is ``t``. Its input is the
window of bars ``t - window + 1 .. t``; its target is the vector of forward log returns
``log(close[t + k] / close[t])`` for ``k = 1 .. horizon``. Segments are contiguous date
ranges of decision times:

    train: t <= train_end - horizon           (labels stay inside the train range)
    val:   train_end + embargo <= t <= val_end - horizon
    test:  val_end + embargo <= t

With ``embargo >= window + horizon`` the first val window starts after the last bar any train
sample touched (input or label), and likewise between val and test. Normalisation statistics
are fitted on bars ``<= train_end`` only.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from plusultra.data.datasets.panel import _ffill
from plusultra.errors import ConfigError, DataError
from plusultra.io import write_json_atomic


@dataclass(frozen=True)
class Segments:
    """Calendar indices (inclusive) of each segment's decision times and the split bars."""

    train: tuple[int, int]
    val: tuple[int, int]
    test: tuple[int, int]
    train_end: int
    val_end: int
    embargo: int


def _boundary(value: str | float, dates: pd.DatetimeIndex, key: str) -> int:
    """Index of the last bar inside a segment given a date string or a fraction."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0.0 < float(value) < 1.0:
            raise ConfigError(f"data.{key}={value}: a fraction must be in (0, 1)")
        return int(round(float(value) * len(dates))) - 1
    try:
        ts = pd.to_datetime(str(value), format="ISO8601")
    except (ValueError, pd.errors.OutOfBoundsDatetime) as exc:
        raise ConfigError(f"data.{key}={value!r}: not an ISO date or a fraction in (0, 1)") from exc
    return int(dates.searchsorted(ts, side="right")) - 1


def compute_segments(
    dates: np.ndarray,
    window: int,
    horizon: int,
    train_end: str | float,
    val_end: str | float,
    embargo: int | None = None,
    test_end: str | None = None,
) -> Segments:
    """Split the calendar into embargoed train/val/test decision-time ranges.

    Raises:
        ConfigError: embargo too small, boundaries out of order, or an empty segment.
    """
    index = pd.DatetimeIndex(dates)
    gap = window + horizon if embargo is None else int(embargo)
    if gap < window + horizon:
        raise ConfigError(
            f"data.embargo={embargo} must be >= window + horizon = {window + horizon} "
            "so that no bar is shared between segments"
        )
    te = _boundary(train_end, index, "train_end")
    ve = _boundary(val_end, index, "val_end")
    last = len(index) - 1 if test_end is None else _boundary(test_end, index, "test_end")
    if not te < ve <= last:
        raise ConfigError(
            "data.train_end/val_end: need train_end < val_end <= the last bar; got "
            f"train_end={train_end} (bar {te}), val_end={val_end} (bar {ve}) over "
            f"{len(index)} bars {index[0].date()}..{index[-1].date()}"
        )
    seg = Segments(
        train=(window - 1, te - horizon),
        val=(te + gap, ve - horizon),
        test=(ve + gap, last),
        train_end=te,
        val_end=ve,
        embargo=gap,
    )
    check_segment_lengths(seg, index, window, horizon)
    return seg


def check_segment_lengths(
    seg: Segments, dates: pd.DatetimeIndex, window: int, horizon: int
) -> None:
    """The rule "a segment needs more bars than its lead-in": each segment holds a labelled
    decision.

    A segment's bars are train ``0..train_end``, val ``train_end+1..val_end``, test
    ``val_end+1..last``. Its first decision needs a lead-in (train: the first window's
    ``window - 1`` bars; val and test: the embargo, ``>= window + horizon``) and its last
    labelled decision ``horizon`` bars after it, so it needs at least ``window + horizon``
    (train) or ``embargo + horizon`` (val, test) bars.

    Raises:
        ConfigError: naming the segment, its bars and dates, the bars it needs and the keys
            that change either.
    """
    last = len(dates) - 1
    spans = {
        "train": (0, seg.train_end, window + horizon, f"window {window}"),
        "val": (seg.train_end + 1, seg.val_end, seg.embargo + horizon, f"embargo {seg.embargo}"),
        "test": (seg.val_end + 1, last, seg.embargo + horizon, f"embargo {seg.embargo}"),
    }
    for name, (lo, hi, need, lead) in spans.items():
        have = hi - lo + 1
        if have < need:
            when = f"{dates[lo].date()}..{dates[hi].date()}" if have > 0 else "no bar"
            raise ConfigError(
                f"data: the {name} segment is empty of labelled decisions: it has {have} bars "
                f"({when}, of {len(dates)} loaded) but needs at least {need} ({lead} + horizon "
                f"{horizon}; the embargo is window + horizon unless data.embargo says more); "
                "move data.train_end/data.val_end (ISO dates or fractions of the calendar), "
                "shorten `window`, or load more bars (data.start/data.end; "
                "data.fixture.days for the synthetic market)"
            )


def forward_log_returns(close: np.ndarray, horizon: int) -> np.ndarray:
    """Targets (T, S, H): log(close[t + k] / close[t]) for k = 1..H; NaN past the end."""
    logc = np.log(close)
    out = np.full((*close.shape, horizon), np.nan, dtype=np.float64)
    for k in range(1, horizon + 1):
        out[:-k, :, k - 1] = logc[k:] - logc[:-k]
    return out


def excess_log_returns(close: np.ndarray, horizon: int) -> np.ndarray:
    """Targets (T, S, H): forward log returns minus their cross-sectional mean at each bar.

    The mean is over symbols whose target is defined at that bar (equal weight), so the label is
    the symbol's return relative to the universe: market-neutral, like the positions built
    from it. Labels are future values by construction; inputs are unaffected.
    """
    raw = forward_log_returns(close, horizon)
    defined = np.isfinite(raw)
    count = defined.sum(axis=1, keepdims=True)
    mean = np.where(defined, raw, 0.0).sum(axis=1, keepdims=True) / np.maximum(count, 1)
    return raw - mean


TARGETS = {"raw": forward_log_returns, "excess": excess_log_returns}


def make_targets(close: np.ndarray, horizon: int, kind: str) -> np.ndarray:
    """Targets of the configured kind (see `TARGETS`)."""
    if kind not in TARGETS:
        raise ConfigError(f"data.target={kind!r}; valid: {sorted(TARGETS)}")
    if kind == "excess" and close.shape[1] < 2:
        raise ConfigError("data.target=excess needs at least 2 symbols; use data.target=raw")
    return TARGETS[kind](close, horizon)


def next_returns(close: np.ndarray) -> np.ndarray:
    """Simple return earned from the close of t to the close of t + 1, (T, S).

    A missing bar inside a symbol's life carries the last close (0% that bar, the whole move on
    the bar it resumes); NaN before the first and from the last bar of each symbol on.
    """
    filled = _ffill(close)
    has = ~np.isnan(close)
    last = close.shape[0] - 1 - np.argmax(has[::-1], axis=0)  # (S,) last bar with data
    filled[np.arange(close.shape[0])[:, None] > last[None, :]] = np.nan
    out = np.full_like(close, np.nan)
    out[:-1] = filled[1:] / filled[:-1] - 1.0
    return out


@dataclass
class NormStats:
    """Per-feature standardisation fitted on the train segment, and target scale."""

    mean: list[float]
    std: list[float]
    target_scale: list[float]
    clip: float = 10.0

    @classmethod
    def fit(
        cls, feats: np.ndarray, targets: np.ndarray, last_bar: int, clip: float = 10.0
    ) -> NormStats:
        """Fit on bars 0..last_bar inclusive (targets: decision times whose labels end there)."""
        rows = feats[: last_bar + 1].reshape(-1, feats.shape[-1]).astype(np.float64)
        mean = np.nanmean(rows, axis=0)
        std = np.nanstd(rows, axis=0)
        if np.isnan(mean).any():
            raise DataError("a feature has no finite value in the train segment")
        std = np.where(std > 1e-12, std, 1.0)
        horizon = targets.shape[-1]
        scale = []
        for k in range(horizon):
            # target k of decision t ends at t + k + 1 <= last_bar
            lab = targets[: max(last_bar - k, 0), :, k]
            s = float(np.sqrt(np.nanmean(lab**2))) if np.isfinite(lab).any() else 1.0
            scale.append(s if s > 1e-12 else 1.0)
        return cls(mean.tolist(), std.tolist(), scale, clip)

    def apply(self, feats: np.ndarray) -> np.ndarray:
        """Standardise and clip features (T, S, F); NaN stays NaN."""
        z = (feats - np.asarray(self.mean, np.float32)) / np.asarray(self.std, np.float32)
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def save(self, path: str | os.PathLike) -> None:
        write_json_atomic(path, asdict(self))

    @classmethod
    def load(cls, path: str | os.PathLike) -> NormStats:
        with open(path) as f:
            return cls(**json.load(f))


def valid_window_mask(feats: np.ndarray, window: int) -> np.ndarray:
    """(T, S) bool: every feature of every bar in t - window + 1 .. t is finite."""
    row_ok = np.isfinite(feats).all(axis=-1).astype(np.int64)  # (T, S)
    csum = np.cumsum(row_ok, axis=0)
    count = csum.copy()
    count[window:] = csum[window:] - csum[:-window]
    mask = count == window
    mask[: window - 1] = False
    return mask


def sample_index(mask: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """(N, 2) int64 (t, s) pairs with mask true and lo <= t <= hi, ordered by t then s."""
    sub = mask.copy()
    sub[:lo] = False
    sub[hi + 1 :] = False
    t, s = np.nonzero(sub)
    return np.stack([t, s], axis=1).astype(np.int64)


class WindowDataset(Dataset):
    """Sliding windows over a normalised feature tensor.

    Args:
        feats: (T, S, F) float32, normalised, NaN only where windows are not sampled.
        index: (N, 2) decision (t, s) pairs.
        window: bars per sample.
        targets: (T, S, H) scaled targets, or None for inference.
        labels: (T, S, R) int market-state labels, or None.
        returns: (T, S) execution-aligned simple returns (`plusultra.execution`) for the
            portfolio losses, or None; needs targets.

    Batched fetching (`__getitems__`) gathers a whole batch with one fancy-index.
    Items are `(x (window, F), y (H,))`, or `x` alone without targets; with `labels`
    (T, S, R) int market-state labels, `(x, c (window, R), y)` / `(x, c)`. With `returns`,
    three more follow y: the decision bar t (int64), the symbol index s (int64) and the
    execution return r[t, s] (float32), which a portfolio loss arranges into (date, symbol).
    """

    def __init__(
        self,
        feats: np.ndarray,
        index: np.ndarray,
        window: int,
        targets: np.ndarray | None = None,
        labels: np.ndarray | None = None,
        returns: np.ndarray | None = None,
    ) -> None:
        if returns is not None and targets is None:
            raise DataError("WindowDataset: execution returns are served with targets only")
        self.feats = torch.from_numpy(np.nan_to_num(feats, nan=0.0))
        self.returns = None if returns is None else torch.from_numpy(returns.astype(np.float32))
        self.targets = None if targets is None else torch.from_numpy(targets.astype(np.float32))
        self.labels = None if labels is None else torch.from_numpy(labels.astype(np.int64))
        self.index = torch.from_numpy(index)
        self.offsets = torch.arange(-window + 1, 1)

    def __len__(self) -> int:
        return len(self.index)

    def __getitems__(self, items: list[int]):
        idx = self.index[torch.as_tensor(items)]
        t, s = idx[:, 0], idx[:, 1]
        rows = t[:, None] + self.offsets[None, :]  # (B, W)
        inputs = (self.feats[rows, s[:, None]],)  # x (B, W, F)
        if self.labels is not None:
            inputs += (self.labels[rows, s[:, None]],)  # market-state labels (B, W, R)
        if self.targets is None:
            return inputs if len(inputs) > 1 else inputs[0]
        if self.returns is None:
            return (*inputs, self.targets[t, s])  # ..., y (B, H)
        return (*inputs, self.targets[t, s], t, s, self.returns[t, s])  # ..., y, t, s, r (B,)

    def __getitem__(self, i: int):
        out = self.__getitems__([i])
        return out[0] if isinstance(out, torch.Tensor) else tuple(o[0] for o in out)


def passthrough_collate(batch):
    """Collate for `WindowDataset.__getitems__`, which already returns stacked tensors."""
    return batch
