"""Gradient diagnostics: norm per layer group, gradient noise scale, update-to-weight ratio.

All three read the gradients in ``on_before_optimizer_step``: after backward (and AMP
unscaling), before gradient clipping, so a norm is the raw one that clipping then caps.

- Gradient norm of group g: ``||grad_g||_2`` over all its parameters (groups from
  ``diagnostics_base.parameter_groups``), and the global norm.
- Gradient noise scale, the "simple" estimate of McCandlish et al. (2018), "An Empirical Model
  of Large-Batch Training", appendix A.1, from gradients at two batch sizes. Over a window of
  ``n`` consecutive optimiser steps with per-step gradients ``g_i`` of batches of ``B``
  samples: ``|G_small|^2 = mean_i |g_i|^2`` (batch B) and ``|G_big|^2 = |mean_i g_i|^2``
  (batch nB). The unbiased estimates are

      |G|^2  = (n |G_big|^2 - |G_small|^2) / (n - 1)
      tr(S)  = B n / (n - 1) * (|G_small|^2 - |G_big|^2)      (B times the per-step variance)

  and ``B_simple = tr(S) / |G|^2`` (in samples), the batch size above which larger batches
  stop helping much. Each window's two estimates are smoothed with an exponential moving
  average (decay ``noise_ema``) before the ratio, as the paper recommends; ``B_simple`` is NaN
  while the smoothed ``|G|^2`` is not positive. The window's gradients come from successive
  weights, so the variance also holds the change of the mean gradient over the window
  (small for small learning rates); the estimate is a diagnostic, not an exact quantity.
- Update-to-weight ratio of group g per optimiser step: ``||w_after - w_before|| /
  ||w_before||`` over the group's parameters (weight decay and clipping included: the update
  actually applied), every ``update_every_n_steps`` steps (it copies the weights).
"""

from __future__ import annotations

import math

import lightning as L
import torch

from plusultra.errors import ConfigError
from plusultra.training.diagnostics_base import (
    ParameterGroups,
    Recorder,
    batch_size,
    fitting,
    group_sq_norms,
    log_scalars,
    parameter_groups,
)


class NoiseScale:
    """Streaming "simple" gradient noise scale over windows of ``window`` steps (module doc).

    Args:
        window: optimiser steps per estimate (n >= 2).
        ema: decay of the moving averages of ``|G|^2`` and ``tr(S)`` across windows, in [0, 1).
    """

    def __init__(self, window: int, ema: float) -> None:
        self.window, self.ema = window, ema
        self.g2_ema = self.s_ema = None
        self._reset()

    def _reset(self) -> None:
        self._sum: list[torch.Tensor] | None = None  # sum of g_i, per parameter
        self._sq = 0.0  # sum of |g_i|^2
        self._n = self._samples = 0

    def update(self, grads: list[torch.Tensor], sq_norm: float, samples: int) -> dict | None:
        """Add one step's gradients (and their ``|g|^2``); returns the window's estimate at its
        last step: ``small``, ``big`` (|G_small|^2, |G_big|^2), ``g2``, ``trace``, ``batch``
        and ``b_simple``; None otherwise."""
        if self._sum is None:
            self._sum = [g.detach().clone() for g in grads]  # in the gradients' dtype
        else:
            torch._foreach_add_(self._sum, [g.detach() for g in grads])
        self._sq += sq_norm
        self._n += 1
        self._samples += samples
        if self._n < self.window:
            return None
        n, batch = self._n, self._samples / self._n
        small = self._sq / n
        big = float(torch.stack(torch._foreach_norm(self._sum)).double().square().sum()) / n**2
        self._reset()
        return self.estimate(small, big, n, batch)

    def estimate(self, small: float, big: float, n: int, batch: float) -> dict:
        """The window's estimates from |G_small|^2 and |G_big|^2 (module docstring)."""
        g2 = (n * big - small) / (n - 1)
        trace = batch * n / (n - 1) * (small - big)
        if self.g2_ema is None:
            self.g2_ema, self.s_ema = g2, trace
        else:
            self.g2_ema = self.ema * self.g2_ema + (1 - self.ema) * g2
            self.s_ema = self.ema * self.s_ema + (1 - self.ema) * trace
        b_simple = self.s_ema / self.g2_ema if self.g2_ema > 0 else math.nan
        return {"small": small, "big": big, "g2": g2, "trace": trace, "batch": batch,
                "b_simple": b_simple}  # fmt: skip


