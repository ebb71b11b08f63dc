"""Temporal convolution network: residual blocks of dilated causal convolutions, no attention."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.layers import (
    DropPath,
    check_int,
    check_rate,
    drop_path_rates,
    run_block,
    step_token_end,
)


class TemporalBlock(nn.Module):
    """Pre-norm residual block: ``x + conv(dropout(gelu(conv(ln(x)))))``.

    Both convolutions mix all channels (a full ``D x D x kernel_size`` kernel), use the same
    dilation and are padded on the left only, so output step t sees input steps
    ``t - 2 * (kernel_size - 1) * dilation .. t``.

    Args:
        d_model: Channels D.
        kernel_size: Taps per convolution.
        dilation: Spacing between taps, in time steps.
        dropout: Dropout after the activation and on the branch output, in training only.
        drop_path: Stochastic-depth rate of the residual branch.
    """

    def __init__(
        self, d_model: int, kernel_size: int, dilation: int, dropout: float, drop_path: float
    ) -> None:
        super().__init__()
        self.left_pad = (kernel_size - 1) * dilation
        self.ln = nn.LayerNorm(d_model)
        self.conv_1 = nn.Conv1d(d_model, d_model, kernel_size, dilation=dilation)
        self.conv_2 = nn.Conv1d(d_model, d_model, kernel_size, dilation=dilation)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, T, D), returns (B, T, D)."""
        h = self.ln(x).transpose(1, 2)  # (B, D, T)
        h = self.conv_1(F.pad(h, (self.left_pad, 0)))  # (B, D, T)
        h = self.dropout(self.act(h))  # (B, D, T)
        h = self.conv_2(F.pad(h, (self.left_pad, 0)))  # (B, D, T)
        h = self.dropout(h).transpose(1, 2)  # (B, T, D)
        return x + self.drop_path(h)  # (B, T, D)


class TCNBackbone(nn.Module):
    """One token per time step: Linear(F -> D) + ``depth`` temporal blocks + final LayerNorm.

    Maps x ``(B, T, F)`` to ``(B, T, D)``. It is causal by construction (left padding only) and
    output step t depends only on input steps ``t - receptive_field + 1 .. t``; steps before
    the window start count as zeros. There is no positional encoding: the convolutions are
    shift-equivariant.

    Args:
        n_features: Input features per time step F.
        d_model: Channels D (= ``d_out``).
        depth: Number of temporal blocks.
        kernel_size: Taps of every convolution.
        dilations: Block i uses dilation ``dilations[i % len(dilations)]``.
        dropout: Dropout rate on the embeddings and inside each block.
        drop_path: Stochastic-depth rate of the last block; it rises linearly from 0 in the first.
        activation_checkpointing: In training, recompute each block's activations in the
            backward pass instead of keeping them (``plusultra.models.layers.run_block``): less
            memory, about one more forward pass of compute; outputs and gradients are unchanged.
    """

    def __init__(
        self,
        n_features: int,
        d_model: int = 64,
        depth: int = 4,
        kernel_size: int = 3,
        dilations: list[int] | tuple[int, ...] = (1, 2, 4, 8),
        dropout: float = 0.0,
        drop_path: float = 0.0,
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.activation_checkpointing = activation_checkpointing
        check_int("n_features", n_features)
        check_int("d_model", d_model)
        check_int("depth", depth)
        check_int("kernel_size", kernel_size)
        check_rate("dropout", dropout)
        check_rate("drop_path", drop_path)
        dilations = tuple(dilations)
        if not dilations:
            raise ConfigError("dilations must be a non-empty list of positive integers")
        for i, dilation in enumerate(dilations):
            check_int(f"dilations[{i}]", dilation)
        self.d_out = d_model
        self.kernel_size = kernel_size
        self.dilations = [dilations[i % len(dilations)] for i in range(depth)]  # per block
        self.embed = nn.Linear(n_features, d_model)
        self.drop = nn.Dropout(dropout)
        rates = drop_path_rates(drop_path, depth)  # 0 -> drop_path
        self.blocks = nn.ModuleList(
            TemporalBlock(d_model, kernel_size, self.dilations[i], dropout, rates[i])
            for i in range(depth)
        )
        self.ln_f = nn.LayerNorm(d_model)

    @property
    def receptive_field(self) -> int:
        """Input steps that one output step sees: ``1 + 2 * (kernel_size - 1) * sum(dilations)``.

        Output step t depends on input steps ``t - receptive_field + 1 .. t`` exactly (two
        convolutions per block, each reaching ``(kernel_size - 1) * dilation`` steps back).
        """
        return 1 + 2 * (self.kernel_size - 1) * sum(self.dilations)

    def n_tokens(self, T: int) -> int:
        """Number of output tokens for a window of T steps (one per step)."""
        return T

    def token_end(self, j: int, T: int) -> int:
        """Last input step that output token j (negative j counts from the end) depends on."""
        return step_token_end(j, T)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, T, F), returns (B, T, D)."""
        h = self.drop(self.embed(x))  # (B, T, D)
        for block in self.blocks:
            h = run_block(block, h, checkpoint=self.activation_checkpointing)  # (B, T, D)
        return self.ln_f(h)  # (B, T, D)
