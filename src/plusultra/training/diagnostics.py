"""Training diagnostics: the callbacks of ``conf/diagnostics`` (docs/diagnostics.md).

``Diagnostics`` is what the config group builds: each component is a callback (or null, off),
built by Hydra from its own node with plain typed arguments, and ``Diagnostics`` gives them the
run's ``diagnostics/`` directory and one shared ``Alerts``. run.py hands ``callbacks`` to the
curriculum's trainers (not to the post-fit validation, test or walk-forward refits) and adds
``summary()`` to ``metrics.json`` (and so to the catalogue).

| component | callback | file(s) in ``<run dir>/diagnostics/`` |
|---|---|---|
| gradients | ``GradientDiagnostics`` | gradients.parquet, noise_scale.parquet |
| activations | ``ActivationDiagnostics`` | activations.parquet |
| loss_spikes | ``LossSpikeDiagnostics`` | loss_spikes.parquet |
| nonfinite | ``NonFiniteGuard`` | nonfinite_batch.pt (only when it stops a run) |
| calibration | ``CalibrationDiagnostics`` | calibration.parquet |
| landscape | ``LossLandscape`` | loss_landscape.parquet, loss_landscape.png |

Every threshold crossing is also a row of ``warnings.parquet``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from plusultra.errors import ConfigError
from plusultra.training.diagnostics_activations import ActivationDiagnostics
from plusultra.training.diagnostics_base import Alerts, Recorder, log
from plusultra.training.diagnostics_calibration import CalibrationDiagnostics
from plusultra.training.diagnostics_grads import GradientDiagnostics
from plusultra.training.diagnostics_landscape import LossLandscape
from plusultra.training.diagnostics_loss import (
    LossSpikeDiagnostics,
    NonFiniteError,
    NonFiniteGuard,
)

__all__ = ["Diagnostics", "NonFiniteError"]


class Diagnostics:
    """The run's diagnostics callbacks (conf/diagnostics).

    Args:
        dir: where the files go, ``<run dir>/diagnostics``.
        flush_every_s: least seconds between two rewrites of the parquet files at training
            epoch ends (they are always written at the end of the fit and on failure).
        gradients: gradient norms per group, noise scale, update ratios; None: off.
        activations: per-block activation statistics; None: off.
        loss_spikes: robust loss-spike detection; None: off.
        nonfinite: the NaN/Inf guard; None: off.
        calibration: ECE / quantile coverage per validation epoch; None: off.
        landscape: the end-of-training loss landscape; None: off.
    """

    def __init__(
        self,
        dir: str | os.PathLike,
        flush_every_s: float = 60.0,
        gradients: GradientDiagnostics | None = None,
        activations: ActivationDiagnostics | None = None,
        loss_spikes: LossSpikeDiagnostics | None = None,
        nonfinite: NonFiniteGuard | None = None,
        calibration: CalibrationDiagnostics | None = None,
        landscape: LossLandscape | None = None,
    ) -> None:
        if not flush_every_s >= 0:
            raise ConfigError(f"diagnostics.flush_every_s={flush_every_s!r} must be >= 0")
        self.dir = Path(dir)
        self.alerts = Alerts()
        parts = (gradients, activations, loss_spikes, nonfinite, calibration, landscape)
        self.callbacks: list[Recorder] = [c for c in parts if c is not None]
        for callback in self.callbacks:
            callback.attach(self.dir, self.alerts, flush_every_s)
        names = [type(c).__name__ for c in self.callbacks]
        logging.getLogger(__name__).info("Diagnostics: %s", ", ".join(names) or "off")

    def summary(self) -> dict[str, float]:
        """Summary numbers for metrics.json (``diag_*``; none when diagnostics are off); logs
        the run's count of threshold warnings."""
        if not self.callbacks:
            return {}
        out: dict[str, float] = {}
        for callback in self.callbacks:
            out |= callback.summary()
        out["diag_n_warnings"] = float(sum(self.alerts.counts.values()))
        log.info("diagnostics: %s; files in %s", self.alerts.report(), self.dir)
        return out
