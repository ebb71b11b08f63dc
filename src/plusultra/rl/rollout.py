"""A policy's positions over a whole segment: one deterministic, sequential rollout.

A trading policy reads its own current position, so its decisions over a segment cannot be
made window by window in one batch (as a forecaster's are): `segment_rollout` steps one
environment (E = 1, every symbol at once) through every decision bar of the segment in order,
with the greedy action (the clipped Gaussian mean, or the most likely of sell/hold/buy). It runs
the environment of training (`rl.env.TradingEnv`, same timing, targets, gross cap and costs), so
the position the policy sees at bar ``t`` is the book it chose at ``t - 1``, and the observation
holds data up to ``t``'s close only.

`positions_frame` turns the result into the frame a position head's predictions have
(``symbol, timestamp, pred_1``), which `evaluation.backtest.Backtest` trades as it is
(``position_method: weights``) with the run's simulator.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from plusultra.errors import DataError
from plusultra.rl.env import EnvConfig, TradingEnv
from plusultra.rl.market import EnvMarket
from plusultra.rl.policy import ActorCritic

log = logging.getLogger(__name__)


@dataclass
class SegmentRollout:
    """The greedy rollout of a policy over decision bars ``bars[0]..bars[-1]``.

    Attributes:
        bars: (N,) calendar indices of the decision bars, consecutive.
        positions: (N, S) float32 target weights decided at each bar's close (after the
            environment's holdable mask and gross cap), as a fraction of equity.
        observable: (N, S) bool, the symbol had a complete window and was tradable at the bar.
        net_returns: (N,) the environment's net return of each decision (after its costs), a
            fraction of equity; 0 after a ruin.
    """

    bars: np.ndarray
    positions: np.ndarray
    observable: np.ndarray
    net_returns: np.ndarray

    def score(self, metric: str, periods_per_year: float) -> float:
        """``sharpe``: annualised Sharpe ratio of the net returns (0 when they do not vary);
        ``return``: their annualised mean."""
        r = self.net_returns.astype(np.float64)
        if metric == "return":
            return float(r.mean() * periods_per_year) if len(r) else 0.0
        sd = r.std(ddof=1) if len(r) > 1 else 0.0
        return float(r.mean() / sd * math.sqrt(periods_per_year)) if sd > 1e-12 else 0.0


def decision_bars(market: EnvMarket, segment: tuple[int, int]) -> tuple[int, int]:
    """The decision bars of ``segment`` a rollout can take: from the first complete window on,
    up to the last bar whose exit fill is still in the data (as `Backtest.run` caps it).

    Raises:
        DataError: no such bar.
    """
    lo = max(int(segment[0]), market.window - 1)
    hi = min(int(segment[1]), market.n_bars - 2 - market.lag)
    if hi < lo:
        raise DataError(f"rollout: segment {segment} has no decision bar (window, fill lag)")
    return lo, hi


@torch.no_grad()
def segment_rollout(
    policy: ActorCritic,
    market: EnvMarket,
    segment: tuple[int, int],
    config: EnvConfig,
) -> SegmentRollout:
    """Greedy positions over every decision bar of ``segment`` (see the module docstring).

    Args:
        policy: the actor-critic; it runs in eval mode on the market's device, and its training
            mode and device are restored afterwards.
        market: the aligned market (``TradingEnv.market`` of the training environment: the
            whole calendar).
        segment: (lo, hi) inclusive calendar decision bars (``dm.segments.val`` / ``.test``).
        config: the environment's settings (costs, gross cap, action kind); ``n_envs``,
            ``episode_len`` and ``seed`` are replaced (one episode over the segment).
    """
    lo, hi = decision_bars(market, segment)
    n = hi - lo + 1
    cfg = dataclasses.replace(config, n_envs=1, episode_len=n, seed=0)
    # the episode's returns reach lag + 1 bars past hi: let the env see them (start bar = lo)
    env = TradingEnv(market, (lo, hi + market.lag + 1), market.window, cfg)
    obs = env.reset()
    device, training = next(policy.parameters()).device, policy.training
    policy.to(env.device).eval()
    positions = np.zeros((n, env.n_symbols), dtype=np.float32)
    observable = np.zeros((n, env.n_symbols), dtype=bool)
    net = np.zeros(n)
    try:
        for k in range(n):
            observable[k] = obs.mask[0].cpu().numpy()
            action = policy.greedy(policy(obs))
            obs, _, terminated, truncated, info = env.step(action)
            done = bool(terminated[0] or truncated[0])
            # the book right after the fill: the next observation's position (the ended
            # episode's final observation on the last step)
            book = info["final_observation"].position[0] if done else obs.position[0]
            positions[k] = book.cpu().numpy()
            net[k] = float(info["net_return"][0])
            if bool(terminated[0]):  # ruin: equity 0, the book stays flat from here on
                log.warning("rollout: the policy's equity reached 0 at bar %d; flat after", lo + k)
                break
    finally:
        policy.to(device).train(training)
    return SegmentRollout(np.arange(lo, hi + 1), positions, observable, net)


def positions_frame(rollout: SegmentRollout, dates: np.ndarray, symbols: list[str]) -> pd.DataFrame:
    """Long frame ``symbol, timestamp, pred_1`` (the position decided at that bar's close, in
    [-1, 1]) for every observable (bar, symbol) of the rollout: a position head's predictions."""
    t, s = np.nonzero(rollout.observable)  # (M,) row and symbol of each observable pair
    return pd.DataFrame(
        {
            "symbol": np.asarray(symbols, dtype=object)[s],
            "timestamp": pd.DatetimeIndex(dates)[rollout.bars[t]],
            "pred_1": rollout.positions[t, s].astype(np.float64),
        }
    )
