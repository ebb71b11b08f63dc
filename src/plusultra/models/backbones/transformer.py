"""Plain pre-norm transformer over per-step tokens: the yardstick the other backbones must beat."""

from __future__ import annotations

import torch
from torch import nn

from plusultra.models.layers import (
    CausalSelfAttention,
    LearnedPositionalEncoding,
    check_int,
    check_positive,
    check_rate,
    run_block,
    step_token_end,
)


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))`` with a GELU MLP.

    Args:
        d_model: Token width D.
        n_heads: Attention heads.
        mlp_ratio: MLP hidden width as a multiple of D.
        dropout: Dropout rate inside attention and after each residual branch.
        causal: If True, token t attends to tokens <= t only.
    """

    def __init__(
        self, d_model: int, n_heads: int, mlp_ratio: float, dropout: float, causal: bool
    ) -> None:
        super().__init__()
        hidden = max(1, int(mlp_ratio * d_model))
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout=dropout, causal=causal)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden),
            nn.GELU(),
            nn.Linear(hidden, d_model),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, T, D), returns (B, T, D)."""
        x = x + self.attn(self.ln_1(x))  # (B, T, D)
        x = x + self.mlp(self.ln_2(x))  # (B, T, D)
        return x


class TransformerBackbone(nn.Module):
    """One token per time step: Linear(F -> D) + learned positions + ``depth`` pre-norm blocks.

    Maps x ``(B, T, F)`` to ``(B, T, D)``; token j covers input step j (with ``causal=True``).

    Args:
        n_features: Input features per time step F.
        d_model: Token width D (= ``d_out``).
        depth: Number of transformer blocks.
        n_heads: Attention heads; must divide ``d_model``.
        mlp_ratio: MLP hidden width as a multiple of D.
        dropout: Dropout rate on the embeddings, attention and residual branches.
        max_len: Longest window (time steps) the positional table supports.
        causal: If False, attention sees the whole window (non-causal within a sample's own
            window; still no leakage across samples).
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
        mlp_ratio: float = 4.0,
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
        check_rate("dropout", dropout)
        check_positive("mlp_ratio", mlp_ratio)
        self.d_out = d_model
        self.causal = causal
        self.embed = nn.Linear(n_features, d_model)
        self.pos = LearnedPositionalEncoding(max_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(d_model, n_heads, mlp_ratio, dropout, causal) for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(d_model)

    def n_tokens(self, T: int) -> int:
        """Number of output tokens for a window of T steps (one per step)."""
        return T

    def token_end(self, j: int, T: int) -> int:
        """Last input step that output token j (negative j counts from the end) depends on."""
        return step_token_end(j, T, self.causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, T, F), returns (B, T, D)."""
        h = self.drop(self.pos(self.embed(x)))  # (B, T, D)
        for block in self.blocks:
            h = run_block(block, h, checkpoint=self.activation_checkpointing)  # (B, T, D)
        return self.ln_f(h)  # (B, T, D)
