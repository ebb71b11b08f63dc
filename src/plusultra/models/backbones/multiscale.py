"""Hierarchical encoder over several time resolutions (e.g. daily, weekly, monthly bars).

Each scale s sees the window through causal averages of its last s bars, taken every s bars and
aligned to the end of the window, so the last token of every scale ends at the decision time.
Every block encodes each scale with its own causal transformer layer, then fuses the coarse
scales into the finest one by cross-attention under a mask that lets a fine token at step t read
only the coarse tokens that end at or before t. The output is the finest (per-bar) stream.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.backbones.transformer import TransformerBlock
from plusultra.models.layers import (
    LearnedPositionalEncoding,
    check_int,
    check_positive,
    check_rate,
    run_block,
    step_token_end,
)


class CrossScaleAttention(nn.Module):
    """Multi-head attention from query tokens to context tokens under a boolean mask.

    Args:
        d_model: Token width D; must be divisible by ``n_heads``.
        n_heads: Attention heads H.
        dropout: Attention-weight dropout and output dropout, in training only.
    """

    def __init__(self, d_model: int, n_heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        if d_model % n_heads != 0:
            raise ConfigError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.dropout = dropout
        self.q = nn.Linear(d_model, d_model)
        self.kv = nn.Linear(d_model, 2 * d_model)  # fused key, value projection
        self.proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(
        self, x: torch.Tensor, ctx: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Attend from x (B, T, D) to ctx (B, M, D); returns (B, T, D).

        ``mask`` (T, M) is True where query t may read context token m (None: all); every row
        must allow at least one context token.
        """
        B, T, D = x.shape
        M = ctx.shape[1]
        Dh = D // self.n_heads
        q = self.q(x).view(B, T, self.n_heads, Dh).transpose(1, 2)  # (B, H, T, Dh)
        k, v = self.kv(ctx).split(D, dim=2)  # 2 x (B, M, D)
        k = k.view(B, M, self.n_heads, Dh).transpose(1, 2)  # (B, H, M, Dh)
        v = v.view(B, M, self.n_heads, Dh).transpose(1, 2)  # (B, H, M, Dh)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, Dh)
        y = y.transpose(1, 2).contiguous().view(B, T, D)  # (B, T, D)
        return self.resid_dropout(self.proj(y))


