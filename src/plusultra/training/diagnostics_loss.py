"""Training-loss diagnostics: robust loss-spike detection and the NaN/Inf guard.

Loss spikes. The training loss ``l_t`` of step t is a spike when

    l_t > median(W_t) + k * 1.4826 * MAD(W_t),    MAD(W) = median(|W - median(W)|)

with ``W_t`` the ``window`` losses before step t (fewer at the start; no verdict with fewer
than ``min_history``). 1.4826 MAD estimates the standard deviation of normal data, so ``k``
reads as "robust sigmas"; median and MAD ignore earlier spikes, unlike a mean and std.
``loss_spikes.parquet`` holds one row per step: ``loss``, ``median``, ``mad``, ``threshold``
and ``spike`` (0/1).

NaN/Inf guard (``NonFiniteGuard``): the loss before backward, every gradient before the
optimiser step, and every parameter after it (every ``params_every_n_steps`` steps). The
first non-finite tensor stops training with ``NonFiniteError`` naming the step and the tensor
(``loss``, ``grad of parameter X`` or ``parameter X``), after saving the batch that produced
it to ``diagnostics/nonfinite_batch.pt``.
"""

from __future__ import annotations

import io
import math
import statistics
from collections import deque
from pathlib import Path

import lightning as L
import numpy as np
import torch

from plusultra.errors import ConfigError, PlusUltraError
from plusultra.io import write_bytes_atomic
from plusultra.training.diagnostics_base import Recorder, fitting, split_batch

MAD_SCALE = 1.4826  # 1 / Phi^-1(3/4): MAD -> standard deviation for normal data


def trailing_threshold(past: np.ndarray, k: float) -> tuple[float, float, float]:
    """(median, MAD, threshold) of one trailing window ``past`` (W,): the online rule."""
    med = float(np.median(past))
    mad = float(np.median(np.abs(past - med)))
    return med, mad, med + k * MAD_SCALE * mad


