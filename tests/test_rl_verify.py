"""FinRL's failure modes with a learning agent, and the stable-baselines3 reference check.

`tests/test_rl_env.py` shows the environment lets leaked information through to a hand-written
policy; here PPO has to find it. On a `TradingEnv` whose feature is the next fill-to-fill
return (a deliberate leak), PPO trained on the first bars must beat buy-and-hold and the flat
book on later bars, and its logged episode return must rise over training (FinRL's "rewards
that stay flat while the losses fall"). With the leak shuffled in time (a null environment)
the same training must earn nothing beyond costs on the later bars. Finally (slow tier, extra
``rl-reference``), stable-baselines3's PPO on the Gymnasium wrapper of the toy OU environment
reaches the known optimum within the tolerance our PPO meets in `tests/test_ppo.py`.
"""

from __future__ import annotations

import math

import lightning as L
import numpy as np
import pytest
import torch

from plusultra.errors import ConfigError
from plusultra.execution import execution_returns
from plusultra.rl.env import EnvConfig, TradingEnv
from plusultra.rl.gym import BatchedGymEnv, flatten_observation
from plusultra.rl.market import EnvMarket
from plusultra.rl.module import PPOModule, PPOSettings
from plusultra.rl.policy import ActorCritic
from plusultra.rl.toy import OUEnv
from tests.test_ppo import MLPBackbone, fit

W, S, T, EPISODE = 4, 3, 700, 16
TRAIN, HELD_OUT = (W - 1, 449), (450, T - 1)  # decision bars: train on the first, test on the rest


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def leak_market(shuffle: bool, seed: int = 0) -> EnvMarket:
    """Zero-drift prices with opens; the one feature at bar t is the execution return that a
    decision at t earns (next open to the open after), scaled to unit variance, or that series
    permuted in time (the same permutation for every symbol)."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0.0, 0.01, (T, S)), axis=0))
    open_ = close * np.exp(rng.normal(0.0, 0.003, (T, S)))
    leak = np.nan_to_num(execution_returns("next_open", open_, close), nan=0.0)
    if shuffle:
        leak = leak[rng.permutation(T)]
    feats = (leak / leak.std())[..., None].astype(np.float32)
    return EnvMarket.build(feats, close, W, open_=open_)


def env_on(market: EnvMarket, segment, n_envs: int = 64, seed: int = 0) -> TradingEnv:
    config = EnvConfig(n_envs=n_envs, episode_len=EPISODE, seed=seed)  # 1 bp + 2 bp costs
    return TradingEnv(market, segment, W, config)


class History(L.Callback):
    """The module's logs after every PPO update."""

    def __init__(self) -> None:
        self.logs: list[dict] = []

    def on_train_batch_end(self, trainer, module, *args) -> None:
        self.logs.append(dict(module.last_logs))


def train(market: EnvMarket, updates: int = 25) -> tuple[PPOModule, History]:
    torch.manual_seed(0)
    env = env_on(market, TRAIN)
    policy = ActorCritic(MLPBackbone(W), hidden=32)
    settings = PPOSettings(n_steps=EPISODE, updates_per_epoch=updates, lr=3e-3, gamma=0.5)
    module = PPOModule(policy, env, settings)
    history = History()
    fit(module, callbacks=[history])
    return module, history


