"""The LightningModule: backbone + head + loss, AdamW with warmup and a cosine schedule."""

from __future__ import annotations

import math
from dataclasses import dataclass

import lightning as L
import torch
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.heads import expected_calibration_error
from plusultra.models.losses import check_compatible


@dataclass(frozen=True)
class OptimSettings:
    """AdamW and learning-rate schedule settings (conf/optim).

    Attributes:
        lr: peak learning rate.
        weight_decay: decoupled weight decay, applied to matrices only (not norms/biases).
        betas: Adam moment coefficients.
        warmup_frac: fraction of all optimiser steps spent in linear warmup.
        min_lr_ratio: the cosine decays from lr to lr * min_lr_ratio at the last step.
    """

    lr: float = 1e-3
    weight_decay: float = 0.01
    betas: tuple[float, float] = (0.9, 0.95)
    warmup_frac: float = 0.05
    min_lr_ratio: float = 0.1

    def __post_init__(self) -> None:
        if self.lr <= 0:
            raise ConfigError(f"optim.lr={self.lr} must be > 0")
        if not 0 <= self.warmup_frac < 1:
            raise ConfigError(f"optim.warmup_frac={self.warmup_frac} must be in [0, 1)")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"optim.min_lr_ratio={self.min_lr_ratio} must be in [0, 1]")
        if self.weight_decay < 0:
            raise ConfigError(f"optim.weight_decay={self.weight_decay} must be >= 0")


def warmup_cosine(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Learning-rate multiplier at `step`: linear warmup then cosine to `min_ratio`."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def adamw_warmup_cosine(module: L.LightningModule, optim: OptimSettings) -> dict:
    """AdamW (decay on weight matrices only) with a per-step warmup-cosine schedule over the
    trainer's estimated steps: ``configure_optimizers`` of every module a stage trains."""
    decay = [p for p in module.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.requires_grad and p.ndim < 2]
    opt = torch.optim.AdamW(
        [
            {"params": decay, "weight_decay": optim.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ],
        lr=optim.lr,
        betas=tuple(optim.betas),
    )
    total = max(1, int(module.trainer.estimated_stepping_batches))
    warmup = int(optim.warmup_frac * total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: warmup_cosine(s, total, warmup, optim.min_lr_ratio)
    )
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class ForecastModule(L.LightningModule):
    """Multi-step return forecaster.

    Args:
        backbone: (B, T, F) -> (B, T', D).
        head: (B, T', D) -> (B, H).
        loss: callable(pred (B, H), target (B, H)) -> scalar; a portfolio loss
            (``loss.portfolio``) also takes each sample's date, symbol and execution return,
            which its batches (the data module's block sampler) carry after the targets.
        optim: optimiser settings.
        compile: torch.compile the forward pass (embedding, backbone, head), which training,
            validation and every prediction call (hardware configs switch it on).
        embedding: market-state embedding of per-bar labels (B, T, R) -> (B, T, E), concatenated
            to the features before the backbone (whose n_features must include E); None: off.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        loss: nn.Module,
        optim: OptimSettings,
        compile: bool = False,
        embedding: nn.Module | None = None,
    ) -> None:
        super().__init__()
        check_compatible(head, loss)  # ConfigError naming both when the loss cannot score the head
        self.backbone, self.head, self.loss_fn, self.optim = backbone, head, loss, optim
        self.embedding = embedding
        self.kind = head.kind
        self._forward = torch.compile(self._forward_impl) if compile else self._forward_impl
        self._calibration: list[tuple[torch.Tensor, torch.Tensor]] = []

    @property
    def n_params(self) -> int:
        """Trainable parameters of backbone and head."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def _forward_impl(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if self.embedding is not None:
            x = torch.cat([x, self.embedding(labels).to(x.dtype)], dim=-1)  # (B, T, F + E)
        return self.head(self.backbone(x))  # the head's output, e.g. (B, H)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        return self._forward(x, labels)

    @torch.no_grad()
    def signal(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Point forecast (B, H') in target units, or a position (B, 1) for a policy head."""
        return self.head.signal(self(*inputs))

    def _naive_output(self, out: torch.Tensor) -> torch.Tensor:
        """The head's output for "no information": zero forecast / no position / uniform odds."""
        naive = torch.zeros_like(out)
        if self.kind == "calibrated":
            naive[..., :3] = 1.0  # equal Dirichlet concentrations over down / flat / up
        return naive

    def _split_batch(self, batch: tuple[torch.Tensor, ...]):
        """(inputs, y, market): market is (date, symbol, ret) for a portfolio loss, else ()."""
        if not getattr(self.loss_fn, "portfolio", False):
            *inputs, y = batch  # (x, y) or (x, labels, y)
            return inputs, y, ()
        if len(batch) < 5:
            raise ConfigError(
                f"loss={type(self.loss_fn).__name__} scores a portfolio but the batches carry no "
                "date, symbol and execution return; set data.block (conf/data reads loss.block)"
            )
        *inputs, y, date, symbol, ret = batch  # ... + (B,) decision bar, symbol, exec return
        return inputs, y, (date, symbol, ret)

    def _step(self, batch: tuple[torch.Tensor, ...], split: str) -> torch.Tensor:
        inputs, y, market = self._split_batch(batch)
        out = self(*inputs)
        loss = self.loss_fn(out, y, *market)
        on_step = split == "train"
        kw = {"on_epoch": True, "batch_size": len(y), "sync_dist": True}  # DDP: mean over ranks
        self.log(f"{split}/loss", loss, on_step=on_step, prog_bar=True, **kw)
        aux = getattr(self.backbone, "aux_loss", None)  # e.g. MoE load balancing, weighted
        if aux is not None:
            self.log(f"{split}/aux_loss", aux, on_step=on_step, **kw)
            for name, value in getattr(self.backbone, "aux_metrics", {}).items():
                self.log(f"{split}/{name}", float(value), **kw)
            if split == "train":
                loss = loss + aux
        if split != "train":  # the same loss with no information: the bar to beat
            naive = self.loss_fn(self._naive_output(out), y, *market)
            self.log(f"{split}/naive_loss", naive, **kw)
            if self.kind == "calibrated":
                self._calibration.append((self.head.probabilities(out).detach(), y.detach()))
        return loss

    def _log_calibration(self, split: str) -> None:
        """Expected calibration error of the down/flat/up probabilities over the whole split."""
        if self._calibration:
            probs = torch.cat([p for p, _ in self._calibration])
            y = torch.cat([t for _, t in self._calibration])
            ece = expected_calibration_error(probs, y, self.head.flat_band)
            self.log(f"{split}/calibration_error", ece)
            self._calibration = []

    def on_validation_epoch_end(self) -> None:
        self._log_calibration("val")

    def on_test_epoch_end(self) -> None:
        self._log_calibration("test")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch, batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.optim)
