"""Diagonal selective state-space mixer (Mamba-1 style) in pure PyTorch.

Per channel d and state n the recurrence over time t is::

    h_t[d, n] = exp(dt_t[d] * A[d, n]) * h_{t-1}[d, n] + dt_t[d] * B_t[n] * x_t[d]
    y_t[d]    = sum_n C_t[n] * h_t[d, n] + D[d] * x_t[d]

with ``h_0 = 0``, ``dt > 0`` and ``A < 0`` so every decay ``exp(dt * A)`` lies in (0, 1].
``dt``, ``B`` and ``C`` depend on the input (that is what "selective" means).

``selective_scan_ref`` is the obviously-correct loop over time; ``selective_scan`` is the
chunked scan used in training, and ``tests/test_ssm.py`` checks that the two agree (values and
gradients). Both are causal: ``y_t`` depends on inputs at steps ``<= t`` only.

Why the chunked scan does not build a ``(K, K)`` decay matrix per chunk (as Mamba-2's SSD
does): with Mamba-1 decays that depend on both d and n it is ``(B, K, K, Dm, N)``, K times the
size of all the states. Measured on CPU at B=64, L=256, Dm=128, N=16, its forward took 12-88 s
per layer for K = 8..64, against about 0.3 s for ``selective_scan``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.layers import CausalDepthwiseConv, check_int, check_rate


def _check_scan_shapes(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None,
) -> None:
    """Raise ValueError unless the scan inputs have consistent shapes (see selective_scan)."""
    b, L, d = x.shape
    n = A.shape[1]
    expected = {
        "dt": (dt, (b, L, d)),
        "A": (A, (d, n)),
        "B": (B, (b, L, n)),
        "C": (C, (b, L, n)),
    }
    if D is not None:
        expected["D"] = (D, (d,))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"selective scan: {name} has shape {tuple(tensor.shape)}, want {shape}"
            )


def selective_scan_ref(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
) -> torch.Tensor:
    """Naive sequential selective scan: one Python step per time step (the reference).

    Args:
        x: Inputs (B, L, Dm).
        dt: Step sizes (B, L, Dm), > 0.
        A: State matrix diagonal (Dm, N), < 0.
        B: Input-to-state weights (B, L, N).
        C: State-to-output weights (B, L, N).
        D: Optional skip weights (Dm,).

    Returns:
        y (B, L, Dm).
    """
    _check_scan_shapes(x, dt, A, B, C, D)
    b, L, d = x.shape
    h = x.new_zeros(b, d, A.shape[1])  # (B, Dm, N)
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t, :, None] * A)  # (B, Dm, N)
        h = decay * h + dt[:, t, :, None] * B[:, t, None, :] * x[:, t, :, None]  # (B, Dm, N)
        ys.append((C[:, t, None, :] * h).sum(-1))  # (B, Dm)
    y = torch.stack(ys, dim=1)  # (B, L, Dm)
    return y if D is None else y + D * x


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    chunk: int = 64,
) -> torch.Tensor:
    """Chunked selective scan; equals ``selective_scan_ref`` up to float rounding.

    The sequence is cut into ``nc = ceil(L / K)`` chunks of ``K = min(chunk, L)`` steps
    (zero-padded at the end, which cannot affect earlier outputs):

    1. Local scans: every chunk runs the recurrence from a zero state, all chunks at once
       (K Python steps on ``(B, nc, Dm, N)`` slices), giving each step's local output
       ``<C_k, g_k>`` and each chunk's final local state ``g[c]``.
    2. Carries: the state entering chunk c + 1 is ``h_in[c+1] = P[c] * h_in[c] + g[c]``, with
       ``P[c]`` the decay across chunk c (nc - 2 Python steps on ``(B, Dm, N)``).
    3. In parallel, add what the carried state contributes at step k of its chunk:
       ``<C_k, exp(S_k) * h_in>`` with ``S_k = A * cumsum(dt)_k`` the cumulative log-decay
       from the chunk start. ``S <= 0``, so no ``exp`` can overflow, even for huge dt.

    Work and memory are O(B * L * Dm * N), linear in L; there are about ``K + nc`` sequential
    steps. On GPU (kernel launches) a chunk near ``sqrt(L)`` needs the fewest; on CPU memory
    traffic dominates and ``chunk >= L`` (one chunk, so no steps 2-3) is fastest. The scan
    runs in float32 or wider with autocast off; the result is cast back to ``x.dtype``.

    Args:
        x: Inputs (B, L, Dm).
        dt: Step sizes (B, L, Dm), > 0.
        A: State matrix diagonal (Dm, N), < 0.
        B: Input-to-state weights (B, L, N).
        C: State-to-output weights (B, L, N).
        D: Optional skip weights (Dm,).
        chunk: Chunk length K in time steps, >= 1.

    Returns:
        y (B, L, Dm).
    """
    _check_scan_shapes(x, dt, A, B, C, D)
    check_int("chunk", chunk)
    out_dtype = x.dtype
    dtype = torch.promote_types(torch.promote_types(x.dtype, A.dtype), torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
        b, L, d = x.shape
        K = min(chunk, L)
        nc = math.ceil(L / K)
        pad = nc * K - L

        def chunked(t: torch.Tensor) -> torch.Tensor:
            """(B, L, E) -> (K, B, nc, E), contiguous, so step k of every chunk is one slice."""
            t = F.pad(t, (0, 0, 0, pad))  # (B, nc*K, E)
            return t.view(b, nc, K, t.shape[-1]).permute(2, 0, 1, 3).contiguous()

        xk, dtk, Bk, Ck = chunked(x), chunked(dt), chunked(B), chunked(C)  # (K, B, nc, .)
        decay = torch.exp(dtk[..., None] * A)  # (K, B, nc, Dm, N), per-step decays
        u = (dtk * xk)[..., None] * Bk[..., None, :]  # (K, B, nc, Dm, N), per-step inputs

        # 1. local scans from a zero state, all chunks at once; read each step out while the
        #    (B, nc, Dm, N) slice is still in cache instead of stacking all states
        g, y = torch.zeros_like(u[0]), []  # (B, nc, Dm, N), [(B, nc, Dm)]
        for a_k, u_k, c_k in zip(decay.unbind(0), u.unbind(0), Ck.unbind(0), strict=True):
            g = torch.addcmul(u_k, a_k, g)  # (B, nc, Dm, N)
            y.append((g * c_k[..., None, :]).sum(-1))  # (B, nc, Dm)
        y = torch.stack(y, dim=0)  # (K, B, nc, Dm), outputs as if every chunk started at h = 0

        if nc > 1:
            # 2. carry the state into chunks 1..nc-1: h_in[c] = P[c-1] * h_in[c-1] + g_last[c-1]
            t_cum = torch.cumsum(dtk, dim=0)[..., None]  # (K, B, nc, Dm, 1), dt since chunk start
            P = torch.exp(t_cum[-1] * A).unbind(1)  # nc x (B, Dm, N), decay across each chunk
            h_in = [g[:, 0]]  # state entering chunk 1, (B, Dm, N)
            for c in range(1, nc - 1):
                h_in.append(torch.addcmul(g[:, c], P[c], h_in[-1]))  # (B, Dm, N)
            h_in = torch.stack(h_in, dim=1)  # (B, nc - 1, Dm, N)

            # 3. add the carried state's contribution <C_k, exp(S_k) * h_in> in parallel
            cum_decay = torch.exp(t_cum[:, :, 1:] * A)  # (K, B, nc - 1, Dm, N), exp(S_k) <= 1
            carried = (cum_decay * (h_in * Ck[:, :, 1:, None, :])).sum(-1)  # (K, B, nc - 1, Dm)
            y = torch.cat([y[:, :, :1], y[:, :, 1:] + carried], dim=2)  # (K, B, nc, Dm)

        y = y.permute(1, 2, 0, 3).reshape(b, nc * K, d)[:, :L]  # (B, L, Dm)
        if D is not None:
            y = y + D.to(dtype) * x
    return y.to(out_dtype)


class SelectiveSSM(nn.Module):
    """Mamba-1 style selective SSM mixer: ``(B, L, D) -> (B, L, D)``, strictly causal.

    ``in_proj`` splits each token into a main branch and a gate branch of width
    ``Dm = expand * D``. The main branch goes through a short causal depthwise conv and SiLU,
    then per-token projections give ``dt = softplus(dt_proj(.))`` (B, L, Dm) and the selective
    ``B``, ``C`` (B, L, N); ``selective_scan`` mixes along time with ``A = -exp(A_log)`` and
    the skip ``D``; the result is gated by ``silu(gate)`` and projected back to D.

    Initialisation follows Mamba: S4D-real ``A_log[d] = log(1..N)``, ``D = 1``, and the
    ``dt_proj`` bias set so that ``softplus(bias)`` is log-uniform in ``[dt_min, dt_max]``.

    Args:
        d_model: Token width D.
        d_state: State size N per channel.
        expand: Inner width Dm as a multiple of D.
        dt_min: Smallest initial step size.
        dt_max: Largest initial step size.
        chunk: Chunk length of the scan, in tokens (speed only; results do not depend on it).
        conv_kernel: Taps of the causal depthwise conv before the scan; 0 disables it.
        dropout: Dropout on the output, in training only.
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        expand: int = 1,
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
        check_int("chunk", chunk)
        check_int("conv_kernel", conv_kernel, minimum=0)
        check_rate("dropout", dropout)
        if not 0.0 < dt_min <= dt_max:
            raise ConfigError(f"need 0 < dt_min <= dt_max, got dt_min={dt_min}, dt_max={dt_max}")
        d_inner = expand * d_model
        dt_rank = math.ceil(d_model / 16)  # Mamba's low-rank dt projection
        self.d_state, self.dt_rank, self.chunk = d_state, dt_rank, chunk
        self.in_proj = nn.Linear(d_model, 2 * d_inner)  # main branch and gate branch
        self.conv = CausalDepthwiseConv(d_inner, conv_kernel) if conv_kernel else None
        self.x_proj = nn.Linear(d_inner, dt_rank + 2 * d_state, bias=False)  # -> dt, B, C
        self.dt_proj = nn.Linear(dt_rank, d_inner)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, d_state + 1.0)).repeat(d_inner, 1))
        self.D = nn.Parameter(torch.ones(d_inner))  # (Dm,) skip
        self.out_proj = nn.Linear(d_inner, d_model)
        self.dropout = nn.Dropout(dropout)
        with torch.no_grad():  # dt = softplus(bias) log-uniform in [dt_min, dt_max]
            nn.init.uniform_(self.dt_proj.weight, -(dt_rank**-0.5), dt_rank**-0.5)
            log_dt = torch.rand(d_inner) * (math.log(dt_max) - math.log(dt_min))
            dt = torch.exp(log_dt + math.log(dt_min)).clamp(min=1e-4)
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)

    def forward(self, x: torch.Tensor, reference: bool = False) -> torch.Tensor:
        """x is (B, L, D), returns (B, L, D); ``reference=True`` uses ``selective_scan_ref``."""
        u, gate = self.in_proj(x).chunk(2, dim=-1)  # 2 x (B, L, Dm)
        if self.conv is not None:
            u = self.conv(u)  # (B, L, Dm), causal
        u = F.silu(u)
        dt, B, C = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.softplus(self.dt_proj(dt))  # (B, L, Dm), > 0
        A = -torch.exp(self.A_log)  # (Dm, N), < 0
        if reference:
            y = selective_scan_ref(u, dt, A, B, C, self.D)  # (B, L, Dm)
        else:
            y = selective_scan(u, dt, A, B, C, self.D, chunk=self.chunk)  # (B, L, Dm)
        y = y * F.silu(gate)  # (B, L, Dm)
        return self.dropout(self.out_proj(y))  # (B, L, D)