def episode_returns(market: EnvMarket, policy, episodes: int = 4):
    """Net and cost per episode ((n,) float64 each) of ``policy(obs) -> action`` on the
    held-out bars, and the effective number of independent episodes (episodes overlap in
    bars: at most the held-out span over the episode length)."""
    env = env_on(market, HELD_OUT, seed=1)
    obs = env.reset(seed=1)
    net, cost = [], []
    for _ in range(episodes):
        n = c = torch.zeros(env.n_envs, dtype=torch.float64)
        for _ in range(EPISODE):
            with torch.no_grad():
                obs, _, term, _, info = env.step(policy(obs))
            n, c = n + info["net_return"].double(), c + info["cost"].double()
        assert not term.any()
        net.append(n), cost.append(c)
    span = HELD_OUT[1] - HELD_OUT[0] + 1
    n_eff = min(env.n_envs * episodes, span // EPISODE)
    return torch.cat(net), torch.cat(cost), n_eff


def greedy(module: PPOModule):
    return lambda obs: module.policy.greedy(module.policy(obs))


def oracle(obs):
    return torch.sign(obs.features[:, :, -1, 0])  # reads the leak at the decision bar


def hold(obs):
    return torch.ones_like(obs.position)  # long every symbol (the gross cap makes it 1 / S)


@pytest.fixture(scope="module")
def leak_run():
    market = leak_market(shuffle=False)
    module, history = train(market)
    return market, module, history


def test_ppo_learns_to_use_a_leaked_return(leak_run):
    """FinRL: agents that cannot use even leaked returns and settle on buy-and-hold."""
    market, module, _ = leak_run
    net, _, n_eff = episode_returns(market, greedy(module))
    held, _, _ = episode_returns(market, hold)
    best, _, _ = episode_returns(market, oracle)
    se = net.std() / math.sqrt(n_eff)
    assert net.mean() > held.mean() + 5 * se  # beats buy-and-hold, out of sample
    assert net.mean() > 5 * se  # and the flat book (which earns exactly 0)
    assert net.mean() > 0.5 * best.mean()  # at least half of what reading the leak can earn


def test_episode_return_rises_while_training(leak_run):
    """FinRL: rewards that stay flat while the losses fall. The logged mean episode return of
    the last updates is far above that of the first ones."""
    _, _, history = leak_run
    returns = [x["train/episode_return"] for x in history.logs if "train/episode_return" in x]
    assert len(returns) >= 20
    first, last = np.mean(returns[:5]), np.mean(returns[-5:])
    assert last > first + 0.02  # two percentage points per 16-step episode
    assert last > 0.5 * max(returns)


def test_ppo_on_a_shuffled_leak_earns_nothing_beyond_costs():
    """The null environment: the leak permuted in time carries no information about the
    return that a decision earns, so the trained agent earns nothing beyond costs out of
    sample (the network could only memorise the training bars)."""
    market = leak_market(shuffle=True)
    module, _ = train(market)
    net, cost, n_eff = episode_returns(market, greedy(module))
    se = net.std() / math.sqrt(n_eff)
    assert net.mean() <= 3 * se  # nothing to earn beyond costs
    assert abs((net + cost).mean()) < 4 * se  # gross of costs: 0 within the noise


# ---------------------------------------------------------------- reference check


def ou_env(n_envs: int = 1) -> OUEnv:
    return OUEnv(n_envs=n_envs, window=4, episode_len=16)


def test_gym_wrapper_over_a_toy_env_passes_check_env():
    from gymnasium.utils.env_checker import check_env

    env = BatchedGymEnv(ou_env())
    with pytest.warns(UserWarning):  # gymnasium warns about the infinite Box bounds
        check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    np.testing.assert_array_equal(obs, flatten_observation(ou_env().reset(3))[0].numpy())
    assert env.unflatten(obs)["features"].shape == (1, 4, 1)
    with pytest.raises(ConfigError, match="n_envs=2"):
        BatchedGymEnv(ou_env(2))


@pytest.mark.slow
def test_stable_baselines3_reaches_the_ou_optimum():
    """Reference check: stable-baselines3's PPO, through the Gymnasium wrapper, reaches the
    OU optimum within the tolerance `test_ppo_learns_the_ou_optimum` holds our PPO to."""
    from stable_baselines3 import PPO  # the rl-reference extra, part of dev: CI runs this
    from stable_baselines3.common.env_util import make_vec_env

    venv = make_vec_env(lambda: BatchedGymEnv(ou_env()), n_envs=8, seed=0)
    model = PPO(
        "MlpPolicy",
        venv,
        n_steps=128,
        batch_size=256,
        n_epochs=10,
        gamma=0.5,
        gae_lambda=0.9,
        learning_rate=1e-3,
        policy_kwargs={"net_arch": [32, 32], "log_std_init": -0.5},
        seed=0,
        device="cpu",
    )
    model.learn(40_000)
    test = ou_env(2000)
    obs = test.reset(123)
    action, _ = model.predict(flatten_observation(obs).numpy(), deterministic=True)
    pos = torch.as_tensor(action).clamp(-1, 1)
    best = test.optimal_position(obs)
    ratio = test.expected_reward(obs, pos).mean() / test.expected_reward(obs, best).mean()
    assert float((pos - best).abs().mean()) < 0.12
    assert float(ratio) > 0.95  # a flat policy scores 0, the optimum 1
