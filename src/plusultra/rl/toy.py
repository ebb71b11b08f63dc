"""Toy batched environments with a known optimal policy, to verify PPO end to end.

Both follow ``rl.protocol.BatchedEnv`` and the project's timing contract with close-only bars:
the action decided at bar t's close (seeing features up to t) fills at bar t + 1's close and
earns the price change from t + 1 to t + 2. A step's reward is that P&L minus a quadratic
position penalty, summed over symbols::

    reward_t = sum_s  a_s * (p_s[t + 2] - p_s[t + 1]) - cost / 2 * a_s ** 2

where ``a`` is the target position (clipped to [-1, 1]; discrete actions map to {-1, 0, 1}).
The position does not change the prices and there is no turnover cost, so the sum of rewards
is maximised by maximising each step's expected reward given what is known at t: the optimum
is myopic, the same for every discount, and ``a* = clip(E[p[t + 2] - p[t + 1] | info_t] /
cost, -1, 1)`` (``sign`` of it when ``cost = 0``).

* ``TrendEnv``: the price rises by ``drift`` every bar; the feature is the price change. The
  optimum is +1 (``drift > 0``, cost below ``drift``); it earns ``drift - cost / 2`` per symbol
  and step.
* ``OUEnv``: the price is an Ornstein-Uhlenbeck deviation from its mean,
  ``x[t + 1] = (1 - theta) * x[t] + sigma * eps``, started from its stationary law; the feature
  is x itself. Then ``E[x[t + 2] - x[t + 1] | x[t]] = (1 - theta)^2 x[t] - (1 - theta) x[t]
  = -theta (1 - theta) x[t]``, so ``a* = clip(-k * x[t], -1, 1)`` with
  ``k = theta (1 - theta) / cost``.

Episodes last ``episode_len`` decisions and end truncated (a time limit); the observation's
position is the filled one (the previous action) and cash is ``1 - sum(position)``.
Observations have ``n_features = 1``. Everything is torch, on ``device``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch

from plusultra.errors import ConfigError
from plusultra.rl.protocol import Observation


class _ToyEnv(ABC):
    """Shared mechanics: per-episode price paths, windows, fills, rewards, automatic resets."""

    n_features = 1

    def __init__(
        self,
        n_envs: int,
        n_symbols: int,
        window: int,
        episode_len: int,
        cost: float,
        action_kind: str,
        device: str | torch.device,
    ) -> None:
        for key, value in {
            "n_envs": n_envs,
            "n_symbols": n_symbols,
            "window": window,
            "episode_len": episode_len,
        }.items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"toy env {key}={value!r} must be an integer >= 1")
        if not cost >= 0:
            raise ConfigError(f"toy env cost={cost!r} must be >= 0")
        if action_kind not in ("continuous", "discrete"):
            raise ConfigError(f"toy env action_kind={action_kind!r}: continuous or discrete")
        self.n_envs, self.n_symbols, self.window = n_envs, n_symbols, window
        self.episode_len, self.cost, self.action_kind = episode_len, float(cost), action_kind
        self.device = torch.device(device)
        self.gen = torch.Generator(device=self.device)
        self.gen.manual_seed(0)
        self._alloc()

    def _alloc(self) -> None:
        E, S, L = self.n_envs, self.n_symbols, self.window + self.episode_len + 1
        self.prices = torch.zeros(E, S, L, device=self.device)  # bars 0 .. W + episode_len
        self.feats = torch.zeros(E, S, L, device=self.device)
        self.t = torch.zeros(E, dtype=torch.long, device=self.device)  # decision bar
        self.position = torch.zeros(E, S, device=self.device)

    @abstractmethod
    def _prices(self, n: int) -> torch.Tensor:
        """(n, S, W + episode_len + 1) price paths of n new episodes."""

    @abstractmethod
    def _features(self, prices: torch.Tensor) -> torch.Tensor:
        """(n, S, L) feature series aligned with the bars of ``prices``."""

    def _start(self, rows: torch.Tensor) -> None:
        p = self._prices(len(rows))
        self.prices[rows], self.feats[rows] = p, self._features(p)
        self.t[rows] = self.window - 1  # the first decision sees bars 0 .. W - 1
        self.position[rows] = 0.0

    def _obs(self, rows: torch.Tensor | None = None) -> Observation:
        rows = torch.arange(self.n_envs, device=self.device) if rows is None else rows
        offsets = torch.arange(self.window, device=self.device) - self.window + 1  # (W,)
        idx = (self.t[rows, None] + offsets)[:, None, :].expand(-1, self.n_symbols, -1)
        feats = self.feats[rows].gather(-1, idx)[..., None]  # (K, S, W, 1), bars t-W+1 .. t
        pos = self.position[rows].clone()
        return Observation(feats, pos, 1 - pos.sum(-1), torch.ones_like(pos, dtype=torch.bool))

    def reset(self, seed: int | None = None) -> Observation:
        """Start new episodes in every env; ``seed`` reseeds the env's generator."""
        if seed is not None:
            self.gen.manual_seed(int(seed))
        self._start(torch.arange(self.n_envs, device=self.device))
        return self._obs()

    def positions(self, action: torch.Tensor) -> torch.Tensor:
        """(E, S) target positions in [-1, 1] from an action (discrete: index - 1)."""
        if self.action_kind == "discrete":
            return action.to(torch.float32) - 1
        return action.to(torch.float32).clamp(-1, 1)

    def step(self, action: torch.Tensor):
        """Fill at t + 1, earn t + 1 -> t + 2, advance to t + 1 (see the module docstring)."""
        a = self.positions(action)  # (E, S)
        t = self.t[:, None, None].expand(-1, self.n_symbols, 1)
        move = (self.prices.gather(-1, t + 2) - self.prices.gather(-1, t + 1))[..., 0]  # (E, S)
        reward = (a * move - 0.5 * self.cost * a**2).sum(-1)  # (E,)
        self.position, self.t = a, self.t + 1
        truncated = self.t >= self.window - 1 + self.episode_len
        terminated = torch.zeros_like(truncated)
        info: dict = {}
        if truncated.any():
            done = truncated.nonzero()[:, 0]
            info = {"final_observation": self._obs(done), "done_index": done}
            self._start(done)
        return self._obs(), reward, terminated, truncated, info

    @abstractmethod
    def optimal_position(self, obs: Observation) -> torch.Tensor:
        """(E, S) the optimal target position for ``obs``."""

    @abstractmethod
    def expected_move(self, obs: Observation) -> torch.Tensor:
        """(E, S) expected price change from t + 1 to t + 2 given ``obs`` (at t)."""

    def expected_reward(self, obs: Observation, position: torch.Tensor) -> torch.Tensor:
        """(E,) expected reward of target ``position`` (E, S) given ``obs``: the yardstick
        that compares a policy with the optimum."""
        a = position.clamp(-1, 1)
        return (a * self.expected_move(obs) - 0.5 * self.cost * a**2).sum(-1)


