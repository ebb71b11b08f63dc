"""Shared machinery of the training diagnostics (``plusultra.training.diagnostics``).

- ``Recorder``: the base Lightning callback. It keeps one row per step (or epoch) of its
  diagnostic, logs each row's numbers to the run's TensorBoard logger as
  ``diagnostics/<column>`` scalars (per-step rows on Lightning's ``log_every_n_steps``
  cadence), and rewrites ``<run dir>/diagnostics/<name>.parquet`` atomically at the end of
  the fit, when training fails, and at a training-epoch end when ``flush_every_s`` seconds
  have passed since the last write.
- ``Alerts``: threshold crossings. Each crossing is counted (and saved as a row of
  ``diagnostics/warnings.parquet``); the first crossing of a condition in an epoch prints one
  ``log.warning`` line with the value, the threshold and its config key, later ones in the same
  epoch are only counted.
- ``parameter_groups``: the layer groups (embedding / block_<i> / backbone_out / head) derived
  from the module tree.

Steps count optimiser steps over every ``fit`` a callback sees (a multi-stage curriculum
continues the count), so rows of successive stages never share a step number.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import pandas as pd
import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn

from plusultra.io import write_parquet_atomic

log = logging.getLogger("plusultra.diagnostics")


@dataclass(frozen=True)
class ParameterGroups:
    """Trainable parameters split into layer groups.

    Attributes:
        names: group names in module order, e.g. ``("embedding", "block_0", "head")``.
        params: ``(qualified name, parameter)`` of every trainable parameter.
        index: (P,) long tensor: the group (position in ``names``) of each parameter.
    """

    names: tuple[str, ...]
    params: tuple[tuple[str, nn.Parameter], ...]
    index: torch.Tensor


def _group_of(name: str, module: nn.Module) -> str:
    """Layer group of a parameter name (see ``parameter_groups``)."""
    top, _, rest = name.partition(".")
    if top == "embedding":  # the market-state embedding feeds the backbone's input
        return "embedding"
    if top == "backbone" and isinstance(getattr(module.backbone, "blocks", None), nn.ModuleList):
        child, _, rest2 = rest.partition(".")
        if child == "blocks":
            return f"block_{rest2.partition('.')[0]}"
        order = [n for n, _ in module.backbone.named_children()]
        before = order.index(child) < order.index("blocks") if child in order else True
        return "embedding" if before else "backbone_out"
    return top  # head, backbone (without blocks), loss_fn, ...


def parameter_groups(module: nn.Module) -> ParameterGroups:
    """Group the trainable parameters of ``module`` from its module tree.

    With a ``backbone`` holding ``blocks`` (every registered backbone does): ``block_<i>`` for
    the parameters of block i; ``embedding`` for the backbone's children registered before
    ``blocks`` (input projection, patching, positions) and the market-state ``embedding``;
    ``backbone_out`` for those registered after (the final norm); every other top-level child
    is its own group (``head``, ...).
    """
    params = tuple((n, p) for n, p in module.named_parameters() if p.requires_grad)
    groups = [_group_of(n, module) for n, _ in params]
    names = tuple(dict.fromkeys(groups))  # first-seen (module) order
    pos = {g: i for i, g in enumerate(names)}
    index = torch.tensor([pos[g] for g in groups], dtype=torch.long)
    return ParameterGroups(names, params, index)


def group_sq_norms(tensors: list[torch.Tensor], index: torch.Tensor, n_groups: int) -> torch.Tensor:
    """Sum of squares of ``tensors`` per group: (n_groups,) float64 on the tensors' device.

    Args:
        tensors: P tensors of any shapes.
        index: (P,) group of each tensor.
        n_groups: number of groups G.
    """
    if not tensors:
        return torch.zeros(n_groups, dtype=torch.float64)
    norms = torch.stack(torch._foreach_norm(tensors)).to(torch.float64)  # (P,) one fused kernel
    out = torch.zeros(n_groups, dtype=torch.float64, device=norms.device)
    return out.index_add_(0, index.to(norms.device), norms.square())


def group_sq_norms_ref(tensors: list[torch.Tensor], groups: list[int], n_groups: int) -> list:
    """Reference of ``group_sq_norms``: a Python loop over every element."""
    out = [0.0] * n_groups
    for t, g in zip(tensors, groups, strict=True):
        for v in t.detach().double().flatten().tolist():
            out[g] += v * v
    return out


class Alerts:
    """Threshold crossings of one run: counted always, printed once per condition per epoch."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()
        self.rows: list[dict] = []
        self._printed: set[tuple[str, int]] = set()
        self.written: dict[str, int] = {}  # rows already in warnings.parquet

    def cross(
        self, condition: str, what: str, value: float, threshold: float, key: str, step: int,
        epoch: int, above: bool = True,
    ) -> None:  # fmt: skip
        """Record a crossing; the first of ``condition`` in ``epoch`` prints a warning line.

        Args:
            condition: e.g. ``grad_norm`` (the count's name).
            what: the measured quantity, e.g. ``grad_norm/block_1``.
            value: its value; threshold: the bound it crossed; key: the bound's config key.
            above: the value is above the bound (else below).
        """
        self.counts[condition] += 1
        self.rows.append(
            {"step": step, "epoch": epoch, "condition": condition, "what": what,
             "value": float(value), "threshold": float(threshold), "key": key}
        )  # fmt: skip
        if (condition, epoch) in self._printed:
            return
        self._printed.add((condition, epoch))
        sign = ">" if above else "<"
        log.warning(
            "diagnostics: %s at step %d (epoch %d): %s = %.4g %s %.4g (%s); further crossings "
            "this epoch are counted, not printed",
            condition.replace("_", " "), step, epoch, what, value, sign, threshold, key,
        )  # fmt: skip

    def report(self) -> str:
        """One line: the count of every condition, e.g. ``3 warnings (loss_spike 2, ...)``."""
        total = sum(self.counts.values())
        detail = ", ".join(f"{c} {n}" for c, n in sorted(self.counts.items()))
        return f"{total} threshold warnings" + (f" ({detail})" if detail else "")


