"""A Gymnasium view of one environment (E = 1) of any `BatchedEnv`, and of one trading episode.

`BatchedGymEnv(env)` wraps a batched environment built with one env (`TradingEnv`, the toy
environments of `plusultra.rl.toy`, any ``rl.protocol.BatchedEnv``); `TradingGymEnv` is that
wrapper over a `TradingEnv` it builds.

Observation: ONE flat float32 ``Box`` (so that any Gymnasium agent, stable-baselines3's
``MlpPolicy`` included, takes it as is), the concatenation of

    features (S * W * F, symbol-major, then bar, then feature) | position (S) | cash (1) | mask (S)

with the mask as 0.0 / 1.0 (`flatten_observation`, which also flattens every row of a batched
observation at once); `BatchedGymEnv.unflatten` gives the parts back. Bounds are infinite
(features are normalised and clipped by the data module, positions lie in [-1, 1] but drift).

Action: continuous ``Box(-1, 1, (S,))`` target positions, or discrete: ``Discrete(3)`` for one
symbol, ``MultiDiscrete([3] * S)`` for several (sell / hold / buy, index = position + 1).

Timing, costs and rewards are the batched environment's. When an episode ends, ``step``
returns its final observation (the batched env has already started the next episode, which the
following ``reset`` replaces by a fresh draw). ``info`` holds the batched env's per-env scalars
of the step (for `TradingEnv`: ``net_return``, ``cost``, ``turnover``, ``gross``, ``equity``).
"""

from __future__ import annotations

import dataclasses

import gymnasium
import numpy as np
import torch

from plusultra.errors import ConfigError
from plusultra.rl.env import EnvConfig, TradingEnv
from plusultra.rl.market import EnvMarket
from plusultra.rl.protocol import BatchedEnv, Observation
from plusultra.rl.rewards import RewardConfig


def flatten_observation(obs: Observation) -> torch.Tensor:
    """(E, S * W * F + 2 * S + 1) float32 rows: features | position | cash | mask (0 / 1)."""
    parts = (obs.features.flatten(1), obs.position, obs.cash[:, None], obs.mask.float())
    return torch.cat(parts, dim=1).to(torch.float32)


class BatchedGymEnv(gymnasium.Env):
    """The single environment of a one-env `BatchedEnv`, as a Gymnasium environment.

    Args:
        env: a batched environment with ``n_envs == 1``.

    Raises:
        ConfigError: ``env.n_envs`` is not 1.
    """

    metadata = {"render_modes": []}

    def __init__(self, env: BatchedEnv) -> None:
        super().__init__()
        if env.n_envs != 1:
            raise ConfigError(f"a Gymnasium env wraps one env; got n_envs={env.n_envs}")
        self.env = env
        s, w, f = env.n_symbols, env.window, env.n_features
        self.sizes = (s * w * f, s, 1, s)  # features | position | cash | mask
        self.observation_space = gymnasium.spaces.Box(
            -np.inf, np.inf, (sum(self.sizes),), dtype=np.float32
        )
        if env.action_kind == "continuous":
            self.action_space = gymnasium.spaces.Box(-1.0, 1.0, (s,), dtype=np.float32)
        elif s == 1:
            self.action_space = gymnasium.spaces.Discrete(3)
        else:
            self.action_space = gymnasium.spaces.MultiDiscrete([3] * s)

    def flatten(self, obs: Observation) -> np.ndarray:
        """The flat float32 observation of env row 0."""
        row = Observation(obs.features[:1], obs.position[:1], obs.cash[:1], obs.mask[:1])
        return flatten_observation(row)[0].cpu().numpy()

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
        return self.flatten(self.env.reset(seed=seed)), {}

    def step(self, action):
        """Apply one action; returns (observation, reward, terminated, truncated, info)."""
        device = getattr(self.env, "device", "cpu")
        a = torch.as_tensor(np.asarray(action), device=device).reshape(1, -1)
        obs, reward, terminated, truncated, info = self.env.step(a)
        done = info.get("done_index")
        if done is not None and done.numel():
            obs = info["final_observation"]
        out = {
            k: float(v[0])
            for k, v in info.items()
            if k != "done_index" and isinstance(v, torch.Tensor) and v.shape == (1,)
        }
        return self.flatten(obs), float(reward[0]), bool(terminated[0]), bool(truncated[0]), out


class TradingGymEnv(BatchedGymEnv):
    """One trading episode at a time, as a Gymnasium environment (a `TradingEnv` with E = 1).

    Args:
        market: the aligned market tensors (`EnvMarket.build`).
        segment: (lo, hi) decision bars of the segment.
        window: W.
        config: environment settings (``n_envs`` is forced to 1).
        reward: reward shaping.
    """

    def __init__(
        self,
        market: EnvMarket,
        segment: tuple[int, int],
        window: int,
        config: EnvConfig | None = None,
        reward: RewardConfig | None = None,
    ) -> None:
        cfg = dataclasses.replace(config or EnvConfig(), n_envs=1)
        super().__init__(TradingEnv(market, segment, window, cfg, reward))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """A new episode (seeded when ``seed`` is given); info holds its first decision bar."""
        obs, _ = super().reset(seed=seed, options=options)
        return obs, {"bar": int(self.env.t[0])}
