# ruff: noqa: E501  (a verbatim copy of the agreed protocol; the env helper owns the file)
"""The contract between a batched trading environment and the agents that act in it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


@dataclass
class Observation:
    features: (
        torch.Tensor
    )  # (E, S, W, F) float32: each symbol's feature window ending at the decision bar t
    position: torch.Tensor  # (E, S) float32: current holdings as a fraction of equity, in [-1, 1]
    cash: torch.Tensor  # (E,) float32: cash as a fraction of equity
    mask: torch.Tensor  # (E, S) bool: symbol tradable at t


class BatchedEnv(Protocol):
    n_envs: int
    n_symbols: int
    window: int
    n_features: int
    action_kind: str  # "continuous": (E, S) target positions in [-1, 1]; "discrete": (E, S) long in {0,1,2} = sell/hold/buy (plusultra.models.heads.ACTIONS; index = position + 1)

    def reset(self, seed: int | None = None) -> Observation: ...

    def step(
        self, action: torch.Tensor
    ) -> tuple[Observation, torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        """(next_obs, reward (E,), terminated (E,) bool, truncated (E,) bool, info). Envs whose episode ended are reset automatically; next_obs is then the new episode's first observation and info["final_observation"] holds the ended one (an Observation of those rows) with info["done_index"] the (K,) env indices."""
        ...