def spike_thresholds(
    losses: np.ndarray, window: int, k: float, min_history: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Median, MAD and threshold of each step's trailing window (NaN before ``min_history``).

    Args:
        losses: (N,) training losses in step order.

    Returns:
        (median, mad, threshold), each (N,); step t is a spike when ``losses[t] > threshold[t]``.
    """
    x = np.asarray(losses, dtype=np.float64)
    n = len(x)
    med, mad = np.full(n, np.nan), np.full(n, np.nan)
    if n > min_history:
        padded = np.concatenate([np.full(window, np.nan), x])  # (window + N,)
        views = np.lib.stride_tricks.sliding_window_view(padded, window)[:n]  # (N, window)
        ok = np.arange(n) >= min_history  # at least min_history earlier losses
        w = views[ok]  # row t: the `window` losses before t, NaN-padded at the start
        med[ok] = np.nanmedian(w, axis=1)
        mad[ok] = np.nanmedian(np.abs(w - med[ok, None]), axis=1)
    return med, mad, med + k * MAD_SCALE * mad


def spike_thresholds_ref(
    losses: list[float], window: int, k: float, min_history: int
) -> list[float]:
    """Reference of ``spike_thresholds``' threshold: a loop with ``statistics.median``."""
    out = []
    for t in range(len(losses)):
        past = losses[max(0, t - window) : t]
        if len(past) < min_history:
            out.append(math.nan)
            continue
        med = statistics.median(past)
        mad = statistics.median(abs(v - med) for v in past)
        out.append(med + k * MAD_SCALE * mad)
    return out


class LossSpikeDiagnostics(Recorder):
    """Flags training steps whose loss is a spike (module docstring).

    Args:
        window: trailing losses the median and MAD are taken over (>= 3).
        k: robust sigmas above the median that make a spike (> 0).
        min_history: losses needed before any verdict (2 .. window).
    """

    name = "loss_spikes"

    def __init__(self, window: int = 100, k: float = 6.0, min_history: int = 20) -> None:
        super().__init__()
        if not isinstance(window, int) or window < 3:
            raise ConfigError(f"diagnostics.loss_spikes.window={window!r} must be an int >= 3")
        if not isinstance(min_history, int) or not 2 <= min_history <= window:
            raise ConfigError(
                f"diagnostics.loss_spikes.min_history={min_history!r} must be in [2, window]"
            )
        if not k > 0:
            raise ConfigError(f"diagnostics.loss_spikes.k={k!r} must be > 0")
        self.window, self.k, self.min_history = window, float(k), min_history
        self._history: deque[float] = deque(maxlen=window)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if loss is None or not fitting(trainer):
            return
        value = float(loss)
        med = mad = thr = math.nan
        if len(self._history) >= self.min_history:
            past = np.fromiter(self._history, dtype=np.float64, count=len(self._history))
            med, mad, thr = trailing_threshold(past, self.k)
        spike = bool(value > thr)  # False while the threshold is NaN
        if math.isfinite(value):
            self._history.append(value)
        row = {"loss": value, "median": med, "mad": mad, "threshold": thr, "spike": int(spike)}
        if spike:
            self.alerts.cross(
                "loss_spike", "train loss", value, thr, "diagnostics.loss_spikes.k",
                self.current, trainer.current_epoch,
            )  # fmt: skip
        row = {f"loss_spikes/{k}": v for k, v in row.items()}
        self.record(trainer, row, self.current, dense=True)

    def summary(self) -> dict[str, float]:
        """``diag_n_loss_spikes``."""
        return {"diag_n_loss_spikes": float(sum(r["loss_spikes/spike"] for r in self.rows))}


class NonFiniteError(PlusUltraError):
    """Training produced a NaN or Inf; the message names the step, tensor and saved batch."""

    exit_code = 3


class NonFiniteGuard(Recorder):
    """Stops training at the first NaN/Inf in the loss, a gradient or a parameter.

    Args:
        params_every_n_steps: check every parameter after every this many optimiser steps
            (>= 1; the loss and gradients are checked every step).
    """

    name = "nonfinite"

    def __init__(self, params_every_n_steps: int = 1) -> None:
        super().__init__()
        if not isinstance(params_every_n_steps, int) or params_every_n_steps < 1:
            raise ConfigError(
                f"diagnostics.nonfinite.params_every_n_steps={params_every_n_steps!r}: int >= 1"
            )
        self.params_every = params_every_n_steps
        self._batch, self._batch_idx = None, -1
        self._named: list = []  # (name, parameter), cached at fit start

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._named = list(pl_module.named_parameters())

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)
        self._batch, self._batch_idx = batch, batch_idx

    def on_before_backward(self, trainer, pl_module, loss: torch.Tensor) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            self._stop(trainer, pl_module, f"loss ({float(loss.detach().sum())})")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        named = [(n, p.grad) for n, p in self._named if p.grad is not None]
        self._check(trainer, pl_module, named, "grad of parameter")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.current % self.params_every == 0:
            named = [(n, p.detach()) for n, p in self._named]
            self._check(trainer, pl_module, named, "parameter")

    def _check(self, trainer, pl_module, named: list, what: str) -> None:
        if not named:
            return
        norms = torch.stack(torch._foreach_norm([t for _, t in named]))  # (P,) one kernel
        finite = torch.isfinite(norms)
        if bool(finite.all()):
            return
        bad = int((~finite).nonzero()[0])
        self._stop(trainer, pl_module, f"{what} {named[bad][0]}")

    def save_batch(self, pl_module: L.LightningModule, tensor: str) -> Path:
        """Write the current batch to ``nonfinite_batch.pt`` (loads with weights_only=True)."""
        inputs, targets, market = split_batch(pl_module, self._batch)
        payload = {
            "inputs": [t.detach().cpu() for t in inputs],
            "targets": targets.detach().cpu(),
            "market": [t.detach().cpu() for t in market],
            "batch_index": self._batch_idx,
            "step": self.current,
            "tensor": tensor,
        }
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        return write_bytes_atomic(self.directory / "nonfinite_batch.pt", buffer.getvalue())

    def _stop(self, trainer: L.Trainer, pl_module: L.LightningModule, tensor: str) -> None:
        where = f"step {self.current} (epoch {trainer.current_epoch}, batch {self._batch_idx})"
        saved = ""
        if self.directory is not None and self._batch is not None and trainer.is_global_zero:
            path = self.save_batch(pl_module, tensor)
            saved = (
                f"; the batch (inputs, targets, batch index, step) is saved in {path} "
                "(torch.load(path, weights_only=True))"
            )
        raise NonFiniteError(
            f"training stopped: non-finite {tensor} at {where}{saved}. Common causes: a "
            "learning rate too high for the model (optim.lr), NaN or Inf in the input data, "
            "or a loss that overflows; diagnostics/gradients.parquet shows the norms before it"
        )

    def summary(self) -> dict[str, float]:
        return {}
