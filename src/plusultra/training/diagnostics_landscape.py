"""A 2-D loss landscape along filter-normalised random directions (Li et al., 2018).

At the end of training (``on_fit_end``, the last epoch's weights ``w``), two random Gaussian
directions ``d1``, ``d2`` are drawn with the parameters' shapes and filter-normalised: for a
parameter with two or more dimensions, each filter (slice along dimension 0) of the direction
is rescaled to the norm of the same filter of ``w``; 1-D parameters (biases, norm scales) get a
zero direction (the paper's "ignore biases and batch-norm" choice). The validation loss
``L(w + a d1 + b d2)`` is then evaluated on a ``resolution`` x ``resolution`` grid of
``a, b`` in ``[-span, span]`` on the first ``n_batches`` validation batches (eval mode, no
gradients), and the weights are put back.

Writes ``diagnostics/loss_landscape.parquet`` (columns ``alpha``, ``beta``, ``loss``) and
``diagnostics/loss_landscape.png`` (contours, the trained weights at the centre), which the
run report embeds. Cost: ``resolution^2 * n_batches`` forward passes; off by default
(``diagnostics=full`` switches it on).
"""

from __future__ import annotations

import io
import math

import lightning as L
import numpy as np
import pandas as pd
import torch

from plusultra.errors import ConfigError
from plusultra.io import write_bytes_atomic, write_parquet_atomic
from plusultra.training.diagnostics_base import Recorder, split_batch


def filter_normalized(direction: list[torch.Tensor], weights: list[torch.Tensor]) -> list:
    """Rescale each filter of ``direction`` to its weight filter's norm; zero 1-D tensors."""
    out = []
    for d, w in zip(direction, weights, strict=True):
        if w.dim() <= 1:
            out.append(torch.zeros_like(w))
            continue
        dn = d.flatten(1).norm(dim=1)  # (filters,)
        wn = w.flatten(1).norm(dim=1)
        scale = (wn / dn.clamp_min(1e-12)).view(-1, *([1] * (w.dim() - 1)))
        out.append(d * scale)
    return out


def filter_normalized_ref(direction: list[torch.Tensor], weights: list[torch.Tensor]) -> list:
    """Reference of ``filter_normalized``: a loop over filters."""
    out = []
    for d, w in zip(direction, weights, strict=True):
        r = torch.zeros_like(w)
        if w.dim() > 1:
            for i in range(w.shape[0]):
                dn = math.sqrt(sum(v * v for v in d[i].flatten().tolist()))
                wn = math.sqrt(sum(v * v for v in w[i].flatten().tolist()))
                r[i] = d[i] * (wn / max(dn, 1e-12))
        out.append(r)
    return out


class LossLandscape(Recorder):
    """The end-of-training loss landscape (module docstring).

    Args:
        resolution: grid points per axis (odd >= 3, so the trained weights are a grid point).
        span: the grid covers ``[-span, span]`` along each direction (> 0).
        n_batches: validation batches the loss is averaged over (>= 1).
        seed: seed of the random directions.
    """

    name = "loss_landscape"

    def __init__(self, resolution: int = 11, span: float = 1.0, n_batches: int = 2,
                 seed: int = 0) -> None:  # fmt: skip
        super().__init__()
        if not isinstance(resolution, int) or resolution < 3 or resolution % 2 == 0:
            raise ConfigError(f"diagnostics.landscape.resolution={resolution!r}: odd int >= 3")
        if not span > 0:
            raise ConfigError(f"diagnostics.landscape.span={span!r} must be > 0")
        if not isinstance(n_batches, int) or n_batches < 1:
            raise ConfigError(f"diagnostics.landscape.n_batches={n_batches!r}: int >= 1")
        self.resolution, self.span, self.n_batches, self.seed = resolution, span, n_batches, seed

    def _batches(self, trainer: L.Trainer, device: torch.device) -> list:
        loader = trainer.datamodule.val_dataloader()
        out = []
        for batch in loader:
            out.append([t.to(device) for t in batch])
            if len(out) == self.n_batches:
                break
        return out

    @torch.no_grad()
    def grid(self, pl_module: L.LightningModule, batches: list) -> pd.DataFrame:
        """Loss on the grid; the module's weights are restored afterwards."""
        params = [p for p in pl_module.parameters() if p.requires_grad]
        base = [p.detach().clone() for p in params]
        gen = torch.Generator().manual_seed(self.seed)
        d1, d2 = (
            filter_normalized([torch.randn(p.shape, generator=gen).to(p) for p in params], base)
            for _ in range(2)
        )
        axis = np.linspace(-self.span, self.span, self.resolution)
        rows, training = [], pl_module.training
        pl_module.eval()
        try:
            for a in axis:
                for b in axis:
                    for p, w, u, v in zip(params, base, d1, d2, strict=True):
                        p.copy_(w + float(a) * u + float(b) * v)
                    losses = []
                    for batch in batches:
                        inputs, y, market = split_batch(pl_module, batch)
                        losses.append(float(pl_module.loss_fn(pl_module(*inputs), y, *market)))
                    rows.append({"alpha": a, "beta": b, "loss": float(np.mean(losses))})
        finally:
            for p, w in zip(params, base, strict=True):
                p.copy_(w)
            pl_module.train(training)
        return pd.DataFrame(rows)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.directory is None or not trainer.is_global_zero:
            return
        if getattr(pl_module, "loss_fn", None) is None or trainer.datamodule is None:
            return
        frame = self.grid(pl_module, self._batches(trainer, pl_module.device))
        write_parquet_atomic(self.directory / "loss_landscape.parquet", frame)
        write_bytes_atomic(self.directory / "loss_landscape.png", landscape_png(frame))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass  # nothing per epoch

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        pass

    def summary(self) -> dict[str, float]:
        return {}


def landscape_png(frame: pd.DataFrame) -> bytes:
    """Filled contours of ``loss`` over (alpha, beta) (log10 when all positive), centre marked."""
    from matplotlib.figure import Figure

    grid = frame.pivot(index="beta", columns="alpha", values="loss")
    z = grid.to_numpy()
    fig = Figure(figsize=(5.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    log_scale = bool((np.isfinite(z) & (z > 0)).all())
    cs = ax.contourf(grid.columns, grid.index, np.log10(z) if log_scale else z, levels=20,
                     cmap="viridis")  # fmt: skip
    fig.colorbar(cs, ax=ax, label="log10 validation loss" if log_scale else "validation loss")
    ax.plot([0], [0], marker="*", color="red", ms=12, label="trained weights")
    ax.set(xlabel="direction 1 (filter-normalised)", ylabel="direction 2",
           title="Loss landscape (Li et al. 2018)")  # fmt: skip
    ax.legend(frameon=False, fontsize=8)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()