class TrendEnv(_ToyEnv):
    """Deterministic trend: the price rises ``drift`` per bar; optimum +1 (see module doc).

    Args:
        n_envs, n_symbols, window, episode_len: batch, symbols, window W, decisions per episode.
        drift: price change per bar (> 0).
        cost: quadratic position penalty (>= 0).
        action_kind: "continuous" or "discrete".
        device: where the tensors live.
    """

    def __init__(
        self,
        n_envs: int = 64,
        n_symbols: int = 1,
        window: int = 8,
        episode_len: int = 32,
        drift: float = 0.1,
        cost: float = 0.0,
        action_kind: str = "continuous",
        device: str | torch.device = "cpu",
    ) -> None:
        if not drift > 0:
            raise ConfigError(f"toy env drift={drift!r} must be > 0")
        self.drift = float(drift)
        super().__init__(n_envs, n_symbols, window, episode_len, cost, action_kind, device)

    def _prices(self, n: int) -> torch.Tensor:
        L = self.window + self.episode_len + 1
        bars = torch.arange(L, device=self.device, dtype=torch.float32) * self.drift
        return (100.0 + bars).expand(n, self.n_symbols, L).clone()

    def _features(self, prices: torch.Tensor) -> torch.Tensor:
        return torch.cat([prices[..., 1:2] - prices[..., :1], prices.diff(dim=-1)], dim=-1)

    def optimal_position(self, obs: Observation) -> torch.Tensor:
        best = 1.0 if self.cost == 0 else min(1.0, self.drift / self.cost)
        return torch.full_like(obs.position, best)

    def expected_move(self, obs: Observation) -> torch.Tensor:
        return torch.full_like(obs.position, self.drift)


class OUEnv(_ToyEnv):
    """Mean-reverting Ornstein-Uhlenbeck deviation; optimum ``clip(-k x_t)``, see module doc.

    Args:
        n_envs, n_symbols, window, episode_len: batch, symbols, window W, decisions per episode.
        theta: mean-reversion rate per bar, in (0, 1).
        sigma: shock standard deviation per bar (> 0).
        cost: quadratic position penalty (> 0, it sets the optimum's slope k).
        action_kind: "continuous" or "discrete".
        device: where the tensors live.
    """

    def __init__(
        self,
        n_envs: int = 64,
        n_symbols: int = 1,
        window: int = 8,
        episode_len: int = 32,
        theta: float = 0.5,
        sigma: float = 1.0,
        cost: float = 0.25,
        action_kind: str = "continuous",
        device: str | torch.device = "cpu",
    ) -> None:
        if not 0 < theta < 1:
            raise ConfigError(f"toy env theta={theta!r} must be in (0, 1)")
        if not sigma > 0 or not cost > 0:
            raise ConfigError(f"toy env sigma={sigma!r} and cost={cost!r} must be > 0")
        self.theta, self.sigma = float(theta), float(sigma)
        self.k = self.theta * (1 - self.theta) / cost  # slope of the optimal position
        super().__init__(n_envs, n_symbols, window, episode_len, cost, action_kind, device)

    def _prices(self, n: int) -> torch.Tensor:
        L = self.window + self.episode_len + 1
        eps = torch.randn(n, self.n_symbols, L, generator=self.gen, device=self.device)
        x = torch.empty_like(eps)
        x[..., 0] = eps[..., 0] * self.sigma / (1 - (1 - self.theta) ** 2) ** 0.5  # stationary
        for i in range(1, L):  # a scan over bars; envs and symbols are vectorised
            x[..., i] = (1 - self.theta) * x[..., i - 1] + self.sigma * eps[..., i]
        return x

    def _features(self, prices: torch.Tensor) -> torch.Tensor:
        return prices

    def optimal_position(self, obs: Observation) -> torch.Tensor:
        return (-self.k * obs.features[..., -1, 0]).clamp(-1, 1)

    def expected_move(self, obs: Observation) -> torch.Tensor:
        return -self.theta * (1 - self.theta) * obs.features[..., -1, 0]
