"""Activation statistics of every backbone block, sampled every N training steps.

On a sampled step, forward hooks on each of ``backbone.blocks`` (and on the backbone itself:
its output tokens after the final norm, ``backbone_out``) reduce the block's output ``a``
(B, T, D) to six numbers; the hooks are removed again before the next batch, so unsampled
steps cost nothing (under ``compile=true`` the statistics are skipped, with the reason
logged: adding and removing hooks would force recompilations):

- ``mean``, ``std`` (population) and ``max_abs`` over all elements;
- ``near_zero``: fraction of elements with ``|a| <= zero_tol``;
- ``saturated``: fraction of elements with ``|a| >= saturation`` (a squashing nonlinearity
  fed such values is flat: tanh(5) = 1 - 9e-5);
- ``dead``: fraction of the D channels with ``|a| <= zero_tol`` on every sample and token of
  the batch (a channel that carries nothing).

Columns of ``activations.parquet``: ``<stat>/<group>``, e.g. ``dead/block_0``.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from plusultra.errors import ConfigError
from plusultra.training.diagnostics_base import Recorder, compiled, fitting, log

STATS = ("mean", "std", "max_abs", "near_zero", "saturated", "dead")


def activation_stats(a: torch.Tensor, zero_tol: float, saturation: float) -> torch.Tensor:
    """The six ``STATS`` of an activation tensor (..., D), as a (6,) float64 tensor."""
    a = a.detach().to(torch.float64)
    mag = a.abs()
    zero = mag <= zero_tol
    dead = zero.reshape(-1, a.shape[-1]).all(dim=0)  # (D,) channel silent everywhere
    return torch.stack(
        [
            a.mean(),
            a.std(correction=0),
            mag.max(),
            zero.to(torch.float64).mean(),
            (mag >= saturation).to(torch.float64).mean(),
            dead.to(torch.float64).mean(),
        ]
    )


def activation_stats_ref(a: torch.Tensor, zero_tol: float, saturation: float) -> list[float]:
    """Reference of ``activation_stats``: Python loops over the elements."""
    rows = a.detach().double().reshape(-1, a.shape[-1]).tolist()  # (N, D)
    flat = [v for r in rows for v in r]
    n, d = len(flat), len(rows[0])
    mean = sum(flat) / n
    std = (sum((v - mean) ** 2 for v in flat) / n) ** 0.5
    dead = sum(all(abs(r[j]) <= zero_tol for r in rows) for j in range(d)) / d
    return [
        mean,
        std,
        max(abs(v) for v in flat),
        sum(abs(v) <= zero_tol for v in flat) / n,
        sum(abs(v) >= saturation for v in flat) / n,
        dead,
    ]


def activation_modules(module: nn.Module) -> dict[str, nn.Module]:
    """Group name -> module whose output is summarised: ``block_<i>``, ``backbone_out``."""
    backbone = getattr(module, "backbone", None)
    if backbone is None:
        return {}
    blocks = getattr(backbone, "blocks", None)
    out = {f"block_{i}": b for i, b in enumerate(blocks)} if blocks is not None else {}
    out["backbone_out"] = backbone
    return out


class ActivationDiagnostics(Recorder):
    """Per-block activation statistics on every ``every_n_steps``-th training step.

    Args:
        every_n_steps: sample a training step every this many optimiser steps (>= 1).
        zero_tol: |a| at or below this counts as zero (near_zero, dead).
        saturation: |a| at or above this counts as saturated.
        max_dead_frac: warn when a block's fraction of dead channels exceeds this.
    """

    name = "activations"

    def __init__(
        self,
        every_n_steps: int = 50,
        zero_tol: float = 1e-6,
        saturation: float = 5.0,
        max_dead_frac: float = 0.5,
    ) -> None:
        super().__init__()
        if not isinstance(every_n_steps, int) or every_n_steps < 1:
            raise ConfigError(f"diagnostics.activations.every_n_steps={every_n_steps!r}: int >= 1")
        if not zero_tol >= 0 or not saturation > zero_tol:
            raise ConfigError("diagnostics.activations: need 0 <= zero_tol < saturation")
        if not 0 <= max_dead_frac <= 1:
            raise ConfigError(f"diagnostics.activations.max_dead_frac={max_dead_frac!r}: [0, 1]")
        self.every_n_steps, self.zero_tol = every_n_steps, float(zero_tol)
        self.saturation, self.max_dead_frac = float(saturation), float(max_dead_frac)
        self._handles: list = []
        self._off = False  # True under torch.compile (see on_fit_start)
        self._stats: dict[str, torch.Tensor] = {}

    def _hook(self, group: str):
        def hook(_module, _inputs, output) -> None:
            a = output[0] if isinstance(output, tuple | list) else output
            if torch.is_tensor(a) and a.is_floating_point() and a.numel():
                self._stats[group] = activation_stats(a, self.zero_tol, self.saturation)

        return hook

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._off = compiled(pl_module)
        if self._off:
            log.info(
                "diagnostics: activation statistics skipped: the forward is compiled "
                "(compile=true) and sampling hooks would force recompilations"
            )

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        if self.current % self.every_n_steps == 0 and not self._off:
            for group, mod in activation_modules(pl_module).items():
                self._handles.append(mod.register_forward_hook(self._hook(group)))

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._remove()
        if not self._stats or not fitting(trainer):
            return
        groups = list(self._stats)
        values = torch.stack([self._stats[g] for g in groups]).tolist()  # one device sync
        self._stats = {}
        row = {f"{s}/{g}": v for g, vals in zip(groups, values, strict=True)
               for s, v in zip(STATS, vals, strict=True)}  # fmt: skip
        for g in groups:
            if row[f"dead/{g}"] > self.max_dead_frac:
                self.alerts.cross(
                    "dead_activations", f"dead/{g}", row[f"dead/{g}"], self.max_dead_frac,
                    "diagnostics.activations.max_dead_frac", self.current, trainer.current_epoch,
                )  # fmt: skip
        self.record(trainer, row, self.current)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._remove()
        super().on_exception(trainer, pl_module, exception)

    def summary(self) -> dict[str, float]:
        """``diag_max_dead_frac``: the largest dead-channel fraction of any block and sample."""
        dead = [v for r in self.rows for k, v in r.items() if k.startswith("dead/")]
        return {"diag_max_dead_frac": max(dead)} if dead else {}
