"""Selective scan with a scalar decay per head (Mamba-2 style), and its sequential reference.

For head h, channel p of the head and state n, the recurrence over time t is::

    h_t[h, p, n] = exp(dt_t[h] * A[h]) * h_{t-1}[h, p, n] + dt_t[h] * x_t[h, p] * B_t[n]
    y_t[h, p]    = sum_n C_t[n] * h_t[h, p, n]

with ``h_0 = 0``, ``dt > 0`` and ``A < 0``, so every decay ``exp(dt * A)`` lies in (0, 1].
``dt``, ``B`` and ``C`` depend on the input ("selective"). The decay is one scalar per
(token, head), shared by the head's P channels and all N states, and ``B``, ``C`` are shared by
every head; that is what lets the scan be written with matrix products (the state-space duality
of Dao & Gu, "Transformers are SSMs", 2024): inside a chunk of Q tokens

    y[i] = sum_{j <= i} (C_i . B_j) * exp(S_i - S_j) * dt_j * x_j,   S = cumsum(dt * A)

is ``(C B^T o Lmask) (dt x)`` with the 1-semiseparable decay mask ``Lmask[i, j] = exp(S_i - S_j)``
for ``i >= j`` and 0 above the diagonal.

``selective_scan_ref`` is the obviously-correct loop over time; ``selective_scan`` is the
chunked matmul scan used in training; ``tests/test_ssm.py`` checks that they agree (values
and gradients, several chunk sizes, L = 1000 in float32). Both are causal.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from plusultra.models.layers import check_int

MAX_LOG_DECAY = 1000.0  # per-step |dt * A| cap: exp(-1000) underflows to 0 in float64


def _check_scan_shapes(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> None:
    """Raise ValueError unless the scan inputs have consistent shapes (see selective_scan)."""
    if x.dim() != 4:
        raise ValueError(f"selective scan: x has shape {tuple(x.shape)}, want (B, L, H, P)")
    b, L, h, _ = x.shape
    n = B.shape[-1]
    expected = {"dt": (dt, (b, L, h)), "A": (A, (h,)), "B": (B, (b, L, n)), "C": (C, (b, L, n))}
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"selective scan: {name} has shape {tuple(tensor.shape)}, want {shape}"
            )


def selective_scan_ref(
    x: torch.Tensor, dt: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor
) -> torch.Tensor:
    """Naive sequential selective scan: one Python step per time step (the reference).

    Args:
        x: Inputs (B, L, H, P): H heads of P channels.
        dt: Step sizes (B, L, H), > 0.
        A: Log-decay rate per head (H,), < 0.
        B: Input-to-state weights (B, L, N), shared by all heads.
        C: State-to-output weights (B, L, N), shared by all heads.

    Returns:
        y (B, L, H, P).
    """
    _check_scan_shapes(x, dt, A, B, C)
    b, L, h, p = x.shape
    state = x.new_zeros(b, h, p, B.shape[-1])  # (B, H, P, N)
    ys = []
    for t in range(L):
        decay = torch.exp(dt[:, t] * A)[..., None, None]  # (B, H, 1, 1)
        inp = (dt[:, t, :, None] * x[:, t])[..., None] * B[:, t, None, None, :]  # (B, H, P, N)
        state = decay * state + inp  # (B, H, P, N)
        ys.append((state * C[:, t, None, None, :]).sum(-1))  # (B, H, P)
    return torch.stack(ys, dim=1)  # (B, L, H, P)


def selective_scan(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk: int = 64,
) -> torch.Tensor:
    """Chunked matmul scan (SSD); equals ``selective_scan_ref`` up to float rounding.

    The sequence is cut into ``nc = ceil(L / Q)`` chunks of ``Q = min(chunk, L)`` tokens
    (zero-padded at the end: a padded step has dt = 0, so it neither decays nor feeds the
    state, and it comes after every real step anyway). With ``a = dt * A <= 0`` the
    log-decays and ``S`` their cumulative sum restarted at each chunk:

    1. Inside each chunk (all chunks at once): ``Y_diag = (C B^T o Lmask) (dt x)``, with
       ``Lmask[i, j] = exp(S_i - S_j)`` for ``i >= j``. The exponent is filled with -inf above
       the diagonal before ``exp``, so every exponent taken is <= 0 (no overflow for any dt)
       and each decay is one ``exp`` of a sum of log-decays, never a product of many small
       numbers.
    2. Each chunk's own final state ``s[c] = sum_j exp(S_last - S_j) B_j (dt_j x_j)``.
    3. One recurrence over chunks carries the state: ``h[c+1] = exp(S_last[c]) h[c] + s[c]``
       (nc Python steps on (B, H, P, N)).
    4. The carried state's output: ``Y_off[i] = exp(S_i) C_i . h[c]``.

    Memory: the largest tensors are the per-chunk (Q, Q) masks, ``B * H * L * Q`` values in
    all, and the chunk-boundary states, ``B * (L / Q) * H * P * N``; nothing of size
    ``(B, L, H * P, N)`` is formed. Work is O(L * Q) per head and channel, linear in L for a
    fixed chunk. The scan runs in float32 (or float64 for float64 inputs) with autocast off;
    the result is cast back to ``x.dtype``.

    Args:
        x: Inputs (B, L, H, P): H heads of P channels.
        dt: Step sizes (B, L, H), > 0.
        A: Log-decay rate per head (H,), < 0.
        B: Input-to-state weights (B, L, N), shared by all heads.
        C: State-to-output weights (B, L, N), shared by all heads.
        chunk: Chunk length Q in tokens, >= 1 (speed and memory only).

    Returns:
        y (B, L, H, P).
    """
    _check_scan_shapes(x, dt, A, B, C)
    check_int("chunk", chunk)
    out_dtype = x.dtype
    dtype = torch.promote_types(torch.promote_types(x.dtype, A.dtype), torch.float32)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x, dt, A, B, C = (t.to(dtype) for t in (x, dt, A, B, C))
        b, L, h, p = x.shape
        n = B.shape[-1]
        Q = min(chunk, L)
        nc = math.ceil(L / Q)
        pad = nc * Q - L
        if pad:
            x, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, B, C))
            dt = F.pad(dt, (0, 0, 0, pad))  # dt = 0: decay 1, no input
        # exp(-MAX_LOG_DECAY) is 0 in float32 and float64 alike, so the clamp changes no value
        # and no gradient; it bounds |S| so that the split below cannot overflow.
        a = (dt * A).clamp_min(-MAX_LOG_DECAY)  # (B, nc * Q, H), log-decays <= 0
        # S in float64, split as S = hi + lo with hi = S rounded to float32: hi_i - hi_j is then
        # exact up to rounding of the difference itself, even when both S are large (a huge dt
        # early in the chunk); exp(lo) ~ 1 is folded into the columns and rows below. lo is
        # detached: y depends on S only through S_i - S_j = (hi_i - hi_j) + (lo_i - lo_j), so
        # the gradient through hi alone is the exact gradient with respect to S.
        S = a.double().view(b, nc, Q, h).cumsum(2)  # (B, nc, Q, H)
        hi = S.to(dtype)  # (B, nc, Q, H)
        lo = (S - hi.double()).detach()  # (B, nc, Q, H), |lo| <= ulp(S) / 2
        # dt x with the column factor exp(-lo) folded in (one pass over (B, L, H, P))
        xdt = x.view(b, nc, Q, h, p) * (dt.view(b, nc, Q, h) * torch.exp(-lo).to(dtype))[..., None]
        Bc, Cc = B.view(b, nc, Q, n), C.view(b, nc, Q, n)  # (B, nc, Q, N)

        # 1. within-chunk terms as matmuls: (C B^T o Lmask) (dt x), times the row factor exp(lo)
        scores = Cc @ Bc.transpose(-1, -2)  # (B, nc, Q, Q), C_i . B_j
        rows = torch.exp(lo).to(dtype).transpose(2, 3).contiguous()  # (B, nc, H, Q)
        X = xdt.transpose(2, 3).contiguous()  # (B, nc, H, Q, P)
        y = _ChunkDiagonal.apply(hi.transpose(2, 3).contiguous(), rows, scores, X)  # like X

        if nc > 1:
            # 2. each chunk's final state from its own inputs, sum_j exp(S_last - S_j) B_j dt_j x_j,
            #    with the per-head decay folded into B: (B, L, H, N) is smaller than (B, L, H, P)
            to_end = torch.exp(S[:, :, -1:] - S + lo).to(dtype).transpose(2, 3)  # (B, nc, H, Q)
            B_end = to_end[..., None] * Bc[:, :, None]  # (B, nc, H, Q, N)
            own = X.transpose(-1, -2) @ B_end  # (B, nc, H, P, N)
            # 3. one recurrence over chunks: the state entering each chunk
            across = torch.exp(S[:, :, -1]).to(dtype)  # (B, nc, H), decay across each chunk
            state = own.new_zeros(b, h, p, n)  # (B, H, P, N), entering chunk 0
            entering = [state]
            for decay_c, own_c in zip(across.unbind(1)[:-1], own.unbind(1)[:-1], strict=True):
                state = decay_c[..., None, None] * state + own_c  # (B, H, P, N)
                entering.append(state)
            entering = torch.stack(entering, dim=1)  # (B, nc, H, P, N)
            # 4. what the entering state adds at step i, exp(S_i) C_i . h, the decay folded into C
            C_start = torch.exp(S).to(dtype).transpose(2, 3)[..., None] * Cc[:, :, None]
            y = y + C_start @ entering.transpose(-1, -2)  # (B, nc, H, Q, P)

        y = y.transpose(2, 3).reshape(b, nc * Q, h, p)[:, :L]  # (B, L, H, P)
    return y.to(out_dtype)


class _ChunkDiagonal(torch.autograd.Function):
    """``Y = rows * ((scores o exp(hi_i - hi_j), 0 above the diagonal) @ X)`` per chunk, head.

    A hand-written backward that keeps no (Q, Q) tensor per head between forward and backward
    (autograd would keep the decay mask, the masked product and the exponent): the mask is
    rebuilt from ``hi`` in backward, and the backward works in place on the (Q, Q) tensors,
    which carry most of the scan's memory traffic. ``rows`` is a constant row factor.

    Shapes: ``hi`` (B, nc, H, Q) cumulative log-decays, ``rows`` (B, nc, H, Q), ``scores``
    (B, nc, Q, Q) ``C_i . B_j``, ``X`` (B, nc, H, Q, P) contiguous; returns Y (B, nc, H, Q, P).
    """

    @staticmethod
    def decay_mask(hi: torch.Tensor) -> torch.Tensor:
        """(B, nc, H, Q) cumulative log-decays -> (B, nc, H, Q, Q) ``exp(hi_i - hi_j)``, i >= j."""
        Q = hi.shape[-1]
        above = torch.ones(Q, Q, dtype=torch.bool, device=hi.device).triu(1)  # (Q, Q), j > i
        lmask = hi[..., :, None] - hi[..., None, :]  # (B, nc, H, Q, Q), <= 0 where i >= j
        return lmask.masked_fill_(above, -math.inf).exp_()  # the 1-semiseparable mask

    @staticmethod
    def forward(
        ctx, hi: torch.Tensor, rows: torch.Tensor, scores: torch.Tensor, X: torch.Tensor
    ) -> torch.Tensor:
        b, nc, h, Q, p = X.shape
        ctx.save_for_backward(hi, rows, scores, X)
        M = _ChunkDiagonal.decay_mask(hi).mul_(scores[:, :, None]).view(-1, Q, Q)
        Y = torch.bmm(M, X.view(-1, Q, p)).view(b, nc, h, Q, p)  # (B, nc, H, Q, P)
        return Y.mul_(rows[..., None])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dY: torch.Tensor) -> tuple[torch.Tensor, None, torch.Tensor, torch.Tensor]:
        hi, rows, scores, X = ctx.saved_tensors
        b, nc, h, Q, p = X.shape
        dY = torch.mul(dY, rows[..., None], out=X.new_empty(X.shape)).view(-1, Q, p)  # contiguous
        lmask = _ChunkDiagonal.decay_mask(hi)  # (B, nc, H, Q, Q)
        M = lmask * scores[:, :, None]  # (B, nc, H, Q, Q)
        dX = torch.bmm(M.view(-1, Q, Q).transpose(1, 2), dY).view(b, nc, h, Q, p)
        dM = torch.bmm(dY, X.view(-1, Q, p).transpose(1, 2)).view(b, nc, h, Q, Q)
        dlog = M.mul_(dM)  # d/d(hi_i - hi_j) = dM * M; 0 above the diagonal
        dhi = dlog.sum(-1) - dlog.sum(-2)  # (B, nc, H, Q)
        dscores = dM.mul_(lmask).sum(2)  # (B, nc, Q, Q)
        return dhi, None, dscores, dX