def log_scalars(trainer: L.Trainer, row: dict, step: int, prefix: str = "diagnostics/") -> None:
    """Log a row's finite numbers (not ``step`` / ``epoch``) to every logger of ``trainer``."""
    scalars = {
        prefix + k: float(v)
        for k, v in row.items()
        if k not in ("step", "epoch") and isinstance(v, int | float) and math.isfinite(v)
    }
    for logger in trainer.loggers:
        logger.log_metrics(scalars, step=step)


def fitting(trainer: L.Trainer) -> bool:
    """True inside ``fit`` (not sanity checking, not a later ``validate`` / ``test``)."""
    return trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking


class Recorder(L.Callback):
    """Base of every diagnostics callback: rows -> parquet and TensorBoard (module docstring).

    Subclasses set ``name`` (the parquet file stem) and call ``record``.
    """

    name = "diagnostic"

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[dict] = []
        self.directory: Path | None = None
        self.alerts = Alerts()
        self._offset = 0  # optimiser steps of earlier fits
        self._steps = 0  # steps seen so far, over every fit
        self.current = 0  # the run-wide step of the batch in progress
        self.written: dict[str, int] = {}  # file stem -> rows in the file on disk
        self.flush_every_s = 0.0  # least seconds between two writes at epoch ends
        self._last_flush = time.monotonic()

    def attach(self, directory: str | Path, alerts: Alerts, flush_every_s: float = 0.0) -> None:
        """Where to write, the run's shared alerts, and the least seconds between two writes
        at epoch ends (``Diagnostics`` calls this)."""
        self.directory, self.alerts = Path(directory), alerts
        self.flush_every_s = flush_every_s

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._offset = self._steps

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        """Sets ``self.current``: the run-wide optimiser step (0-based) of this batch.
        Subclasses that override it call ``super()`` first."""
        self.current = self._offset + trainer.global_step
        self._steps = self.current + 1

    def record(self, trainer: L.Trainer, row: dict, step: int, dense: bool = False) -> None:
        """Append a row (``step`` and ``epoch`` columns added) and log its numbers.

        A ``dense`` row (one every step) goes to TensorBoard only on the steps Lightning logs
        ``train/loss`` on (multiples of ``trainer.log_every_n_steps``); sampled and per-epoch
        rows always do. The parquet file gets every row.
        """
        row = {"step": step, "epoch": trainer.current_epoch, **row}
        self.rows.append(row)
        if dense and step % max(1, trainer.log_every_n_steps) != 0:
            return
        log_scalars(trainer, row, step)

    def tables(self) -> dict[str, list[dict]]:
        """File stem -> rows this callback writes (``{name: rows}``; a subclass may add)."""
        return {self.name: self.rows}

    def flush(self, trainer: L.Trainer | None = None) -> None:
        """Rewrite, on rank zero, each ``diagnostics/<stem>.parquet`` that gained rows since
        its last write, and ``warnings.parquet`` likewise."""
        if self.directory is None or (trainer is not None and not trainer.is_global_zero):
            return
        for stem, rows in {**self.tables(), "warnings": self.alerts.rows}.items():
            owner = self.alerts if stem == "warnings" else self
            if rows and owner.written.get(stem) != len(rows):
                write_parquet_atomic(self.directory / f"{stem}.parquet", pd.DataFrame(rows))
                owner.written[stem] = len(rows)
        self._last_flush = time.monotonic()

    def summary(self) -> dict[str, float]:
        """This diagnostic's ``diag_*`` numbers for metrics.json."""
        return {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush(trainer)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.flush(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self.flush(trainer)


def compiled(module: L.LightningModule) -> bool:
    """True when the module's forward runs under ``torch.compile`` (``compile=true``): forward
    hooks added and removed during training would force recompilations there."""
    return hasattr(getattr(module, "_forward", None), "_torchdynamo_orig_callable")


def split_batch(module: L.LightningModule, batch) -> tuple[list, torch.Tensor, tuple]:
    """(inputs, targets, market) of a training batch, the way the module splits it."""
    splitter = getattr(module, "_split_batch", None)
    if splitter is not None:
        inputs, y, market = splitter(batch)
        return list(inputs), y, tuple(market)
    *inputs, y = batch
    return list(inputs), y, ()


def batch_size(batch) -> int:
    """Samples in a batch (the first tensor's leading dimension)."""
    first = batch[0] if isinstance(batch, list | tuple) else batch
    return int(first.shape[0])
