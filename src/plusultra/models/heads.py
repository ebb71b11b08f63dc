"""Heads: map a backbone's tokens ``(B, T', D)`` to the model's outputs."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.layers import check_int, check_rate

POOLS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "last": lambda h: h[:, -1],  # the last token, which covers the decision time
    "mean": lambda h: h.mean(dim=1),  # the mean over all tokens of the window
}


class RegressionHead(nn.Module):
    """Multi-step forecast: pool the tokens to one vector, then project to ``horizon`` values.

    Args:
        d_model: Token width D of the backbone.
        horizon: Number of future steps forecast (>= 1).
        hidden: Hidden width of a Linear -> GELU -> Dropout -> Linear MLP; None for one Linear.
        dropout: Dropout rate in the hidden layer (unused when ``hidden`` is None).
        pool: How tokens are reduced, a key of ``POOLS``: "last" or "mean".
    """

    def __init__(
        self,
        d_model: int,
        horizon: int,
        hidden: int | None = None,
        dropout: float = 0.0,
        pool: str = "last",
    ) -> None:
        super().__init__()
        check_int("d_model", d_model)
        check_int("horizon", horizon)
        check_rate("dropout", dropout)
        if pool not in POOLS:
            raise ConfigError(f"unknown pool {pool!r}; valid names: {sorted(POOLS)}")
        self.pool = pool
        if hidden is None:
            self.net = nn.Linear(d_model, horizon)
        else:
            check_int("hidden", hidden)
            self.net = nn.Sequential(
                nn.Linear(d_model, hidden),
                nn.GELU(),
                nn.Dropout(dropout),
                nn.Linear(hidden, horizon),
            )

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h is (B, T', D) backbone tokens; returns (B, horizon) forecasts."""
        return self.net(POOLS[self.pool](h))  # (B, D) -> (B, horizon)


HEADS: dict[str, type[nn.Module]] = {
    "regression": RegressionHead,
}
