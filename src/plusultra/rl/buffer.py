"""Replay buffer of (observation, action) pairs for behaviour-cloning regularisation.

PPO is on-policy; this buffer does not feed its objective. It keeps actions of a reference
policy (the supervised one: ``PPOModule`` adds its positions on every rollout's observations
when the policy has a reference) or any transitions a caller chooses (``add``), and
``bc_loss`` is the mean negative log-likelihood of those actions under the current policy,
added to PPO's loss with a weight (``PPOSettings.bc_coef``, 0 = off). A ring buffer: once full,
the oldest pairs are overwritten.
"""

from __future__ import annotations

import torch

from plusultra.errors import ConfigError
from plusultra.rl.protocol import Observation


class ReplayBuffer:
    """Fixed-capacity ring buffer of per-env observations and actions.

    Args:
        capacity: pairs kept (each one env's observation (S, W, F) and action (S,)).
    """

    def __init__(self, capacity: int) -> None:
        if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 1:
            raise ConfigError(f"ppo.bc_capacity={capacity!r} must be an integer >= 1")
        self.capacity, self.size, self.head = capacity, 0, 0
        self.store: dict[str, torch.Tensor] = {}

    def __len__(self) -> int:
        return self.size

    def add(self, obs: Observation, action: torch.Tensor, base: torch.Tensor | None = None) -> None:
        """Append a batch of K pairs: ``obs`` with leading dimension K, ``action`` (K, S), and
        for a residual policy its ``base`` (K, S) or (K, S, 3) (``reference_target`` of the
        observations, kept so that ``bc_loss`` need not recompute it); every add alike."""
        items = {
            "features": obs.features, "position": obs.position, "cash": obs.cash,
            "mask": obs.mask, "action": action,
        }  # fmt: skip
        if base is not None:
            items["base"] = base
        if self.store and ("base" in self.store) != (base is not None):
            raise ConfigError("ReplayBuffer.add: give a base with every batch or with none")
        if not self.store:
            self.store = {k: v.new_zeros((self.capacity, *v.shape[1:])) for k, v in items.items()}
        k = len(action)
        idx = (self.head + torch.arange(k, device=action.device)) % self.capacity
        for name, v in items.items():
            self.store[name][idx] = v.detach().to(self.store[name].dtype)
        self.head = (self.head + k) % self.capacity
        self.size = min(self.size + k, self.capacity)

    def sample(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Observation, torch.Tensor]:
        """n pairs drawn uniformly with replacement: (Observation with leading n, action (n, S))."""
        return self.sample_with_base(n, generator)[:2]

    def sample_with_base(
        self, n: int, generator: torch.Generator | None = None
    ) -> tuple[Observation, torch.Tensor, torch.Tensor | None]:
        """As `sample`, plus the stored bases of those pairs (None when none were added)."""
        if self.size == 0:
            raise ConfigError("ppo.bc_coef > 0 but the behaviour-cloning buffer is empty")
        dev = self.store["action"].device
        idx = torch.randint(self.size, (n,), generator=generator, device=dev)
        s = {k: v[idx] for k, v in self.store.items()}
        obs = Observation(s["features"], s["position"], s["cash"], s["mask"])
        return obs, s["action"], s.get("base")


def bc_loss(
    policy, obs: Observation, action: torch.Tensor, base: torch.Tensor | None = None
) -> torch.Tensor:
    """Mean negative log-likelihood of ``action`` (n, S) under ``policy`` (an ActorCritic),
    per tradable symbol; ``base``: a residual policy's cached ``reference_target(obs)``."""
    out = policy(obs, base=base)
    logp, _ = policy.log_prob_entropy(out, action, obs.mask)
    return -(logp.sum() / obs.mask.sum().clamp_min(1))
