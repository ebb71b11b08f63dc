"""Market-state embeddings: learned vectors for regime labels, added to every bar's input.

The data layer supplies integer labels per bar (``data.conditioning``, e.g. volatility and
liquidity regimes from `plusultra.data.features.regimes`, shifted so that 0 means "unknown", e.g.
during
a label's warm-up). Each label has its own embedding table; the vectors of a bar's labels are
summed into one ``(dim,)`` vector that is concatenated to the bar's features before the
backbone. The backbone's input projection (per bar, or per patch) then adds a learned function
of the market state to every token of the stream. With no labels configured the model is
unchanged, which makes the embedding an ablation switch.
"""

from __future__ import annotations

import torch
from torch import nn

from plusultra.errors import ConfigError


class MarketStateEmbedding(nn.Module):
    """Sum of one learned embedding per label.

    Args:
        n_classes: classes of each label, including the "unknown" class 0.
        dim: width of the embedding appended to each bar's features.
    """

    def __init__(self, n_classes: list[int], dim: int = 8) -> None:
        super().__init__()
        if not n_classes:
            raise ConfigError("market_state: no labels to embed (set data.conditioning)")
        if dim < 1:
            raise ConfigError(f"market_state.dim={dim} must be >= 1")
        self.dim = dim
        self.tables = nn.ModuleList(nn.Embedding(n, dim) for n in n_classes)
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        """labels (B, T, R) int64 -> (B, T, dim)."""
        out = self.tables[0](labels[..., 0])  # (B, T, dim)
        for r in range(1, len(self.tables)):
            out = out + self.tables[r](labels[..., r])
        return out
