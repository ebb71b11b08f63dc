"""PPO on the trading environment: the two halves of the RL layer fit together.

`tests/test_ppo.py` verifies PPO on toy environments and `tests/test_rl_env.py` the trading
environment; here PPO with one of our backbones, warm-started from a ForecastModule, runs on
the real `TradingEnv` (continuous and discrete actions) and its updates change the policy.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from plusultra.models.backbones import BACKBONES
from plusultra.models.heads import RegressionHead
from plusultra.models.module import ForecastModule, OptimSettings
from plusultra.rl.env import EnvConfig, TradingEnv
from plusultra.rl.market import EnvMarket
from plusultra.rl.module import PPOModule, PPOSettings
from plusultra.rl.policy import ActorCritic

W, F_ = 8, 3


def trading_env(kind: str, envs: int = 8, symbols: int = 3, seed: int = 0) -> TradingEnv:
    rng = np.random.default_rng(seed)
    t = 200
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (t, symbols)), axis=0))
    feats = rng.normal(size=(t, symbols, F_)).astype(np.float32)
    market = EnvMarket.build(
        feats, close, W, open_=close * np.exp(rng.normal(0, 0.002, close.shape))
    )
    config = EnvConfig(n_envs=envs, episode_len=12, action_kind=kind, seed=seed)
    return TradingEnv(market, (W - 1, t - 1), W, config)


def forecast_module() -> ForecastModule:
    torch.manual_seed(0)
    backbone = BACKBONES["transformer"](n_features=F_, d_model=16, depth=1, n_heads=2)
    return ForecastModule(
        backbone=backbone,
        head=RegressionHead(16, 2),
        loss=torch.nn.MSELoss(),
        optim=OptimSettings(),
    )


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_ppo_trains_a_warm_started_backbone_on_the_trading_env(kind):
    env = trading_env(kind)
    policy = ActorCritic.from_forecast(forecast_module(), kind, hidden=16)
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    module = PPOModule(policy, env, PPOSettings(n_steps=12, updates_per_epoch=2, lr=1e-3))
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module)
    logged = {k: float(v) for k, v in trainer.callback_metrics.items()}
    assert any(k.startswith("train/") for k in logged)
    assert all(math.isfinite(v) for v in logged.values()), logged
    moved = [k for k, v in policy.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("backbone.") for k in moved), "PPO did not update the backbone"
    assert not any(k.startswith("reference.") for k in moved), "the reference must stay frozen"
