"""Pure state-space stack: selective SSM + gated MLP blocks, linear in sequence length."""

from __future__ import annotations

import torch
from torch import nn

from plusultra.models.layers import (
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


class SSMBlock(nn.Module):
    """Two pre-norm residual mixers over tokens: selective SSM (along time), gated MLP.

    Args:
        d_model: Token width D.
        d_state: SSM state size N per channel.
        expand: SSM inner width as a multiple of D.
        conv_kernel: Taps of the SSM's causal depthwise conv; 0 disables it.
        mlp_ratio: Gated-MLP hidden width as a multiple of D.
        dropout: Dropout rate on the SSM and MLP outputs.
        drop_path: Stochastic-depth rate applied to each residual branch.
        chunk: Chunk length of the SSM scan, in tokens.
        heads: SSM heads (one decay each, Mamba-2); must divide ``expand * d_model``.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int,
        expand: int,
        conv_kernel: int,
        mlp_ratio: float,
        dropout: float,
        drop_path: float,
        chunk: int,
        heads: int,
    ) -> None:
        super().__init__()
        self.ln_ssm = nn.LayerNorm(d_model)
        self.ssm = SelectiveSSM(
            d_model,
            d_state,
            expand,
            n_heads=heads,
            chunk=chunk,
            conv_kernel=conv_kernel,
            dropout=dropout,
        )
        self.ln_mlp = nn.LayerNorm(d_model)
        self.mlp = GatedMLP(d_model, mlp_ratio=mlp_ratio, dropout=dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, N, D), returns (B, N, D)."""
        x = x + self.drop_path(self.ssm(self.ln_ssm(x)))  # (B, N, D)
        x = x + self.drop_path(self.mlp(self.ln_mlp(x)))  # (B, N, D)
        return x


class SSMBackbone(nn.Module):
    """Patch embedding + learned positions + ``depth`` SSM blocks + final LayerNorm.

    Maps x ``(B, T, F)`` to ``(B, N, D)`` with ``N = (T - patch_len) // patch_stride + 1``
    tokens aligned to the end of the window (``patch_len=1`` gives one token per bar). Always
    causal: token j depends on input steps ``<= token_end(j, T)`` only. Time and memory grow
    linearly with N (no attention).

    Args:
        n_features: Input features per time step F.
        d_model: Token width D (= ``d_out``).
        depth: Number of SSM blocks.
        d_state: SSM state size N per channel.
        expand: SSM inner width as a multiple of D.
        heads: SSM heads (one decay each, Mamba-2); must divide ``expand * d_model``.
        mlp_ratio: Gated-MLP hidden width as a multiple of D.
        dropout: Dropout rate on the embeddings and on the SSM and MLP outputs.
        drop_path: Stochastic-depth rate of the last block; it rises linearly from 0 in the first.
        patch_len: Time steps per token.
        patch_stride: Steps between token starts, in [1, patch_len].
        max_len: Longest token sequence the positional table supports.
        chunk: Chunk length of the SSM scan, in tokens (speed and memory only; results do not
            depend on it up to float rounding).
        conv_kernel: Taps of each SSM's causal depthwise conv over tokens; 0 disables it.
        activation_checkpointing: In training, recompute each block's activations in the
            backward pass instead of keeping them (``plusultra.models.layers.run_block``): less
            memory, about one more forward pass of compute; outputs and gradients are unchanged.
    """

    def __init__(
        self,
        n_features: int,
        d_model: int = 64,
        depth: int = 4,
        d_state: int = 16,
        expand: int = 2,
        heads: int = 4,
        mlp_ratio: float = 2.0,
        dropout: float = 0.0,
        drop_path: float = 0.0,
        patch_len: int = 1,
        patch_stride: int = 1,
        max_len: int = 4096,
        chunk: int = 64,
        conv_kernel: int = 4,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        check_int("depth", depth)
        check_rate("dropout", dropout)
        check_rate("drop_path", drop_path)
        self.d_out = d_model
        self.causal = True
        self.patch = PatchEmbedding(n_features, d_model, patch_len, patch_stride)
        self.pos = LearnedPositionalEncoding(max_len, d_model)
        self.drop = nn.Dropout(dropout)
        rates = drop_path_rates(drop_path, depth)  # 0 -> drop_path
        self.blocks = nn.ModuleList(
            SSMBlock(
                d_model, d_state, expand, conv_kernel, mlp_ratio, dropout, rates[i], chunk, heads
            )
            for i in range(depth)
        )
        self.ln_f = nn.LayerNorm(d_model)

    def n_tokens(self, T: int) -> int:
        """Number of output tokens N for a window of T steps."""
        return self.patch.n_tokens(T)

    def token_end(self, j: int, T: int) -> int:
        """Last input step that output token j (negative j counts from the end) depends on."""
        return self.patch.token_end(j, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, T, F), returns (B, N, D)."""
        h = self.drop(self.pos(self.patch(x)))  # (B, N, D)
        for block in self.blocks:
            h = run_block(block, h, checkpoint=self.activation_checkpointing)  # (B, N, D)
        return self.ln_f(h)  # (B, N, D)
