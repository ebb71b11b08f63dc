"""The default backbone: patch tokens mixed by attention, conv, a selective SSM and a gated MLP.

Every block mixes along time three ways (causal self-attention for content-based lookups, a
dilated causal depthwise conv for local patterns, a selective state-space mixer (Mamba-2 style) for
long decaying memory in linear time) and then per token with a gated MLP.
"""

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
    drop_path_rates,
    run_block,
)
from plusultra.models.ssm import SelectiveSSM


class HybridBlock(nn.Module):
    """Pre-norm residual mixers over tokens: attention, causal conv, selective SSM, gated MLP.

    Args:
        d_model: Token width D.
        n_heads: Attention heads.
        conv_kernel: Taps of the depthwise convolution.
        dilation: Token spacing between the convolution's taps.
        mlp_ratio: Gated-MLP hidden width as a multiple of D.
        dropout: Dropout rate inside attention, on the SSM output and in the MLP.
        drop_path: Stochastic-depth rate applied to each residual branch.
        causal: If False, attention sees every token of the window; conv and SSM stay causal.
        ssm_state: State size N of the selective-SSM sub-layer; 0 leaves the sub-layer out.
        ssm_chunk: Chunk length of the SSM scan, in tokens.
        ssm_heads: SSM heads (one decay each, Mamba-2); must divide ``d_model``.
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
        ssm_state: int = 16,
        ssm_chunk: int = 64,
        ssm_heads: int = 4,
    ) -> None:
        super().__init__()
        self.ln_attn = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout=dropout, causal=causal)
        self.ln_conv = nn.LayerNorm(d_model)
        self.conv = CausalDepthwiseConv(d_model, kernel_size=conv_kernel, dilation=dilation)
        self.ln_ssm = nn.LayerNorm(d_model) if ssm_state else None
        self.ssm = (
            SelectiveSSM(
                d_model,
                d_state=ssm_state,
                n_heads=ssm_heads,
                chunk=ssm_chunk,
                dropout=dropout,
            )
            if ssm_state
            else None
        )
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = GatedMLP(d_model, mlp_ratio=mlp_ratio, dropout=dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, N, D), returns (B, N, D)."""
        x = x + self.drop_path(self.attn(self.ln_attn(x)))  # (B, N, D)
        x = x + self.drop_path(self.conv(self.ln_conv(x)))  # (B, N, D)
        if self.ssm is not None:
            x = x + self.drop_path(self.ssm(self.ln_ssm(x)))  # (B, N, D)
        x = x + self.drop_path(self.mlp(self.ln_mlp(x)))  # (B, N, D)
        return x


class HybridBackbone(nn.Module):
    """Patch embedding + learned positions + ``depth`` hybrid blocks + final LayerNorm.

    Each block applies, as pre-norm residual branches with stochastic depth: multi-head
    self-attention, a dilated causal depthwise conv, a selective state-space mixer
    (``plusultra.models.ssm.SelectiveSSM``, unless ``ssm_state=0``) and a gated MLP.

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
        dropout: Dropout rate on the embeddings, inside attention, the SSM output and the MLP.
        drop_path: Stochastic-depth rate of the last block; it rises linearly from 0 in the first.
        max_len: Longest token sequence the positional table supports.
        causal: If False, attention sees every token of the window (non-causal within a
            sample's own window; still no leakage across samples). Conv and SSM stay causal.
        ssm_state: State size N of each block's selective-SSM sub-layer (after the conv, before
            the MLP; inner width D); 0 leaves the sub-layer out (attention + conv + MLP only).
        ssm_chunk: Chunk length of the SSM scan, in tokens (speed and memory only; results do
            not depend on it up to float rounding).
        ssm_heads: SSM heads, each of ``d_model / ssm_heads`` channels sharing one decay
            (Mamba-2); must divide ``d_model`` (the SSM's inner width here).
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
        patch_len: int = 4,
        patch_stride: int = 4,
        conv_kernel: int = 3,
        conv_dilations: list[int] | tuple[int, ...] = (1, 2, 4, 8),
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        max_len: int = 4096,
        causal: bool = True,
        ssm_state: int = 16,
        ssm_chunk: int = 64,
        ssm_heads: int = 4,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        check_int("depth", depth)
        check_int("ssm_state", ssm_state, minimum=0)
        check_int("ssm_chunk", ssm_chunk)
        check_int("ssm_heads", ssm_heads)
        if ssm_state and d_model % ssm_heads:
            raise ConfigError(f"ssm_heads={ssm_heads} must divide d_model={d_model}")
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
        rates = drop_path_rates(drop_path, depth)  # 0 -> drop_path
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
                ssm_state,
                ssm_chunk,
                ssm_heads,
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
            h = run_block(block, h, checkpoint=self.activation_checkpointing)  # (B, N, D)
        return self.ln_f(h)  # (B, N, D)
