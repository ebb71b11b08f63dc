"""Selective state-space mixer (Mamba-2 parameterisation) in pure PyTorch.

The scan itself (``selective_scan``, chunked matmuls, and ``selective_scan_ref``, the loop it is
tested against) lives in ``plusultra.models.ssm_scan``; this module builds its inputs.

Why Mamba-2 and not Mamba-1 (issue 11): Mamba-1 gives every channel d and state n its own decay
``exp(dt[d] * A[d, n])``, so any scan must hold ``(B, L, Dm, N)`` decays and states (about five
such float32 tensors per block before issue 11: 0.06x the transformer's training samples/s on
CPU at 7.7x its memory), and its chunked matmul form would need a ``(B, Q, Q, Dm, N)`` decay
mask. Mamba-2 shares one decay per head, ``exp(dt[h] * A[h])``, across the head's P channels
and all N states, and shares ``B`` and ``C`` across heads; the scan then becomes matrix
products over (Q, Q) chunk masks (state-space duality) and never forms ``(B, L, Dm, N)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from plusultra.errors import ConfigError
from plusultra.models.layers import CausalDepthwiseConv, check_int, check_rate
from plusultra.models.ssm_scan import selective_scan, selective_scan_ref

__all__ = ["SelectiveSSM", "selective_scan", "selective_scan_ref"]


class SelectiveSSM(nn.Module):
    """Mamba-2 style selective SSM mixer: ``(B, L, D) -> (B, L, D)``, strictly causal.

    ``in_proj`` and ``gate_proj`` map each token to a main branch ``u`` and a gate branch of
    width ``Dm = expand * D``. The main branch goes through a short causal depthwise conv and SiLU
    and is read as ``n_heads`` heads of ``P = Dm / n_heads`` channels. A per-token projection
    of ``u`` gives the step size per head ``dt = softplus(. + dt_bias)`` (B, L, H) and the
    selective ``B``, ``C`` (B, L, N) shared by all heads; ``selective_scan`` mixes along time
    with the scalar per-head ``A = -exp(A_log)`` (H,); the skip ``D * u`` (per channel) is
    added, the result is gated by ``silu(gate)`` and projected back to D.

    Initialisation follows Mamba-2: ``A`` uniform in [1, 16], ``D = 1``, and ``dt_bias`` set
    so that ``softplus(dt_bias)`` is log-uniform in ``[dt_min, dt_max]``.

    Args:
        d_model: Token width D.
        d_state: State size N (per channel of every head).
        expand: Inner width Dm as a multiple of D.
        n_heads: Heads H, each of ``Dm / H`` channels sharing one decay; must divide Dm.
        dt_min: Smallest initial step size.
        dt_max: Largest initial step size.
        chunk: Chunk length of the scan in tokens (speed and memory only; the result does not
            depend on it up to float rounding).
        conv_kernel: Taps of the causal depthwise conv before the scan; 0 disables it.
        dropout: Dropout on the output, in training only.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 1,
        n_heads: int = 4,
        dt_min: float = 1e-3,
        dt_max: float = 0.1,
        chunk: int = 64,
        conv_kernel: int = 4,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        check_int("d_model", d_model)
        check_int("d_state", d_state)
        check_int("expand", expand)
        check_int("n_heads", n_heads)
        check_int("chunk", chunk)
        check_int("conv_kernel", conv_kernel, minimum=0)
        check_rate("dropout", dropout)
        if not 0.0 < dt_min <= dt_max:
            raise ConfigError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        d_inner = expand * d_model
        if d_inner % n_heads:
            raise ConfigError(
                f"SSM heads ({n_heads}) must divide the SSM inner width expand * d_model = "
                f"{expand} * {d_model} = {d_inner}"
            )
        head_dim = d_inner // n_heads
        self.d_state, self.n_heads, self.head_dim, self.chunk = d_state, n_heads, head_dim, chunk
        self.in_proj = nn.Linear(d_model, d_inner)  # main branch
        self.gate_proj = nn.Linear(d_model, d_inner)  # gate branch
        self.conv = CausalDepthwiseConv(d_inner, conv_kernel) if conv_kernel else None
        self.x_proj = nn.Linear(d_inner, n_heads + 2 * d_state, bias=False)  # -> dt, B, C
        self.dt_bias = nn.Parameter(torch.empty(n_heads))  # (H,)
        self.A_log = nn.Parameter(torch.log(torch.empty(n_heads).uniform_(1.0, 16.0)))  # (H,)
        self.D = nn.Parameter(torch.ones(d_inner))  # (Dm,) skip
        self.out_proj = nn.Linear(d_inner, d_model)
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():  # softplus(dt_bias) log-uniform in [dt_min, dt_max]
            log_dt = torch.rand(n_heads) * (math.log(dt_max) - math.log(dt_min))
            dt = torch.exp(log_dt + math.log(dt_min)).clamp(min=1e-4)
            self.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def _main_branch(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, L, D) -> u = silu(conv(in_proj(x))) (B, L, Dm), causal."""
        u = self.in_proj(x)  # (B, L, Dm)
        if self.conv is not None:
            u = self.conv(u)  # (B, L, Dm), causal
        return F.silu(u)

    def forward(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """x is (B, L, D), returns (B, L, D); ``reference=True`` uses ``selective_scan_ref``."""
        b, L, _ = x.shape
        if torch.is_grad_enabled():
            # recomputed in backward: keeps one (B, L, Dm) tensor per block instead of three
            u = checkpoint(self._main_branch, x, use_reentrant=False)  # (B, L, Dm)
        else:
            u = self._main_branch(x)  # (B, L, Dm)
        dt, B, C = self.x_proj(u).split([self.n_heads, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(dt + self.dt_bias)  # (B, L, H), > 0
        A = -torch.exp(self.A_log)  # (H,), < 0
        heads = u.view(b, L, self.n_heads, self.head_dim)  # (B, L, H, P)
        if reference:
            y = selective_scan_ref(heads, dt, A, B, C)  # (B, L, H, P)
        else:
            y = selective_scan(heads, dt, A, B, C, chunk=self.chunk)  # (B, L, H, P)
        y = y.reshape(b, L, -1) + self.D * u  # (B, L, Dm)
        y = _SiluGate.apply(y, self.gate_proj(x))  # (B, L, Dm), y * silu(gate)
        return self.dropout(self.out_proj(y))  # (B, L, D)


class _SiluGate(torch.autograd.Function):
    """``y * silu(gate)`` that keeps only ``y`` and ``gate`` for backward.

    Autograd would also keep ``silu(gate)``, one more (B, L, Dm) tensor per block; the
    backward recomputes it from ``gate`` instead (``tests/test_ssm.py`` checks the gradients).
    """

    @staticmethod
    def forward(ctx, y: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(y, gate)
        return y * F.silu(gate)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y, gate = ctx.saved_tensors
        sig = torch.sigmoid(gate)
        d_y = grad * gate * sig  # grad * silu(gate)
        d_gate = grad * y * (sig * (1 + gate * (1 - sig)))  # silu'(g) = s (1 + g (1 - s))
        return d_y, d_gate
