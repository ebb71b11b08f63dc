"""A Gymnasium view of one trading environment (E = 1) over the batched `TradingEnv`.

Observation: ONE flat float32 ``Box`` (so that any Gymnasium agent, stable-baselines3's
``MlpPolicy`` included, takes it as is), the concatenation of

    features (S * W * F, symbol-major, then bar, then feature) | position (S) | cash (1) | mask (S)

with the mask as 0.0 / 1.0; `TradingGymEnv.unflatten` gives the parts back. Bounds are infinite
(features are normalised and clipped by the data module, positions lie in [-1, 1] but drift).

Action: continuous ``Box(-1, 1, (S,))`` target positions, or discrete: ``Discrete(3)`` for one
symbol, ``MultiDiscrete([3] * S)`` for several (sell / hold / buy, index = position + 1).

Timing, costs and rewards are the batched environment's (`plusultra.rl.env`). When an episode
ends, ``step`` returns its final observation (the batched env has already started the next
episode, which the following ``reset`` replaces by a fresh draw).
"""

from __future__ import annotations

import dataclasses

import gymnasium
import numpy as np
import torch

from plusultra.rl.env import EnvConfig, TradingEnv
from plusultra.rl.market import EnvMarket
from plusultra.rl.protocol import Observation
from plusultra.rl.rewards import RewardConfig


class TradingGymEnv(gymnasium.Env):
    """One trading episode at a time, as a Gymnasium environment.

    Args:
        market: the aligned market tensors (`EnvMarket.build`).
        segment: (lo, hi) decision bars of the segment.
        window: W.
        config: environment settings (``n_envs`` is forced to 1).
        reward: reward shaping.
    """

    metadata = {"render_modes": []}

    def __init__(
        self,
        market: EnvMarket,
        segment: tuple[int, int],
        window: int,
        config: EnvConfig | None = None,
        reward: RewardConfig | None = None,
    ) -> None:
        super().__init__()
        cfg = dataclasses.replace(config or EnvConfig(), n_envs=1)
        self.env = TradingEnv(market, segment, window, cfg, reward)
        s, w, f = self.env.n_symbols, self.env.window, self.env.n_features
        self.sizes = (s * w * f, s, 1, s)  # features | position | cash | mask
        self.observation_space = gymnasium.spaces.Box(
            -np.inf, np.inf, (sum(self.sizes),), dtype=np.float32
        )
        if cfg.action_kind == "continuous":
            self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (s,), dtype=np.float32)
        elif s == 1:
            self.action_space = gymnasium.spaces.Discrete(3)
        else:
            self.action_space = gymnasium.spaces.MultiDiscrete([3] * s)

    def flatten(self, obs: Observation) -> np.ndarray:
        """The flat float32 observation of env row 0."""
        parts = (obs.features[0].reshape(-1), obs.position[0], obs.cash[:1], obs.mask[0].float())
        return torch.cat(parts).cpu().numpy().astype(np.float32)

    def unflatten(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        """The parts of a flat observation: features (S, W, F), position (S,), cash (), mask."""
        e = self.env
        a, b, c, _ = np.cumsum(self.sizes)
        return {
            "features": flat[:a].reshape(e.n_symbols, e.window, e.n_features),
            "position": flat[a:b],
            "cash": flat[b],
            "mask": flat[c:] > 0.5,
        }

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """A new episode (seeded when ``seed`` is given); returns (observation, info)."""
        super().reset(seed=seed)
        obs = self.env.reset(seed=seed)
        return self.flatten(obs), {"bar": int(self.env.t[0])}

    def step(self, action):
        """Apply one action; returns (observation, reward, terminated, truncated, info)."""
        a = torch.as_tensor(np.asarray(action), device=self.env.device).reshape(1, -1)
        obs, reward, terminated, truncated, info = self.env.step(a)
        if info["done_index"].numel():
            obs = info["final_observation"]
        out = {k: float(info[k][0]) for k in ("net_return", "cost", "turnover", "equity")}
        return self.flatten(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), out
