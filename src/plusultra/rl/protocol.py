"""The contract between batched trading environments and the agents that step them (PPO).

Shapes: E parallel environments, S symbols, W window bars, F features. Every tensor lives on the
environment's ``device``; a step never goes through numpy.

Timing (``plusultra.execution``): the observation of decision bar ``t`` holds data up to ``t``'s
close only; the action chosen from it is filled at ``t + 1`` (its open by default) and the reward
returned by ``step`` is the P&L of that position from its fill on, net of the fill's costs.

Actions (``action_kind``):

* ``"continuous"``: (E, S) float target positions in [-1, 1] (fractions of equity per symbol).
* ``"discrete"``: (E, S) long in {0, 1, 2} = sell / hold / buy as in
  ``plusultra.models.heads.ACTIONS``; the target position is ``index - 1``.

Auto-reset: envs whose episode ended (terminated or truncated) are reset inside ``step``; their
rows of ``next_obs`` are then the new episode's first observation, ``info["final_observation"]``
holds the ended observation of those rows (an ``Observation`` with K rows) and
``info["done_index"]`` the (K,) long env indices. `plusultra.rl.env.TradingEnv` always sets both
(K = 0 on a step where no episode ended); an agent should not rely on that of every env.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

ACTION_KINDS = ("continuous", "discrete")


@dataclass
class Observation:
    """What an agent sees at decision bar t (data up to t's close only).

    Attributes:
        features: (E, S, W, F) float32, each symbol's feature window ending at the decision bar t.
        position: (E, S) float32, current holdings as a fraction of equity in [-1, 1] (after the
            last fill).
        cash: (E,) float32, cash as a fraction of equity.
        mask: (E, S) bool, symbol tradable at t (untradable symbols' actions are ignored and
            their positions forced flat).
    """

    features: torch.Tensor
    position: torch.Tensor
    cash: torch.Tensor
    mask: torch.Tensor

    def index(self, rows: torch.Tensor) -> Observation:
        """The observation of env rows ``rows`` ((K,) long or (E,) bool)."""
        return Observation(
            self.features[rows], self.position[rows], self.cash[rows], self.mask[rows]
        )

    def to(self, device: torch.device | str) -> Observation:
        """The same observation on ``device``."""
        return Observation(
            self.features.to(device),
            self.position.to(device),
            self.cash.to(device),
            self.mask.to(device),
        )


@runtime_checkable
class BatchedEnv(Protocol):
    """E trading environments stepped together as torch tensors."""

    n_envs: int  # E
    n_symbols: int  # S
    window: int  # W
    n_features: int  # F
    action_kind: str  # one of ACTION_KINDS (an env also has the ``device`` its tensors are on)

    def reset(self, seed: int | None = None) -> Observation:
        """Start a new episode in every env (seeded when ``seed`` is given); the first obs."""
        ...

    def step(
        self, action: torch.Tensor
    ) -> tuple[Observation, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """Apply (E, S) actions.

        Returns:
            (next_obs, reward (E,) float32, terminated (E,) bool, truncated (E,) bool, info).
            Envs whose episode ended are reset automatically; next_obs is then the new
            episode's first observation and info["final_observation"] holds the ended one (an
            Observation of those rows) with info["done_index"] the (K,) env indices.
        """
        ...
