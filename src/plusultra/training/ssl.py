"""Self-supervised objectives on windows of features: masked patches and contrastive views.

Masked patch modelling: the window is cut into patches of `patch_len` bars aligned to its end
(the oldest ``T % patch_len`` bars belong to no patch). A share `mask_ratio` of each sample's
patches is replaced by a learned mask vector at the input; a linear decoder reconstructs each
masked patch's features from the backbone token that ends at, or closest before, the patch's
last bar (a causal backbone's token there has seen the mask vector, never the values). The loss
is the MSE over masked patches only.

Contrastive: two independently augmented views of each window (crop, time masking, scaling,
jitter), their mean-pooled backbone tokens through a projection head, and InfoNCE (NT-Xent)
over the 2B views of a batch: each view's positive is the other view of the same window.

Shapes: B batch, T bars, F features, P patch length, N patches, D width.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from plusultra.errors import ConfigError

# --------------------------------------------------------------------------- masking


def patch_mask(batch: int, T: int, patch_len: int, ratio: float, generator=None) -> torch.Tensor:
    """Which patches are masked: (B, N) bool with ``N = T // patch_len``, exactly
    ``max(1, round(ratio * N))`` True per row, drawn uniformly without replacement."""
    n = T // patch_len
    if n < 1:
        raise ConfigError(f"masked.patch_len={patch_len} is longer than the window ({T} bars)")
    k = max(1, round(ratio * n))
    order = torch.rand(batch, n, generator=generator).argsort(dim=1)  # (B, N) random ranks
    return order < k  # (B, N): the k patches of lowest rank


def step_mask(patches: torch.Tensor, T: int, patch_len: int) -> torch.Tensor:
    """(B, N) patch mask -> (B, T) bar mask; patches end at bar T - 1, the oldest
    ``T % patch_len`` bars are never masked."""
    B, n = patches.shape
    steps = patches.repeat_interleave(patch_len, dim=1)  # (B, N * P)
    return torch.cat([steps.new_zeros(B, T - n * patch_len), steps], dim=1)  # (B, T)


def patch_tokens(token_ends: list[int], T: int, patch_len: int) -> torch.Tensor:
    """For each patch, the index of the last token ending at or before its last bar, (N,);
    -1 where no token ends that early (such a patch is not scored)."""
    n = T // patch_len
    last_bar = torch.tensor([T - (n - p - 1) * patch_len - 1 for p in range(n)])  # (N,)
    ends = torch.tensor(token_ends)  # (N_tokens,), increasing
    return torch.searchsorted(ends, last_bar, right=True) - 1  # (N,)


def masked_patch_loss(
    recon: torch.Tensor, target: torch.Tensor, masked: torch.Tensor
) -> torch.Tensor:
    """MSE over masked patches only.

    Args:
        recon: (B, N, P, F) reconstructed patches.
        target: (B, N, P, F) true patches.
        masked: (B, N) bool, True for the patches that count.
    """
    if not masked.any():
        raise ConfigError("masked patch loss: no patch is masked and scored in this batch")
    err = (recon - target).pow(2).mean(dim=(2, 3))  # (B, N)
    return err[masked].mean()


def to_patches(x: torch.Tensor, patch_len: int) -> torch.Tensor:
    """(B, T, F) -> (B, N, P, F), the patches aligned to the window's end."""
    B, T, Fe = x.shape
    n = T // patch_len
    return x[:, T - n * patch_len :].reshape(B, n, patch_len, Fe)


# --------------------------------------------------------------------------- augmentations


def jitter(x: torch.Tensor, sigma: float, generator=None) -> torch.Tensor:
    """Add N(0, sigma^2) noise to every value (features are z-scores: sigma in std units)."""
    return x + sigma * torch.randn(x.shape, generator=generator).to(x)


def scaling(x: torch.Tensor, sigma: float, generator=None) -> torch.Tensor:
    """Multiply each sample's feature by one factor ``1 + N(0, sigma^2)``, shared over time."""
    B, _, Fe = x.shape
    return x * (1 + sigma * torch.randn(B, 1, Fe, generator=generator).to(x))


def time_mask(x: torch.Tensor, ratio: float, generator=None) -> torch.Tensor:
    """Set one random contiguous span of ``round(ratio * T)`` bars per sample to 0 (the
    features' train mean)."""
    B, T, _ = x.shape
    span = round(ratio * T)
    if span == 0:
        return x
    start = torch.randint(0, T - span + 1, (B, 1), generator=generator).to(x.device)  # (B, 1)
    t = torch.arange(T, device=x.device)[None, :]  # (1, T)
    hide = (t >= start) & (t < start + span)  # (B, T)
    return x.masked_fill(hide[..., None], 0.0)


def crop_starts(batch: int, T: int, length: int, generator=None) -> torch.Tensor:
    """Random start bar of a crop of `length` bars inside T, per sample, (B,)."""
    return torch.randint(0, T - length + 1, (batch,), generator=generator)


def crop(x: torch.Tensor, starts: torch.Tensor, length: int) -> torch.Tensor:
    """Contiguous sub-windows ``x[b, starts[b] : starts[b] + length]``, (B, length, ...)."""
    rows = starts[:, None] + torch.arange(length, device=x.device)[None, :]  # (B, L)
    return x[torch.arange(len(x), device=x.device)[:, None], rows]


def crop_length(T: int, ratio: float) -> int:
    """Bars kept by a crop of `ratio` of a T-bar window (at least 2)."""
    return max(2, math.ceil(ratio * T))


# --------------------------------------------------------------------------- InfoNCE


def info_nce(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """NT-Xent loss of two views' embeddings (B, E) each: cross-entropy of each of the 2B
    views picking its partner among the 2B - 1 others by cosine similarity / temperature."""
    B = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)  # (2B, E)
    sim = z @ z.T / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(2 * B, dtype=torch.bool, device=z.device), float("-inf"))
    partner = torch.cat([torch.arange(B, 2 * B), torch.arange(B)]).to(z.device)  # (2B,)
    return F.cross_entropy(sim, partner)


def info_nce_ref(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """Loop reference of `info_nce`: -log(exp(s_ip) / sum_{k != i} exp(s_ik)), averaged."""
    views = [*z1, *z2]
    B, total = len(z1), 0.0
    for i, zi in enumerate(views):
        p = (i + B) % (2 * B)
        sims = []
        for k, zk in enumerate(views):
            if k != i:
                cos = (zi @ zk) / (zi.norm() * zk.norm())
                sims.append((k, cos / temperature))
        denom = sum(torch.exp(s) for _, s in sims)
        num = torch.exp(next(s for k, s in sims if k == p))
        total = total - torch.log(num / denom)
    return total / (2 * B)