def noise_scale_ref(
    steps: list[list[float]], batches: list[int], window: int, ema: float
) -> list[float]:
    """Reference of ``NoiseScale``: ``B_simple`` of each complete window, plain Python loops.

    Args:
        steps: per step, the flattened gradient as a list of floats.
        batches: per step, its batch size.
    """
    out, g2_ema, s_ema = [], None, None
    for start in range(0, len(steps) - window + 1, window):
        chunk = steps[start : start + window]
        n, dim = len(chunk), len(chunk[0])
        small = sum(sum(v * v for v in g) for g in chunk) / n
        mean = [sum(g[j] for g in chunk) / n for j in range(dim)]
        big = sum(v * v for v in mean)
        batch = sum(batches[start : start + window]) / n
        g2 = (n * big - small) / (n - 1)
        trace = batch * (small - big) / (1 - 1 / n)
        g2_ema = g2 if g2_ema is None else ema * g2_ema + (1 - ema) * g2
        s_ema = trace if s_ema is None else ema * s_ema + (1 - ema) * trace
        out.append(s_ema / g2_ema if g2_ema > 0 else math.nan)
    return out


def update_ratios(
    before: list[torch.Tensor], after: list[torch.Tensor], index: torch.Tensor, n_groups: int
) -> torch.Tensor:
    """``||after - before|| / ||before||`` per group, (G,) float64 (inf where ``before`` is 0)."""
    delta = torch._foreach_sub(after, before)
    return (group_sq_norms(delta, index, n_groups) / group_sq_norms(before, index, n_groups)).sqrt()


def update_ratios_ref(before: list, after: list, groups: list[int], n_groups: int) -> list:
    """Reference of ``update_ratios``: a Python loop over every element."""
    num, den = [0.0] * n_groups, [0.0] * n_groups
    for b, a, g in zip(before, after, groups, strict=True):
        for x, y in zip(b.double().flatten().tolist(), a.double().flatten().tolist(), strict=True):
            num[g] += (y - x) ** 2
            den[g] += x * x
    return [math.sqrt(n / d) if d > 0 else math.inf for n, d in zip(num, den, strict=True)]


