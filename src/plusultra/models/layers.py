"""Shared building blocks for the backbones.

Every layer maps a batch of token sequences ``(B, T, D)`` to ``(B, T, D)`` unless its
docstring says otherwise, and every layer that mixes along the time axis is causal by
default: output step ``t`` depends only on inputs at steps ``<= t``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint as torch_checkpoint

from plusultra.errors import ConfigError


def check_int(name: str, value: int, minimum: int = 1) -> None:
    """Raise ConfigError unless ``value`` is an int ``>= minimum``; ``name`` is the argument."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")


def check_positive(name: str, value: float) -> None:
    """Raise ConfigError unless ``value > 0`` (NaN fails); ``name`` is the argument."""
    if not value > 0:
        raise ConfigError(f"{name} must be > 0, got {value!r}")


def check_rate(name: str, value: float) -> None:
    """Raise ConfigError unless ``0 <= value < 1`` (a dropout or drop-path rate)."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")


def drop_path_rates(drop_path: float, depth: int) -> list[float]:
    """Stochastic-depth rate of each block: linear from 0 (first) to `drop_path` (last)."""
    return [drop_path * i / max(depth - 1, 1) for i in range(depth)]


def run_block(block: nn.Module, *args, checkpoint: bool = False):
    """``block(*args)``; with ``checkpoint``, in training with gradients on, through activation
    checkpointing.

    A checkpointed block keeps only its inputs for the backward pass and recomputes its inner
    activations there (``torch.utils.checkpoint``, non-reentrant): saved-activation memory per
    block drops to its input, for about one more forward pass of compute. The recomputation
    replays the forward's RNG state, so dropout and drop-path masks (and so outputs and
    gradients) are those of the plain call. In eval mode or under ``no_grad`` it is the plain call.
    """
    if checkpoint and block.training and torch.is_grad_enabled():
        return torch_checkpoint(block, *args, use_reentrant=False)
    return block(*args)


def step_token_end(j: int, T: int, causal: bool = True) -> int:
    """`token_end` of a backbone with one token per input step (negative j counts from the end).

    A causal token j covers steps up to j; a non-causal one sees the whole window (T - 1).
    """
    if j < 0:
        j += T
    if not 0 <= j < T:
        raise IndexError(f"token {j} out of range for {T} tokens")
    return j if causal else T - 1


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention on PyTorch's fused ``scaled_dot_product_attention``.

    Args:
        d_model: Token width D; must be divisible by ``n_heads``.
        n_heads: Number of attention heads H; each head has width D / H.
        dropout: Attention-weight dropout inside SDPA, and dropout on the output projection,
            both in training only.
        causal: If True, token t attends to tokens <= t only.
    """

    def __init__(
        self, d_model: int, n_heads: int, dropout: float = 0.0, causal: bool = True
    ) -> None:
        super().__init__()
        check_int("d_model", d_model)
        check_int("n_heads", n_heads)
        check_rate("dropout", dropout)
        if d_model % n_heads != 0:
            raise ConfigError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.n_heads = n_heads
        self.dropout = dropout
        self.causal = causal
        self.qkv = nn.Linear(d_model, 3 * d_model)  # fused query, key, value projection
        self.proj = nn.Linear(d_model, d_model)
        self.resid_dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend over the sequence; x is (B, T, D), returns (B, T, D)."""
        B, T, D = x.shape
        q, k, v = self.qkv(x).split(D, dim=2)  # 3 x (B, T, D)
        q = q.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)
        k = k.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)
        v = v.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, T, Dh)
        y = F.scaled_dot_product_attention(
            q, k, v, is_causal=self.causal, dropout_p=self.dropout if self.training else 0.0
        )  # (B, H, T, Dh)
        y = y.transpose(1, 2).contiguous().view(B, T, D)  # (B, T, D)
        return self.resid_dropout(self.proj(y))


class GatedMLP(nn.Module):
    """SwiGLU feed-forward: ``W_out(silu(W_gate x) * W_up x)``, applied per token.

    Args:
        d_model: Token width D.
        mlp_ratio: Hidden width as a multiple of D.
        dropout: Dropout on the output, in training only.
    """

    def __init__(self, d_model: int, mlp_ratio: float = 2.0, dropout: float = 0.0) -> None:
        super().__init__()
        check_positive("mlp_ratio", mlp_ratio)
        check_rate("dropout", dropout)
        hidden = max(1, int(mlp_ratio * d_model))
        self.fc_in = nn.Linear(d_model, 2 * hidden)  # fused gate and up projections
        self.fc_out = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, T, D), returns (B, T, D)."""
        gate, up = self.fc_in(x).chunk(2, dim=-1)  # 2 x (B, T, hidden)
        return self.dropout(self.fc_out(F.silu(gate) * up))  # (B, T, D)


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a whole residual branch per sample with probability p.

    Kept samples are scaled by 1 / (1 - p) so the expected output is unchanged; in eval
    mode (or with p = 0) this is the identity.

    Args:
        p: Probability of dropping the branch for a sample, in [0, 1).
    """

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        check_rate("drop_path", p)
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, ...), returns the same shape."""
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)  # (B, 1, 1)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class CausalDepthwiseConv(nn.Module):
    """Depthwise 1-D convolution along time, padded on the left only.

    Output step t is ``bias + sum_k w[k] * x[t - (kernel_size - 1 - k) * dilation]`` per channel,
    with steps before the start of the sequence treated as zero, so it sees inputs <= t.

    Args:
        d_model: Number of channels D (each has its own kernel).
        kernel_size: Taps per channel.
        dilation: Spacing between taps, in time steps.
    """

    def __init__(self, d_model: int, kernel_size: int = 3, dilation: int = 1) -> None:
        super().__init__()
        check_int("d_model", d_model)
        check_int("conv_kernel", kernel_size)
        check_int("dilation", dilation)
        self.left_pad = (kernel_size - 1) * dilation
        self.conv = nn.Conv1d(d_model, d_model, kernel_size, dilation=dilation, groups=d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, T, D), returns (B, T, D)."""
        x = x.transpose(1, 2)  # (B, D, T)
        x = F.pad(x, (self.left_pad, 0))  # (B, D, left_pad + T)
        return self.conv(x).transpose(1, 2)  # (B, T, D)


class PatchEmbedding(nn.Module):
    """Cut a window into patches aligned to its end and project each patch to one token.

    Patch j covers input steps ``[s_j, s_j + patch_len)`` with
    ``s_j = (T - patch_len) % stride + j * stride``, so the last patch ends at step T - 1 (the
    decision time) and the oldest ``(T - patch_len) % stride`` steps are dropped. There are
    ``N = (T - patch_len) // stride + 1`` tokens.

    Args:
        n_features: Input features per time step F.
        d_model: Token width D.
        patch_len: Time steps per patch P.
        stride: Steps between the starts of consecutive patches, in [1, patch_len].
    """

    def __init__(self, n_features: int, d_model: int, patch_len: int, stride: int) -> None:
        super().__init__()
        check_int("n_features", n_features)
        check_int("d_model", d_model)
        check_int("patch_len", patch_len)
        check_int("patch_stride", stride)
        if stride > patch_len:
            raise ConfigError(
                f"patch_stride ({stride}) must be <= patch_len ({patch_len}); "
                "a larger stride would skip input steps"
            )
        self.patch_len = patch_len
        self.stride = stride
        self.proj = nn.Linear(patch_len * n_features, d_model)

    def n_tokens(self, T: int) -> int:
        """Number of patch tokens N for a window of T steps."""
        if self.patch_len > T:
            raise ConfigError(
                f"window ({T} steps) is shorter than patch_len ({self.patch_len}); "
                "use a longer window or a smaller patch_len"
            )
        return (T - self.patch_len) // self.stride + 1

    def token_end(self, j: int, T: int) -> int:
        """Last input step covered by token j (negative j counts from the end) of T steps."""
        n = self.n_tokens(T)
        if j < 0:
            j += n
        if not 0 <= j < n:
            raise IndexError(f"token {j} out of range for {n} tokens")
        return (T - self.patch_len) % self.stride + j * self.stride + self.patch_len - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, T, F), returns (B, N, D)."""
        B, T, _ = x.shape
        n = self.n_tokens(T)
        x = x[:, (T - self.patch_len) % self.stride :]  # (B, T', F), drop the oldest steps
        patches = x.unfold(1, self.patch_len, self.stride)  # (B, N, F, P)
        patches = patches.transpose(2, 3).reshape(B, n, -1)  # (B, N, P*F), time-major
        return self.proj(patches)  # (B, N, D)


class LearnedPositionalEncoding(nn.Module):
    """Add a learned vector per position: token t gets ``table[t]``.

    Args:
        max_len: Longest sequence supported (rows of the table).
        d_model: Token width D.
    """

    def __init__(self, max_len: int, d_model: int) -> None:
        super().__init__()
        check_int("max_len", max_len)
        check_int("d_model", d_model)
        self.max_len = max_len
        self.table = nn.Parameter(torch.randn(max_len, d_model) * 0.02)  # (max_len, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, T, D), returns (B, T, D)."""
        T = x.shape[1]
        if self.max_len < T:
            raise ConfigError(
                f"sequence of {T} tokens is longer than max_len ({self.max_len}); "
                "raise the backbone's max_len"
            )
        return x + self.table[:T]  # (B, T, D)
