"""Self-supervised pretraining of the run's backbone, and warm starts from a saved backbone.

`PretrainStage` trains the run's backbone (and market-state embedding, if any) with the
objectives of `training.ssl` on windows of the train segment's inputs only (labels, val and
test inputs are never read), selects the epoch with the lowest validation self-supervised
loss, and leaves those weights in the run's module for the next stage. The backbone's state
dict is saved as ``checkpoints/<stage>-backbone.pt`` (``backbone.pt`` for the final stage;
`training.curriculum`); `load_backbone` reads such a file (``init_from=RUN_DIR``).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.module import OptimSettings, adamw_warmup_cosine
from plusultra.training import ssl
from plusultra.training.stages import Stage, StageResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskedSettings:
    """Masked patch modelling.

    Attributes:
        patch_len: bars per patch.
        mask_ratio: share of each window's patches replaced by the mask vector, in (0, 1).
        weight: weight of this loss in the stage's objective.
    """

    patch_len: int = 4
    mask_ratio: float = 0.4
    weight: float = 1.0

    def __post_init__(self) -> None:
        if isinstance(self.patch_len, bool) or self.patch_len < 1:
            raise ConfigError(f"masked.patch_len={self.patch_len!r} must be an integer >= 1")
        if not 0 < self.mask_ratio < 1:
            raise ConfigError(f"masked.mask_ratio={self.mask_ratio!r} must be in (0, 1)")
        if not self.weight > 0:
            raise ConfigError(f"masked.weight={self.weight!r} must be > 0")


@dataclass(frozen=True)
class ContrastiveSettings:
    """Contrastive views and InfoNCE (strengths in the features' z-score units).

    Attributes:
        temperature: InfoNCE temperature (> 0).
        proj_dim: width of the projection head's output.
        jitter: std of the Gaussian noise added to every value (0: off).
        scaling: std of each sample-feature's multiplicative factor around 1 (0: off).
        time_mask: share of bars of one contiguous span set to 0 (0: off).
        crop: share of the window each view keeps, a random contiguous crop (1: off).
        weight: weight of this loss in the stage's objective.
    """

    temperature: float = 0.2
    proj_dim: int = 32
    jitter: float = 0.05
    scaling: float = 0.1
    time_mask: float = 0.1
    crop: float = 0.8
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise ConfigError(f"contrastive.temperature={self.temperature!r} must be > 0")
        if isinstance(self.proj_dim, bool) or self.proj_dim < 1:
            raise ConfigError(f"contrastive.proj_dim={self.proj_dim!r} must be an integer >= 1")
        for key in ("jitter", "scaling"):
            if not getattr(self, key) >= 0:
                raise ConfigError(f"contrastive.{key}={getattr(self, key)!r} must be >= 0")
        if not 0 <= self.time_mask < 1:
            raise ConfigError(f"contrastive.time_mask={self.time_mask!r} must be in [0, 1)")
        if not 0 < self.crop <= 1:
            raise ConfigError(f"contrastive.crop={self.crop!r} must be in (0, 1]")
        if not self.weight > 0:
            raise ConfigError(f"contrastive.weight={self.weight!r} must be > 0")


def settings(cls, values: dict | None, where: str):
    """A settings dataclass from a config mapping; an unknown key is a ConfigError naming it."""
    if values is None:
        return None
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {unknown}; valid: {valid}")
    try:
        return cls(**values)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from exc


class PretrainModule(L.LightningModule):
    """Self-supervised training of a backbone: masked patches and/or contrastive views.

    Args:
        backbone: the run's backbone, (B, T, F + E) -> (B, T', D); trained in place.
        n_features: input features F (before the market-state embedding).
        optim: the run's optimiser settings (same AdamW and warmup-cosine schedule).
        embedding: the run's market-state embedding, or None.
        masked: masked patch modelling settings, or None (off).
        contrastive: contrastive settings, or None (off).
    """

    def __init__(
        self,
        backbone: nn.Module,
        n_features: int,
        optim: OptimSettings,
        embedding: nn.Module | None = None,
        masked: MaskedSettings | None = None,
        contrastive: ContrastiveSettings | None = None,
    ) -> None:
        super().__init__()
        if masked is None and contrastive is None:
            raise ConfigError("pretraining needs at least one objective: masked or contrastive")
        self.backbone, self.embedding, self.optim = backbone, embedding, optim
        self.masked, self.contrastive = masked, contrastive
        d = backbone.d_out
        if masked is not None:
            self.mask_token = nn.Parameter(torch.zeros(n_features))  # (F,), replaces masked bars
            self.decoder = nn.Linear(d, masked.patch_len * n_features)  # token -> patch
        if contrastive is not None:
            self.projector = nn.Sequential(
                nn.Linear(d, d), nn.GELU(), nn.Linear(d, contrastive.proj_dim)
            )

    def encode(self, x: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        """(B, T, F) (+ labels (B, T, R)) -> backbone tokens (B, T', D)."""
        if self.embedding is not None:
            x = torch.cat([x, self.embedding(labels).to(x.dtype)], dim=-1)  # (B, T, F + E)
        return self.backbone(x)

    def masked_loss(self, x, labels, generator=None) -> torch.Tensor:
        """Reconstruction MSE of the masked patches of x (B, T, F)."""
        B, T, Fe = x.shape
        P = self.masked.patch_len
        patches = ssl.patch_mask(B, T, P, self.masked.mask_ratio, generator).to(x.device)
        steps = ssl.step_mask(patches, T, P)  # (B, T)
        x_in = torch.where(steps[..., None], self.mask_token.to(x.dtype), x)
        if labels is not None:
            labels = labels.masked_fill(steps[..., None], 0)  # masked bars: "unknown" regime
        h = self.encode(x_in, labels)  # (B, N_tok, D)
        ends = [self.backbone.token_end(j, T) for j in range(h.shape[1])]
        tok = ssl.patch_tokens(ends, T, P).to(x.device)  # (N,) token per patch, -1: none
        recon = self.decoder(h[:, tok.clamp(min=0)]).view(B, len(tok), P, Fe)  # (B, N, P, F)
        scored = patches & (tok >= 0)[None, :]  # (B, N)
        return ssl.masked_patch_loss(recon, ssl.to_patches(x, P), scored)

    def _view(self, x, labels, generator):
        c = self.contrastive
        B, T, _ = x.shape
        length = ssl.crop_length(T, c.crop) if c.crop < 1 else T
        starts = ssl.crop_starts(B, T, length, generator).to(x.device)
        v = ssl.crop(x, starts, length)
        lab = None if labels is None else ssl.crop(labels, starts, length)
        v = ssl.time_mask(v, c.time_mask, generator)
        v = ssl.scaling(v, c.scaling, generator)
        return ssl.jitter(v, c.jitter, generator), lab

    def contrastive_loss(self, x, labels, generator=None) -> torch.Tensor:
        """InfoNCE between two augmented views of each window of x (B, T, F)."""
        z = [
            self.projector(self.encode(*self._view(x, labels, generator)).mean(dim=1))
            for _ in range(2)
        ]  # 2 x (B, proj_dim)
        return ssl.info_nce(z[0], z[1], self.contrastive.temperature)

    def _step(self, batch, split: str, generator=None) -> torch.Tensor:
        x, labels = (batch, None) if isinstance(batch, torch.Tensor) else batch
        parts = {}
        if self.masked is not None:
            parts["masked"] = self.masked.weight * self.masked_loss(x, labels, generator)
        if self.contrastive is not None:
            w = self.contrastive.weight
            parts["contrastive"] = w * self.contrastive_loss(x, labels, generator)
        loss = sum(parts.values())
        kw = {"on_step": split == "train", "on_epoch": True, "batch_size": len(x)}
        kw["sync_dist"] = True  # DDP: epoch values are the mean over every rank's batches
        for name, value in parts.items():
            self.log(f"{split}/{name}_loss", value, **kw)
        self.log(f"{split}/loss", loss, prog_bar=True, **kw)
        return loss

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx: int) -> None:
        # the same masks and views every epoch: validation losses are comparable over epochs
        self._step(batch, "val", torch.Generator().manual_seed(batch_idx))

    def configure_optimizers(self):
        return adamw_warmup_cosine(self, self.optim)