class GradientDiagnostics(Recorder):
    """Gradient norms per group, noise scale and update ratios (module docstring).

    Writes ``gradients.parquet`` (columns ``grad_norm/<group>``, ``grad_norm/total``, and
    ``update_ratio/<group>`` on sampled steps) and ``noise_scale.parquet`` (one row per window).

    Args:
        every_n_steps: record gradient norms every this many optimiser steps (>= 1).
        max_grad_norm: warn when a group's or the total gradient norm exceeds this (pre-clip).
        noise_window: optimiser steps per noise-scale estimate (>= 2); null: no noise scale.
        noise_ema: decay of the moving averages behind ``B_simple``, in [0, 1).
        update_every_n_steps: record update-to-weight ratios every this many steps; null: off.
        max_update_ratio: warn when a group's update-to-weight ratio exceeds this.
    """

    name = "gradients"

    def __init__(
        self,
        every_n_steps: int = 1,
        max_grad_norm: float = 100.0,
        noise_window: int | None = 10,
        noise_ema: float = 0.9,
        update_every_n_steps: int | None = 10,
        max_update_ratio: float = 0.1,
    ) -> None:
        super().__init__()
        for key, value in (("every_n_steps", every_n_steps),
                           ("update_every_n_steps", update_every_n_steps or 1)):  # fmt: skip
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"diagnostics.gradients.{key}={value!r} must be an int >= 1")
        if noise_window is not None and (not isinstance(noise_window, int) or noise_window < 2):
            raise ConfigError(f"diagnostics.gradients.noise_window={noise_window!r}: int >= 2")
        if not 0 <= noise_ema < 1:
            raise ConfigError(f"diagnostics.gradients.noise_ema={noise_ema!r} must be in [0, 1)")
        if not max_grad_norm > 0 or not max_update_ratio > 0:
            raise ConfigError("diagnostics.gradients.max_grad_norm / max_update_ratio must be > 0")
        self.every_n_steps, self.max_grad_norm = every_n_steps, float(max_grad_norm)
        self.update_every, self.max_update_ratio = update_every_n_steps, float(max_update_ratio)
        self.noise = NoiseScale(noise_window, noise_ema) if noise_window else None
        self.noise_rows: list[dict] = []
        self.groups: ParameterGroups | None = None
        self._samples = 0  # samples since the last optimiser step
        self._before: list[torch.Tensor] | None = None
        self._row: dict = {}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self.groups = parameter_groups(pl_module)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        # DDP: the step's gradient is the mean over every rank's batch (world size x this one)
        self._samples += batch_size(batch) * trainer.world_size

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        step, groups = self.current, self.groups
        self._row = {}
        if self.update_every and step % self.update_every == 0:
            self._before = [p.detach().clone() for _, p in groups.params]
        if step % self.every_n_steps != 0 and self.noise is None:
            self._samples = 0
            return  # nothing to measure on this step
        present = [(p.grad, i) for i, (_, p) in enumerate(groups.params) if p.grad is not None]
        grads = [g for g, _ in present]
        index = groups.index[[i for _, i in present]] if present else groups.index[:0]
        sq = group_sq_norms(grads, index, len(groups.names))  # (G,)
        total = float(sq.sum())
        if step % self.every_n_steps == 0:
            norms = sq.sqrt().tolist()
            self._row = {f"grad_norm/{g}": v for g, v in zip(groups.names, norms, strict=True)}
            self._row["grad_norm/total"] = math.sqrt(total)
            for what, value in self._row.items():
                if value > self.max_grad_norm:
                    self.alerts.cross(
                        "grad_norm", what, value, self.max_grad_norm,
                        "diagnostics.gradients.max_grad_norm", step, trainer.current_epoch,
                    )  # fmt: skip
        if self.noise is not None and math.isfinite(total):
            est = self.noise.update(grads, total, self._samples)
            if est is not None:
                self.noise_rows.append({"step": step, "epoch": trainer.current_epoch, **est})
                log_scalars(trainer, est, step, prefix="diagnostics/noise_scale/")
        self._samples = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._before is not None:
            after = [p.detach() for _, p in self.groups.params]
            ratios = update_ratios(self._before, after, self.groups.index, len(self.groups.names))
            self._before = None
            for g, value in zip(self.groups.names, ratios.tolist(), strict=True):
                self._row[f"update_ratio/{g}"] = value
                if value > self.max_update_ratio:
                    self.alerts.cross(
                        "update_ratio", f"update_ratio/{g}", value, self.max_update_ratio,
                        "diagnostics.gradients.max_update_ratio", self.current,
                        trainer.current_epoch,
                    )  # fmt: skip
        if self._row and fitting(trainer):
            self.record(trainer, self._row, self.current, dense=self.every_n_steps == 1)
        self._row = {}

    def tables(self) -> dict[str, list[dict]]:
        return {self.name: self.rows, "noise_scale": self.noise_rows}

    def summary(self) -> dict[str, float]:
        """``diag_max_grad_norm``, ``diag_max_update_ratio``, ``diag_grad_noise_scale``."""
        out = {}
        totals = [r["grad_norm/total"] for r in self.rows if "grad_norm/total" in r]
        if totals:
            out["diag_max_grad_norm"] = max(totals)
        ratios = [v for r in self.rows for k, v in r.items() if k.startswith("update_ratio/")]
        if ratios:
            out["diag_max_update_ratio"] = max(ratios)
        if self.noise is not None:
            out["diag_grad_noise_scale"] = (
                self.noise_rows[-1]["b_simple"] if self.noise_rows else math.nan
            )
        return out
