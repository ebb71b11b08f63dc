"""Cross-asset attention: each symbol's forecast may read the other symbols' current state.

``cross_asset.enabled=true`` (docs/models.md, "Cross-asset attention") turns the forecaster
into a model of whole cross-sections:

1. The run's backbone (any of ``backbones.BACKBONES``) encodes each listed symbol's own window
   ``(W, F) -> (T', D)``, exactly as in the pooled model, with the same weights for every symbol.
2. `CrossAssetMixer`: at the decision token (``steps="last"``) or at every token
   (``steps="all"``), each symbol's token attends to the same token of every *listed* symbol of
   the same date (a key-padding mask; a non-listed symbol is never a key), in ``depth`` pre-norm
   residual blocks of attention + gated MLP. There is no positional encoding across symbols, so
   the model is permutation equivariant in the symbols. It stays causal in time: token j of
   every symbol covers input bars ``<= token_end(j)`` of that symbol's window, all windows end
   at the same decision bar, and attention only mixes tokens of the same index j.
3. The run's head maps each symbol's tokens to its output, and the loss averages over the listed
   symbols that have targets (``rows``), which the data module flattens in date-major order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.layers import GatedMLP, check_int, check_rate
from plusultra.models.module import ForecastModule, OptimSettings

STEPS = ("last", "all")  # tokens mixed across symbols: the decision token only, or every token


class CrossSymbolBlock(nn.Module):
    """Pre-norm residual attention across the symbols of one date, then a gated MLP.

    Args:
        d_model: token width D; divisible by ``n_heads``.
        n_heads: attention heads.
        mlp_ratio: gated-MLP hidden width as a multiple of D.
        dropout: attention-weight and residual dropout (training only).
    """

    def __init__(self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float) -> None:
        super().__init__()
        if d_model % n_heads:
            raise ConfigError(f"cross_asset.n_heads={n_heads} must divide d_model={d_model}")
        self.n_heads, self.dropout = n_heads, dropout
        self.ln_attn = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = GatedMLP(d_model, mlp_ratio=mlp_ratio, dropout=dropout)

    def attend(self, z: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """z (G, S, D) tokens of G groups (a date, or a date and token index); allowed
        (G, S, S) bool, query i may read key j. Returns (G, S, D)."""
        G, S, D = z.shape
        q, k, v = self.qkv(z).split(D, dim=-1)  # 3 x (G, S, D)
        heads = (G, S, self.n_heads, D // self.n_heads)
        q, k, v = (a.view(heads).transpose(1, 2) for a in (q, k, v))  # (G, h, S, Dh)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed[:, None], dropout_p=self.dropout if self.training else 0.0
        )  # (G, h, S, Dh)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(G, S, D)))

    def forward(self, z: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """z (G, S, D), allowed (G, S, S) bool; returns (G, S, D)."""
        z = z + self.attend(self.ln_attn(z), allowed)
        return z + self.mlp(self.ln_mlp(z))


class CrossAssetMixer(nn.Module):
    """Attention across the listed symbols of each date, at the decision token or every token.

    Args:
        d_model: token width D (the backbone's ``d_out``).
        depth: cross-symbol blocks (>= 1).
        n_heads: attention heads; must divide D.
        mlp_ratio: gated-MLP hidden width as a multiple of D.
        dropout: dropout inside the blocks.
        steps: "last" mixes only the last token (the decision bar's, which a ``pool: last`` head
            reads); "all" mixes every token (for ``pool: mean`` heads).
    """

    def __init__(
        self,
        d_model: int,
        depth: int = 1,
        n_heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        steps: str = "last",
    ) -> None:
        super().__init__()
        check_int("cross_asset.depth", depth)
        check_int("cross_asset.n_heads", n_heads)
        check_rate("cross_asset.dropout", dropout)
        if steps not in STEPS:
            raise ConfigError(f"cross_asset.steps={steps!r}; valid: {list(STEPS)}")
        self.steps = steps
        self.blocks = nn.ModuleList(
            CrossSymbolBlock(d_model, n_heads, mlp_ratio, dropout) for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(d_model)

    def forward(self, h: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
        """Mix the members' tokens across symbols.

        Args:
            h: (M, T', D) tokens of the M listed symbols, date-major then symbol
                (``members.nonzero()`` order).
            members: (B, S) bool listing mask of the batch's B dates.

        Returns:
            (M, T', D), same order; only the mixed tokens change.
        """
        B, S = members.shape
        M, n_tok, D = h.shape
        mixed = h if self.steps == "all" else h[:, -1:]  # (M, T'', D)
        grid = h.new_zeros(B, S, mixed.shape[1], D)
        grid[members] = mixed  # (B, S, T'', D): zeros where not listed
        z = grid.transpose(1, 2).reshape(-1, S, D)  # (B * T'', S, D)
        eye = torch.eye(S, dtype=torch.bool, device=h.device)
        # a query reads listed keys, and itself (so that no row is empty; a non-listed
        # symbol's own output is never used)
        allowed = (members[:, None, :] | eye).repeat_interleave(mixed.shape[1], dim=0)
        for block in self.blocks:
            z = block(z, allowed)  # (B * T'', S, D)
        z = self.ln_f(z).view(B, -1, S, D).transpose(1, 2)[members]  # (M, T'', D)
        if self.steps == "all":
            return z
        return torch.cat([h[:, :-1], z], dim=1)  # (M, T', D)


@dataclass(frozen=True)
class CrossAssetSettings:
    """The ``cross_asset`` config node (conf/config.yaml).

    Attributes:
        enabled: train on whole cross-sections with `CrossAssetMixer` after the backbone.
        depth: cross-symbol attention blocks.
        n_heads: their attention heads (must divide d_model).
        mlp_ratio: their gated-MLP width / d_model.
        dropout: dropout inside them.
        steps: "last" or "all" (`CrossAssetMixer`).
    """

    enabled: bool = False
    depth: int = 1
    n_heads: int = 4
    mlp_ratio: float = 2.0
    dropout: float = 0.0
    steps: str = "last"

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"cross_asset.enabled={self.enabled!r} must be true or false")
        if self.steps not in STEPS:
            raise ConfigError(f"cross_asset.steps={self.steps!r}; valid: {list(STEPS)}")
        check_int("cross_asset.depth", self.depth)
        check_int("cross_asset.n_heads", self.n_heads)
        check_rate("cross_asset.dropout", self.dropout)

    def mixer(self, d_model: int) -> CrossAssetMixer:
        """The mixer for tokens of width `d_model`."""
        return CrossAssetMixer(
            d_model, self.depth, self.n_heads, self.mlp_ratio, self.dropout, self.steps
        )


class CrossAssetModule(ForecastModule):
    """`ForecastModule` over whole cross-sections (module docstring).

    Args:
        backbone: per-symbol sequence encoder (B, W, F) -> (B, T', D).
        head: (N, T', D) -> the head's output for N symbol-rows.
        loss, optim, compile, embedding: as for `ForecastModule`.
        mixer: the cross-symbol attention.

    Inputs are the batches of ``data.datasets.cross_section.CrossSectionDataset``: x
    (B, W, S, F), members (B, S), rows (B, S) and, with conditioning, labels (B, W, S, R). The
    output has one row per True of ``rows``, date-major, so the targets (N, H) and a portfolio
    loss's date, symbol and return (N,) line up with it as with pooled samples.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        loss: nn.Module,
        optim: OptimSettings,
        mixer: CrossAssetMixer,
        compile: bool = False,
        embedding: nn.Module | None = None,
    ) -> None:
        super().__init__(backbone, head, loss, optim, compile, embedding)
        self.mixer = mixer

    def _forward_impl(
        self,
        x: torch.Tensor,
        members: torch.Tensor,
        rows: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        seq = x.permute(0, 2, 1, 3)[members]  # (M, W, F) listed symbols' windows
        if self.embedding is not None:
            lab = labels.permute(0, 2, 1, 3)[members]  # (M, W, R)
            seq = torch.cat([seq, self.embedding(lab).to(seq.dtype)], dim=-1)  # (M, W, F + E)
        h = self.mixer(self.backbone(seq), members)  # (M, T', D)
        return self.head(h[rows[members]])  # (N, ...) outputs of the rows

    def forward(
        self,
        x: torch.Tensor,
        members: torch.Tensor,
        rows: torch.Tensor,
        labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self._forward(x, members, rows, labels)


def forecast_module(cross_asset: CrossAssetSettings | None, **kwargs) -> ForecastModule:
    """`ForecastModule(**kwargs)`, or a `CrossAssetModule` when ``cross_asset.enabled``."""
    if cross_asset is None or not cross_asset.enabled:
        return ForecastModule(**kwargs)
    return CrossAssetModule(mixer=cross_asset.mixer(kwargs["backbone"].d_out), **kwargs)