@dataclass
class PretrainStage(Stage):
    """Self-supervised pretraining of the backbone (see the module docstring).

    Attributes:
        masked: `MaskedSettings` keys, or None (off).
        contrastive: `ContrastiveSettings` keys, or None (off).
    """

    masked: dict | None = None
    contrastive: dict | None = None
    trains_head = False  # the forecasting head is untouched: a pretrain stage cannot be last

    def __post_init__(self) -> None:
        super().__post_init__()
        where = f"curriculum stage {self.name!r}"
        self._masked = settings(MaskedSettings, self.masked, f"{where}: masked")
        self._contrastive = settings(ContrastiveSettings, self.contrastive, f"{where}: contrastive")
        if self._masked is None and self._contrastive is None:
            raise ConfigError(f"{where}: set masked and/or contrastive (both null)")

    def check(self, module: L.LightningModule, datamodule) -> None:
        super().check(module, datamodule)
        if self._masked is not None and not getattr(module.backbone, "causal", True):
            raise ConfigError(
                f"curriculum stage {self.name!r}: masked pretraining decodes each patch from the "
                "token ending at it, which a backbone with causal=false has not; use "
                "contrastive only, or a causal backbone"
            )

    def run(self, module, datamodule, make_trainer, final, callbacks=()) -> StageResult:
        pre = PretrainModule(
            module.backbone,
            datamodule.n_features,
            module.optim,
            module.embedding,
            self._masked,
            self._contrastive,
        )
        # no pruning callbacks: they watch the supervised objective, not this one
        return self.fit(pre, self.data(datamodule, inputs_only=True), make_trainer, final)