class MultiScaleBlock(nn.Module):
    """One level: a transformer layer per scale, then coarse-to-fine cross-attention fusion.

    The context of the fusion is a learned "no coarse token yet" token followed by the tokens of
    every coarse scale, so early fine steps (before the first coarse token ends) still have one
    token to attend to.

    Args:
        d_model: Token width D.
        n_heads: Attention heads of the per-scale layers and of the fusion.
        n_scales: Number of scales (stream 0 is the finest).
        mlp_ratio: MLP hidden width of the per-scale layers as a multiple of D.
        dropout: Dropout rate inside attention and MLPs.
        causal: If True, per-scale attention is causal (the fusion mask is passed in).
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_scales: int,
        mlp_ratio: float,
        dropout: float,
        causal: bool,
    ) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(
            TransformerBlock(d_model, n_heads, mlp_ratio, dropout, causal) for _ in range(n_scales)
        )
        self.null = nn.Parameter(torch.randn(1, 1, d_model) * 0.02)  # (1, 1, D)
        self.ln_fine = nn.LayerNorm(d_model)
        self.ln_ctx = nn.LayerNorm(d_model)
        self.fuse = CrossScaleAttention(d_model, n_heads, dropout)

    def forward(self, streams: list[torch.Tensor], mask: torch.Tensor | None) -> list[torch.Tensor]:
        """streams[i] is (B, N_i, D) with streams[0] the finest; returns the same shapes.

        ``mask`` (N_0, 1 + sum_{i>0} N_i) says which context tokens each fine token may read.
        """
        streams = [enc(h) for enc, h in zip(self.encoders, streams, strict=True)]  # (B, N_i, D)
        fine = streams[0]  # (B, T, D)
        null = self.null.expand(fine.shape[0], 1, -1)  # (B, 1, D)
        ctx = torch.cat([null, *streams[1:]], dim=1)  # (B, 1 + M, D)
        fine = fine + self.fuse(self.ln_fine(fine), self.ln_ctx(ctx), mask)  # (B, T, D)
        return [fine, *streams[1:]]


class MultiScaleBackbone(nn.Module):
    """Causal average pooling to several scales, ``depth`` multi-scale blocks, the finest stream.

    For scale s and a window of T bars there are ``N_s = T // s`` tokens; token j is the mean
    of bars ``e_j - s + 1 .. e_j`` with ``e_j = T - 1 - (N_s - 1 - j) * s``, i.e. every s-th
    trailing average counted back from the last bar (the oldest ``T % s`` bars are left to the
    finer scales). Each scale has its own input projection and positional table.

    How ``depth`` is spent: ``self.blocks[i]`` is one level holding one pre-norm transformer
    layer per scale (causal self-attention + GELU MLP) followed by one cross-attention that
    fuses all coarse tokens into the fine stream. So a model has ``depth * len(scales)``
    transformer layers and ``depth`` fusion steps; the coarse streams get deeper alongside the
    fine one rather than being encoded once up front.

    Causality is exact: a coarse token sees its own bars and earlier coarse tokens of its scale,
    and fine token t reads only coarse tokens with ``e_j <= t``, so output t depends on inputs
    ``<= t``. Maps x ``(B, T, F)`` to ``(B, T, D)``.

    Args:
        n_features: Input features per time step F.
        d_model: Token width D (= ``d_out``).
        depth: Number of multi-scale blocks (levels).
        n_heads: Attention heads; must divide ``d_model``.
        scales: Bars per token of each scale; starts at 1 and strictly increases, e.g.
            ``(1, 5, 21)`` for daily, weekly and monthly views of daily bars.
        mlp_ratio: MLP hidden width as a multiple of D.
        dropout: Dropout rate on the embeddings, attention and residual branches.
        max_len: Longest window (bars) the positional tables support.
        causal: If False, all attention (per scale and fusion) sees the whole window
            (non-causal within a sample's own window; still no leakage across samples).
        activation_checkpointing: In training, recompute each block's activations in the
            backward pass instead of keeping them (``plusultra.models.layers.run_block``): less
            memory, about one more forward pass of compute; outputs and gradients are unchanged.
    """

    def __init__(
        self,
        n_features: int,
        d_model: int = 64,
        depth: int = 4,
        n_heads: int = 4,
        scales: list[int] | tuple[int, ...] = (1, 5, 21),
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        max_len: int = 4096,
        causal: bool = True,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        check_int("n_features", n_features)
        check_int("d_model", d_model)
        check_int("depth", depth)
        check_int("n_heads", n_heads)
        check_int("max_len", max_len)
        check_rate("dropout", dropout)
        check_positive("mlp_ratio", mlp_ratio)
        scales = tuple(scales)
        for i, s in enumerate(scales):
            check_int(f"scales[{i}]", s)
        if (
            not scales
            or scales[0] != 1
            or any(a >= b for a, b in zip(scales[:-1], scales[1:], strict=True))
        ):
            raise ConfigError(
                f"scales must start at 1 and strictly increase (e.g. [1, 5, 21]), got {scales}"
            )
        self.d_out = d_model
        self.causal = causal
        self.scales = scales
        self.embeds = nn.ModuleList(nn.Linear(n_features, d_model) for _ in scales)
        self.pos = nn.ModuleList(
            LearnedPositionalEncoding(max(1, max_len // s), d_model) for s in scales
        )
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            MultiScaleBlock(d_model, n_heads, len(scales), mlp_ratio, dropout, causal)
            for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(d_model)

    def n_tokens(self, T: int) -> int:
        """Number of output tokens for a window of T steps (one per step, the finest scale)."""
        return T

    def token_end(self, j: int, T: int) -> int:
        """Last input step that output token j (negative j counts from the end) depends on."""
        return step_token_end(j, T, self.causal)

    def scale_ends(self, scale: int, T: int) -> torch.Tensor:
        """Last bar covered by each token of ``scale`` in a window of T bars, (N_s,) long."""
        n = T // scale
        if n == 0:
            raise ConfigError(
                f"window ({T} bars) is shorter than scale {scale}; "
                "use a longer window or smaller scales"
            )
        return T - 1 - (n - 1 - torch.arange(n)) * scale  # (N_s,)

    def pool(self, x: torch.Tensor, scale: int) -> torch.Tensor:
        """Trailing means of ``scale`` bars ending at ``scale_ends``: (B, T, F) -> (B, N_s, F)."""
        B, T, F_ = x.shape
        n = len(self.scale_ends(scale, T))
        blocks = x[:, T - n * scale :].reshape(B, n, scale, F_)  # (B, N_s, s, F)
        return blocks.mean(dim=2)  # (B, N_s, F)

    def fusion_mask(self, T: int, device: torch.device | None = None) -> torch.Tensor:
        """(T, 1 + M) bool: fine step t may read the null token and coarse tokens ending <= t."""
        ends = torch.cat([torch.full((1,), -1)] + [self.scale_ends(s, T) for s in self.scales[1:]])
        return ends[None, :].to(device) <= torch.arange(T, device=device)[:, None]  # (T, 1 + M)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, T, F), returns (B, T, D)."""
        T = x.shape[1]
        streams = [
            self.drop(pos(embed(self.pool(x, s))))  # (B, N_s, D)
            for s, embed, pos in zip(self.scales, self.embeds, self.pos, strict=True)
        ]
        mask = self.fusion_mask(T, x.device) if self.causal else None  # (T, 1 + M)
        for block in self.blocks:
            streams = run_block(block, streams, mask, checkpoint=self.activation_checkpointing)
        return self.ln_f(streams[0])  # (B, T, D)
