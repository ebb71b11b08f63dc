"""Transformer whose MLPs are mixtures of experts with top-k routing and per-sequence capacity.

Routing is causal: each sequence has its own capacity per expert, filled in time order, so a
token is only ever displaced by earlier tokens of its own sequence and output t still depends
only on inputs <= t. The Switch-Transformer load-balancing loss of every block is summed into
``aux_loss`` for the training objective.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.layers import (
    CausalSelfAttention,
    LearnedPositionalEncoding,
    check_int,
    check_positive,
    check_rate,
    run_block,
    step_token_end,
)


def load_balance_loss(probs: torch.Tensor, top_i: torch.Tensor) -> torch.Tensor:
    """Switch-Transformer balance loss ``E * sum_e f_e * P_e`` (1.0 when routing is uniform).

    Args:
        probs: Router probabilities (..., E).
        top_i: Experts each token picked (..., k), before any capacity dropping.

    Returns:
        Scalar; ``f_e`` is the share of the N * k picks that went to expert e (no gradient) and
        ``P_e`` the mean router probability of e over the N tokens (carries the gradient).
    """
    E, k = probs.shape[-1], top_i.shape[-1]
    f = F.one_hot(top_i.reshape(-1, k), E).sum(dim=1).float().mean(dim=0) / k  # (E,)
    P = probs.reshape(-1, E).mean(dim=0)  # (E,)
    return E * (f * P).sum()


class MoEFeedForward(nn.Module):
    """Mixture of GELU-MLP experts with softmax top-k routing and per-sequence capacity.

    Each token picks its ``top_k`` most probable experts and their outputs are summed, weighted
    by the router probabilities (not renormalised, so the router also learns from the main loss
    when ``top_k == 1``). Expert e accepts at most
    ``capacity = min(T, ceil(capacity_factor * T * top_k / n_experts))`` tokens from each
    sequence of T tokens, taken in time order; later picks of a full expert are dropped (they add
    nothing, so the residual stream passes through). Dispatch is vectorised: tokens are scattered
    into a ``(B, E, capacity + 1, D)`` buffer (the spare last slot receives dropped picks as
    zeros and is never read back) and all experts run as one batched matmul.

    After each forward, ``load`` (B, E) holds the tokens each expert kept per sequence and
    ``dropped_frac`` the share of picks dropped (both detached).

    Args:
        d_model: Token width D.
        n_experts: Experts E.
        top_k: Experts per token, in [1, E].
        capacity_factor: Capacity relative to a perfectly balanced load.
        mlp_ratio: Expert hidden width as a multiple of D.
        dropout: Dropout on the output, in training only.
    """

    def __init__(
        self,
        d_model: int,
        n_experts: int,
        top_k: int,
        capacity_factor: float,
        mlp_ratio: float,
        dropout: float,
    ) -> None:
        super().__init__()
        hidden = max(1, int(mlp_ratio * d_model))
        self.n_experts = n_experts
        self.top_k = top_k
        self.capacity_factor = capacity_factor
        self.router = nn.Linear(d_model, n_experts, bias=False)
        bound_in, bound_out = 1 / math.sqrt(d_model), 1 / math.sqrt(hidden)  # nn.Linear's init
        self.w_in = nn.Parameter(
            torch.empty(n_experts, d_model, hidden).uniform_(-bound_in, bound_in)
        )
        self.w_out = nn.Parameter(
            torch.empty(n_experts, hidden, d_model).uniform_(-bound_out, bound_out)
        )
        self.dropout = nn.Dropout(dropout)
        self.load: torch.Tensor | None = None  # (B, E) tokens kept per expert, last forward
        self.dropped_frac: torch.Tensor | None = None  # scalar, last forward

    def capacity(self, T: int) -> int:
        """Most tokens one expert accepts from one sequence of T tokens."""
        return min(T, math.ceil(self.capacity_factor * T * self.top_k / self.n_experts))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x is (B, T, D); returns the output (B, T, D) and the unweighted balance loss (scalar)."""
        B, T, D = x.shape
        E, k, C = self.n_experts, self.top_k, self.capacity(T)
        probs = torch.softmax(self.router(x).float(), dim=-1)  # (B, T, E)
        top_p, top_i = probs.topk(k, dim=-1)  # 2 x (B, T, k)

        # Queue position of each pick: earlier tokens of the same sequence that picked the expert.
        picked = F.one_hot(top_i, E).sum(dim=2)  # (B, T, E), 0/1 (the k experts are distinct)
        slot = (picked.cumsum(dim=1) - picked).gather(2, top_i)  # (B, T, k)
        keep = slot < C  # (B, T, k)
        slot = slot.masked_fill(~keep, C)  # dropped picks go to the spare slot C
        b = torch.arange(B, device=x.device)[:, None, None].expand_as(top_i)  # (B, T, k)

        src = x[:, :, None, :] * keep[..., None].to(x.dtype)  # (B, T, k, D), dropped -> 0
        buf = x.new_zeros(B, E, C + 1, D)
        buf = buf.index_put((b, top_i, slot), src, accumulate=True)  # (B, E, C+1, D)
        h = F.gelu(torch.einsum("becd,edh->bech", buf, self.w_in))  # (B, E, C+1, H)
        h = torch.einsum("bech,ehd->becd", h, self.w_out)  # (B, E, C+1, D)
        out = h[b, top_i, slot]  # (B, T, k, D)
        gates = (top_p * keep).to(x.dtype)  # (B, T, k), zero for dropped picks
        y = (out * gates[..., None]).sum(dim=2)  # (B, T, D)

        self.load = (F.one_hot(top_i, E) * keep[..., None]).sum(dim=(1, 2)).detach()  # (B, E)
        self.dropped_frac = 1.0 - keep.float().mean().detach()
        return self.dropout(y), load_balance_loss(probs, top_i)


class MoEBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln(x))`` then ``x + moe(ln(x))``.

    Args:
        d_model: Token width D.
        n_heads: Attention heads.
        n_experts: Experts per MoE layer.
        top_k: Experts per token.
        capacity_factor: Expert capacity relative to a balanced load.
        mlp_ratio: Expert hidden width as a multiple of D.
        dropout: Dropout rate inside attention and after each residual branch.
        causal: If True, token t attends to tokens <= t only.
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        n_experts: int,
        top_k: int,
        capacity_factor: float,
        mlp_ratio: float,
        dropout: float,
        causal: bool,
    ) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_heads, dropout=dropout, causal=causal)
        self.ln_2 = nn.LayerNorm(d_model)
        self.moe = MoEFeedForward(d_model, n_experts, top_k, capacity_factor, mlp_ratio, dropout)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x is (B, T, D); returns (B, T, D) and this block's balance loss (scalar)."""
        x = x + self.attn(self.ln_1(x))  # (B, T, D)
        y, balance = self.moe(self.ln_2(x))  # (B, T, D), ()
        return x + y, balance


class MoEBackbone(nn.Module):
    """One token per step: Linear(F -> D) + learned positions + ``depth`` MoE blocks.

    Maps x ``(B, T, F)`` to ``(B, T, D)``; token j covers input step j (with ``causal=True``).
    After each forward:

    - ``aux_loss``: ``aux_loss_weight * sum over blocks of load_balance_loss`` (scalar tensor
      with gradient) to add to the training objective.
    - ``aux_metrics``: floats ``moe_balance`` (unweighted balance loss, mean over blocks; 1.0
      is perfectly balanced) and ``moe_dropped_frac`` (share of expert picks dropped over
      capacity, mean over blocks).

    The balance loss pools the whole batch (it only steers training; outputs stay causal).
    Every expert gets a gradient tensor, zero for an expert that received no token.

    Args:
        n_features: Input features per time step F.
        d_model: Token width D (= ``d_out``).
        depth: Number of MoE blocks.
        n_heads: Attention heads; must divide ``d_model``.
        n_experts: Experts per MoE layer.
        top_k: Experts per token, in [1, n_experts].
        capacity_factor: Expert capacity per sequence relative to a balanced load (> 0).
        aux_loss_weight: Weight of the summed balance loss in ``aux_loss`` (>= 0).
        mlp_ratio: Expert hidden width as a multiple of D.
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
        n_experts: int = 8,
        top_k: int = 2,
        capacity_factor: float = 1.25,
        aux_loss_weight: float = 0.01,
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
        check_int("n_experts", n_experts)
        check_int("top_k", top_k)
        check_rate("dropout", dropout)
        if top_k > n_experts:
            raise ConfigError(f"top_k ({top_k}) must be <= n_experts ({n_experts})")
        check_positive("capacity_factor", capacity_factor)
        if aux_loss_weight < 0:
            raise ConfigError(f"aux_loss_weight must be >= 0, got {aux_loss_weight!r}")
        check_positive("mlp_ratio", mlp_ratio)
        self.d_out = d_model
        self.causal = causal
        self.aux_loss_weight = aux_loss_weight
        self.embed = nn.Linear(n_features, d_model)
        self.pos = LearnedPositionalEncoding(max_len, d_model)
        self.drop = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(
            MoEBlock(
                d_model, n_heads, n_experts, top_k, capacity_factor, mlp_ratio, dropout, causal
            )
            for _ in range(depth)
        )
        self.ln_f = nn.LayerNorm(d_model)
        self.aux_loss = torch.zeros(())  # replaced by every forward
        self._metrics: torch.Tensor | None = None  # (2,) detached, read by aux_metrics

    @property
    def aux_metrics(self) -> dict[str, float]:
        """Routing statistics of the last forward (empty before the first one)."""
        if self._metrics is None:
            return {}
        balance, dropped = self._metrics.tolist()  # one device sync, only when read
        return {"moe_balance": balance, "moe_dropped_frac": dropped}

    def n_tokens(self, T: int) -> int:
        """Number of output tokens for a window of T steps (one per step)."""
        return T

    def token_end(self, j: int, T: int) -> int:
        """Last input step that output token j (negative j counts from the end) depends on."""
        return step_token_end(j, T, self.causal)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x is (B, T, F), returns (B, T, D); sets ``aux_loss`` and ``aux_metrics``."""
        h = self.drop(self.pos(self.embed(x)))  # (B, T, D)
        balances = []
        for block in self.blocks:
            h, balance = run_block(block, h, checkpoint=self.activation_checkpointing)
            balances.append(balance)
        balance = torch.stack(balances)  # (depth,)
        dropped = torch.stack([block.moe.dropped_frac for block in self.blocks])  # (depth,)
        self.aux_loss = self.aux_loss_weight * balance.sum()
        self._metrics = torch.stack([balance.mean(), dropped.mean()]).detach()  # (2,)
        return self.ln_f(h)  # (B, T, D)