def save_backbone(backbone: nn.Module, path: str | os.PathLike) -> Path:
    """Write the backbone's state dict (loadable with ``torch.load(weights_only=True)``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().cpu() for k, v in backbone.state_dict().items()}, tmp)
    os.replace(tmp, path)
    return path


def backbone_file(source: str | os.PathLike) -> Path:
    """The backbone checkpoint of ``init_from``: RUN_DIR/checkpoints/backbone.pt, or a file."""
    path = Path(source)
    if path.is_dir() or path.suffix != ".pt":  # a run dir (existing or not)
        path = path / "checkpoints" / "backbone.pt"
    if not path.is_file():
        raise ConfigError(
            f"init_from={source}: no backbone checkpoint at {path} (a run dir's "
            "checkpoints/backbone.pt, or a checkpoints/<stage>-backbone.pt file)"
        )
    return path


def load_backbone(backbone: nn.Module, source: str | os.PathLike) -> Path:
    """Warm-start `backbone` in place from another run's saved backbone (``init_from``).

    Raises:
        ConfigError: the file is missing, or a parameter is missing, extra or of another shape
            (named, with both shapes).
    """
    path = backbone_file(source)
    state = torch.load(path, map_location="cpu", weights_only=True)
    own = backbone.state_dict()
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or extra:
        raise ConfigError(
            f"init_from={source}: {path} does not fit this run's backbone: "
            f"missing {missing[:5]}, unexpected {extra[:5]} (another backbone or depth?)"
        )
    for name, value in state.items():
        if value.shape != own[name].shape:
            raise ConfigError(
                f"init_from={source}: parameter {name} has shape {tuple(value.shape)} in {path} "
                f"but {tuple(own[name].shape)} in this run's backbone"
            )
    backbone.load_state_dict(state)
    log.info("Warm start: backbone weights from %s", path)
    return path
