"""Calibration drift on validation: ECE and quantile coverage after every validation epoch.

During each validation epoch of ``fit`` a forward hook on the module's head keeps the head's
output (under ``compile=true``, where hooks would force recompilations, an extra uncompiled
forward pass computes it) and the batch's targets; at the epoch's end (one row per epoch of
``calibration.parquet``):

- ``head=calibrated``: the expected calibration error of the down/flat/up probabilities,
  computed by the function the module's ``val/calibration_error`` uses
  (``plusultra.models.heads.expected_calibration_error``, 10 confidence bins), and the
  coverage of its return quantiles;
- ``head=quantile``: the coverage of each quantile level ``q``, the fraction of targets at or
  below the predicted ``q``-quantile (``coverage/q0.1`` ...; a calibrated forecast has
  coverage ``q``), and ``coverage_error``, the largest ``|coverage - q|`` over the levels;
- other heads (regression, policy) output neither probabilities nor quantiles: skipped, with
  the reason logged once.

A value beyond its bound (``max_ece``, ``max_coverage_error``) warns. The drift is the curve
over epochs (TensorBoard ``diagnostics/calibration/*``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import lightning as L
import torch

from plusultra.errors import ConfigError
from plusultra.models.heads import expected_calibration_error
from plusultra.training.diagnostics_base import Recorder, compiled, fitting, split_batch

log = logging.getLogger("plusultra.diagnostics")


def quantile_coverage(q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Fraction of targets at or below each predicted quantile level.

    Args:
        q: (N, H, Q) predicted quantiles (Q levels, last axis).
        y: (N, H) targets, same units.

    Returns:
        (Q,) coverage per level, in [0, 1].
    """
    return (y[..., None] <= q).to(torch.float64).reshape(-1, q.shape[-1]).mean(dim=0)


def quantile_coverage_ref(q: torch.Tensor, y: torch.Tensor) -> list[float]:
    """Reference of ``quantile_coverage``: a Python loop."""
    qs, ys = q.tolist(), y.tolist()
    n_levels = q.shape[-1]
    hits, count = [0] * n_levels, 0
    for qn, yn in zip(qs, ys, strict=True):
        for qh, yh in zip(qn, yn, strict=True):
            count += 1
            for j in range(n_levels):
                hits[j] += yh <= qh[j]
    return [h / count for h in hits]


class CalibrationDiagnostics(Recorder):
    """ECE / quantile coverage per validation epoch of training (module docstring).

    Args:
        max_ece: warn when the validation ECE (calibrated head) exceeds this, in [0, 1].
        max_coverage_error: warn when a quantile level's ``|coverage - q|`` exceeds this.
    """

    name = "calibration"

    def __init__(self, max_ece: float = 0.1, max_coverage_error: float = 0.1) -> None:
        super().__init__()
        for key, value in (("max_ece", max_ece), ("max_coverage_error", max_coverage_error)):
            if not 0 < value <= 1:
                raise ConfigError(f"diagnostics.calibration.{key}={value!r} must be in (0, 1]")
        self.max_ece, self.max_coverage_error = float(max_ece), float(max_coverage_error)
        self._handle = None
        self._active = False  # collecting during this validation epoch
        self._out: list[torch.Tensor] = []
        self._y: list[torch.Tensor] = []
        self._skip_logged = False

    @staticmethod
    def levels(head) -> Sequence[float] | None:
        return getattr(head, "quantiles", None)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        head = getattr(pl_module, "head", None)
        kind = getattr(head, "kind", None)
        if not fitting(trainer) or head is None:
            return
        if kind not in ("calibrated", "quantiles"):
            if not self._skip_logged:
                log.info(
                    "diagnostics: calibration drift skipped: the %s head (kind %r) outputs "
                    "neither probabilities nor quantiles", type(head).__name__, kind,
                )  # fmt: skip
                self._skip_logged = True
            return
        self._active = True
        if not compiled(pl_module):  # keep the head's output of the module's own forward
            self._handle = head.register_forward_hook(
                lambda _m, _i, out: self._out.append(out.detach())
            )

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if not self._active:
            return
        inputs, y, _ = split_batch(pl_module, batch)
        self._y.append(y.detach())
        if self._handle is None:  # compiled forward: one more (uncompiled) forward, no hooks
            with torch.no_grad():
                self._out.append(pl_module._forward_impl(*inputs).detach())

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active:
            return
        if self._handle is not None:
            self._handle.remove()
        self._handle, self._active = None, False
        if not self._out:
            return
        out, y = torch.cat(self._out), torch.cat(self._y)  # (N, H, ...), (N, H)
        self._out, self._y = [], []
        head, row = pl_module.head, {}
        if head.kind == "calibrated":
            row["calibration/ece"] = expected_calibration_error(
                head.probabilities(out), y, head.flat_band
            )
            out = out[..., 3:]  # the return quantiles after the three concentrations
        levels = self.levels(head)
        cover = quantile_coverage(out, y).tolist()
        for q, c in zip(levels, cover, strict=True):
            row[f"calibration/coverage/q{q:g}"] = c
        row["calibration/coverage_error"] = max(
            abs(c - q) for q, c in zip(levels, cover, strict=True)
        )
        step, epoch = self._offset + trainer.global_step, trainer.current_epoch
        if row.get("calibration/ece", 0.0) > self.max_ece:
            self.alerts.cross(
                "calibration_drift", "val ECE", row["calibration/ece"], self.max_ece,
                "diagnostics.calibration.max_ece", step, epoch,
            )  # fmt: skip
        if row["calibration/coverage_error"] > self.max_coverage_error:
            self.alerts.cross(
                "calibration_drift", "val coverage error", row["calibration/coverage_error"],
                self.max_coverage_error, "diagnostics.calibration.max_coverage_error", step,
                epoch,
            )  # fmt: skip
        self.record(trainer, row, step)

    def summary(self) -> dict[str, float]:
        """The last validation epoch's ``diag_val_ece`` / ``diag_val_coverage_error``."""
        if not self.rows:
            return {}
        last = self.rows[-1]
        out = {"diag_val_coverage_error": last["calibration/coverage_error"]}
        if "calibration/ece" in last:
            out["diag_val_ece"] = last["calibration/ece"]
        return out
