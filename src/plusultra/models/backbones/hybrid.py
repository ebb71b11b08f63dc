"""Patch tokens mixed by attention, dilated causal convolution and a gated MLP: the default."""

from __future__ import annotations

import torch
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.layers import (
    CausalDepthwiseConv,
    CausalSelfAttention,
    DropPath,
    GatedMLP,
    LearnedPositionalEncoding,
    PatchEmbedding,
    check_int,
    check_rate,
)


class HybridBlock(nn.Module):
    """Three pre-norm residual mixers over tokens: attention, causal conv, gated MLP.

    Args:
        d_model: Token width D.
        n_heads: Attention heads.
        conv_kernel: Taps of the depthwise convolution.
        dilation: Token spacing between the convolution's taps.
        mlp_ratio: Gated-MLP hidden width as a multiple of D.
        dropout: Dropout rate inside attention and the MLP.
        drop_path: Stochastic-depth rate applied to each residual branch.
        causal: If False, attention sees every token of the window; the conv stays causal.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        conv_kernel: int,
        dilation: int,
        mlp_ratio: float,
        dropout: float,
        drop_path: float,
        causal: bool,
    ) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout=dropout, causal=causal)
        self.ln_conv = nn.LayerNorm(d_model)
        self.conv = CausalDepthwiseConv(d_model, kernel_size=conv_kernel, dilation=dilation)
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = GatedMLP(d_model, mlp_ratio=mlp_ratio, dropout=dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, N, D), returns (B, N, D)."""
        x = x + self.drop_path(self.attn(self.ln_attn(x)))  # (B, N, D)
        x = x + self.drop_path(self.conv(self.ln_conv(x)))  # (B, N, D)
        x = x + self.drop_path(self.mlp(self.ln_mlp(x)))  # (B, N, D)
        return x


class HybridBackbone(nn.Module):
    """Patch embedding + learned positions + ``depth`` hybrid blocks + final LayerNorm.

    Maps x ``(B, T, F)`` to ``(B, N, D)`` with ``N = (T - patch_len) // patch_stride + 1``
    patch tokens aligned to the end of the window, so the last token covers step T - 1.

    Args:
        n_features: Input features per time step F.
        d_model: Token width D (= ``d_out``).
        depth: Number of hybrid blocks.
        n_heads: Attention heads; must divide ``d_model``.
        patch_len: Time steps per patch token.
        patch_stride: Steps between patch starts, in [1, patch_len].
        conv_kernel: Taps of each block's depthwise convolution over tokens.
        conv_dilations: Block i uses dilation ``conv_dilations[i % len(conv_dilations)]``.
        mlp_ratio: Gated-MLP hidden width as a multiple of D.
        dropout: Dropout rate on the embeddings, inside attention and the MLP.
        drop_path: Stochastic-depth rate of the last block; it rises linearly from 0 in the first.
        max_len: Longest token sequence the positional table supports.
        causal: If False, attention sees every token of the window (non-causal within a
            sample's own window; still no leakage across samples). The conv stays causal.
    """

    def __init__(
        self,
        n_features: int,
        d_model: int = 64,
        depth: int = 4,
        n_heads: int = 4,
        patch_len: int = 4,
        patch_stride: int = 4,
        conv_kernel: int = 3,
        conv_dilations: list[int] | tuple[int, ...] = (1, 2, 4, 8),
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        max_len: int = 4096,
        causal: bool = True,
    ) -> None:
        super().__init__()
        check_int("depth", depth)
        check_rate("dropout", dropout)
        check_rate("drop_path", drop_path)
        conv_dilations = tuple(conv_dilations)
        if not conv_dilations:
            raise ConfigError("conv_dilations must be a non-empty list of positive integers")
        for i, dilation in enumerate(conv_dilations):
            check_int(f"conv_dilations[{i}]", dilation)
        self.d_out = d_model
        self.causal = causal
        self.patch = PatchEmbedding(n_features, d_model, patch_len, patch_stride)
        self.pos = LearnedPositionalEncoding(max_len, d_model)
        self.drop = nn.Dropout(dropout)
        rates = [drop_path * i / max(depth - 1, 1) for i in range(depth)]  # 0 -> drop_path
        self.blocks = nn.ModuleList(
            HybridBlock(
                d_model,
                n_heads,
                conv_kernel,
                conv_dilations[i % len(conv_dilations)],
                mlp_ratio,
                dropout,
                rates[i],
                causal,
            )
            for i in range(depth)
        )
        self.ln_f = nn.LayerNorm(d_model)

    def n_tokens(self, T: int) -> int:
        """Number of output tokens N for a window of T steps."""
        return self.patch.n_tokens(T)

    def token_end(self, j: int, T: int) -> int:
        """Last input step that output token j (negative j counts from the end) depends on."""
        end = self.patch.token_end(j, T)
        return end if self.causal else T - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, T, F), returns (B, N, D)."""
        h = self.drop(self.pos(self.patch(x)))  # (B, N, D)
        for block in self.blocks:
            h = block(h)  # (B, N, D)
        return self.ln_f(h)  # (B, N, D)
