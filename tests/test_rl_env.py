"""The batched trading environment: rewards against a per-env, per-step loop reference, the FinRL
failure modes (look-ahead in the state, wrong time step, P&L before the fill, leaked information
that cannot be used, a null environment that earns), segments, auto-reset, seeding, reward
shaping against hand computations and the Gymnasium checker."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

from plusultra.data.datasets.datamodule import SQLiteDataModule
from plusultra.data.features.pipeline import FeaturePipeline
from plusultra.errors import ConfigError, DataError
from plusultra.execution import execution_returns
from plusultra.rl import BatchedEnv
from plusultra.rl.env import EnvConfig, TradingEnv
from plusultra.rl.gym import TradingGymEnv
from plusultra.rl.market import EnvMarket
from plusultra.rl.rewards import RewardConfig, RewardShaper, shape_reference
from plusultra.sim.frictionless import FrictionlessSimulator
from plusultra.sim.realistic import RealisticSimulator, SimulatorConfig

W = 8


def panel(t=300, s=4, f=3, seed=0, drift=0.0, vol=0.01):
    """Random prices (opens and closes), features, volume and volatility."""
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(drift, vol, (t, s)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.003, (t, s)))
    feats = rng.normal(size=(t, s, f)).astype(np.float32)
    volume = rng.uniform(1e4, 1e5, (t, s))
    volatility = rng.uniform(0.005, 0.02, (t, s))
    return dict(features=feats, close=close, open_=open_, volume=volume, volatility=volatility)


def make_env(data, segment=None, window=W, execution=None, reward=None, **cfg):
    market = EnvMarket.build(
        data["features"],
        data["close"],
        window,
        open_=data.get("open_"),
        tradable=data.get("tradable"),
        volume=data.get("volume"),
        volatility=data.get("volatility"),
        execution=execution,
        impact_coef=cfg.get("impact_coef", 0.0),
    )
    n_t = data["close"].shape[0]
    return TradingEnv(market, segment or (window - 1, n_t - 1), window, EnvConfig(**cfg), reward)


def reference_episode(data, start, actions, mode, window, cost_bps, impact=0.0, cash=1e6):
    """Net returns of one episode by a plain loop over bars and symbols, from raw prices."""
    close, open_ = data["close"], data.get("open_")
    trad = data.get("tradable", np.isfinite(close))
    lag = 0 if mode == "same_close" else 1
    price = open_ if mode == "next_open" else close
    n_s = close.shape[1]
    pos, equity, out = [0.0] * n_s, 1.0, []
    for k, action in enumerate(actions):
        t = start + k
        f = t + lag  # the fill bar; the position earns P[f] -> P[f + 1]
        w, ret = [], []
        for s in range(n_s):
            window_ok = all(
                np.isfinite(data["features"][b, s]).all() for b in range(t - window + 1, t + 1)
            )
            r = price[f + 1, s] / price[f, s] - 1.0
            ok = window_ok and trad[t, s] and trad[f, s] and np.isfinite(r)
            w.append(float(min(max(action[s], -1.0), 1.0)) if ok else 0.0)
            ret.append(r if ok else 0.0)
        gross = sum(abs(x) for x in w)
        w = [x / gross for x in w] if gross > 1.0 else w
        cost = 0.0
        for s in range(n_s):
            dw = abs(w[s] - pos[s])
            cost += dw * cost_bps * 1e-4
            if impact and dw > 0:
                vol, sig, p = data["volume"][f, s], data["volatility"][f, s], price[f, s]
                shares = dw * equity * cash / p
                cost += dw * impact * sig * math.sqrt(shares / vol)
        net = sum(w[s] * ret[s] for s in range(n_s)) - cost
        pos = [w[s] * (1 + ret[s]) / (1 + net) for s in range(n_s)]
        equity *= 1 + net
        out.append(net)
    return out


@pytest.mark.parametrize(
    "mode,impact", [("next_open", 0.0), ("next_close", 0.0), ("same_close", 0.0), (None, 0.1)]
)
def test_net_returns_match_loop_reference(mode, impact):
    data = panel(t=120, s=3)
    data["features"][40:45, 1] = np.nan  # an incomplete window: symbol 1 forced flat there
    trad = np.isfinite(data["close"])
    trad[60:70, 2] = False
    data["tradable"] = trad
    env = make_env(data, execution=mode, n_envs=5, episode_len=20, impact_coef=impact)
    env.reset(seed=3)
    starts = env.t.clone()
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1.5, 1.5, (20, 5, 3)).astype(np.float32)
    nets = []
    for k in range(20):
        _, reward, _, _, info = env.step(torch.from_numpy(actions[k]))
        nets.append(info["net_return"])
        assert torch.equal(reward, info["net_return"])  # default reward: net P&L only
    nets = torch.stack(nets, 1).numpy()  # (E, L)
    resolved = env.market.execution
    for e in range(5):
        ref = reference_episode(
            data, int(starts[e]), actions[:, e], resolved, W, 3.0, impact=impact
        )
        np.testing.assert_allclose(nets[e], ref, rtol=1e-4, atol=1e-6)


def test_protocol_shapes_and_dtypes():
    env = make_env(panel(), n_envs=6, episode_len=10)
    assert isinstance(env, BatchedEnv)
    obs = env.reset(seed=0)
    assert obs.features.shape == (6, 4, W, 3) and obs.features.dtype == torch.float32
    assert obs.position.shape == (6, 4) and obs.cash.shape == (6,) and obs.mask.dtype == torch.bool
    obs, r, term, trunc, _ = env.step(torch.zeros(6, 4))
    assert r.shape == (6,) and term.dtype == torch.bool and trunc.dtype == torch.bool
    with pytest.raises(DataError, match="action has shape"):
        env.step(torch.zeros(6, 3))


def test_observation_never_reads_after_decision_bar():
    """FinRL: the state is built from the close that is traded. Perturbing every bar after the
    decision bar (features, opens, closes) leaves the observation unchanged."""
    data = panel(t=200, s=3)
    env = make_env(data, n_envs=1, episode_len=30)
    obs0 = env.reset(seed=7)
    for _ in range(5):
        obs0, *_ = env.step(torch.full((1, 3), 0.3))
    t = int(env.t[0])
    changed = {k: v.copy() for k, v in data.items()}
    rng = np.random.default_rng(9)
    changed["features"][t + 1 :] = rng.normal(size=changed["features"][t + 1 :].shape)
    for key in ("close", "open_"):
        changed[key][t + 1 :] *= rng.uniform(0.5, 1.5, changed[key][t + 1 :].shape)
    env2 = make_env(changed, n_envs=1, episode_len=30)
    obs1 = env2.reset(seed=7)
    for _ in range(5):
        obs1, *_ = env2.step(torch.full((1, 3), 0.3))
    assert int(env2.t[0]) == t
    for a, b in zip(
        (obs0.features, obs0.mask, obs0.position, obs0.cash),
        (obs1.features, obs1.mask, obs1.position, obs1.cash),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_observation_is_the_window_ending_at_the_decision_bar():
    """FinRL: get_state reads the wrong step. Features encode (bar, symbol, feature)."""
    t_n, s_n, f_n = 150, 3, 2
    data = panel(t=t_n, s=s_n, f=f_n)
    bar, sym, feat = np.meshgrid(np.arange(t_n), np.arange(s_n), np.arange(f_n), indexing="ij")
    data["features"] = (bar * 100 + sym * 10 + feat).astype(np.float32)
    env = make_env(data, n_envs=4, episode_len=12)
    obs = env.reset(seed=2)
    start = env.t.clone()
    for k in range(12):
        t = start + k
        assert torch.equal(env.t, t)
        for e in range(4):
            want = data["features"][int(t[e]) - W + 1 : int(t[e]) + 1].transpose(1, 0, 2)
            np.testing.assert_array_equal(obs.features[e].numpy(), want)
        obs, *_ = env.step(torch.zeros(4, s_n))


@pytest.mark.parametrize("mode", ["next_open", "next_close", "same_close"])
def test_action_affects_pnl_only_from_its_fill(mode):
    data = panel(t=150, s=2)
    rng = np.random.default_rng(0)
    base = rng.uniform(-1, 1, (15, 3, 2)).astype(np.float32)
    other = base.copy()
    other[6] = -base[6]  # change the decision of step 6 only

    def rewards(acts):
        env = make_env(data, execution=mode, n_envs=3, episode_len=15)
        env.reset(seed=4)
        return torch.stack([env.step(torch.from_numpy(a))[1] for a in acts], 1)

    r0, r1 = rewards(base), rewards(other)
    assert torch.equal(r0[:, :6], r1[:, :6])  # before its fill: unchanged
    assert (r0[:, 6] != r1[:, 6]).all()  # its own step's reward is the filled position's P&L


def test_next_bar_rewards_ignore_the_decision_bars_own_move():
    """Under next_open the reward of a decision at t is open[t+1] -> open[t+2]: changing every
    close (features kept) leaves the rewards unchanged."""
    data = panel(t=150, s=2)
    moved = {**data, "close": data["close"] * np.random.default_rng(1).uniform(0.8, 1.2, (150, 2))}
    out = []
    for d in (data, moved):
        env = make_env(d, execution="next_open", n_envs=3, episode_len=10)
        env.reset(seed=1)
        out.append(torch.stack([env.step(torch.full((3, 2), 0.5))[1] for _ in range(10)]))
    torch.testing.assert_close(out[0], out[1], rtol=1e-5, atol=1e-7)


def leak_data(shuffle: bool, seed=0):
    """Zero-drift prices; feature 0 at bar t = the execution return a decision at t earns."""
    data = panel(t=1500, s=5, f=2, seed=seed, drift=0.0, vol=0.01)
    leak = execution_returns("next_open", data["open_"], data["close"])
    leak = np.nan_to_num(leak, nan=0.0)
    if shuffle:
        leak = leak[np.random.default_rng(seed + 1).permutation(len(leak))]
    data["features"][..., 0] = leak
    return data


def run_policy(data, policy, episodes=8):
    """Net returns and costs (steps, E) and the number of distinct decision bars visited."""
    env = make_env(data, n_envs=32, episode_len=50, commission_bps=1.0, half_spread_bps=2.0)
    obs = env.reset(seed=0)
    net, cost, bars = [], [], set()
    for _ in range(50 * episodes):
        bars.update(env.t.tolist())
        obs, _, _, _, info = env.step(policy(obs))
        net.append(info["net_return"])
        cost.append(info["cost"])
    return torch.stack(net).double(), torch.stack(cost).double(), len(bars)


def sign_of_leak(obs):
    return torch.sign(obs.features[:, :, -1, 0])  # the leak at the decision bar


def test_leaked_returns_can_be_earned():
    """FinRL: agents cannot use even leaked returns. The plumbing lets information through: a
    hand policy sign(leak) earns far more than buy-and-hold."""
    data = leak_data(shuffle=False)
    net, _, n_bars = run_policy(data, sign_of_leak)
    hold, _, _ = run_policy(data, lambda obs: torch.ones_like(obs.position))
    assert net.mean() > 0.005  # ~ mean |r| per step, after costs
    assert net.mean() > hold.mean() + 10 * hold.std() / math.sqrt(n_bars)


def test_shuffled_features_null_env_earns_only_minus_costs():
    """The same policy on a shuffled leak earns nothing beyond costs."""
    data = leak_data(shuffle=True)
    net, cost, n_bars = run_policy(data, sign_of_leak)
    gross = net + cost
    se = gross.std() / math.sqrt(n_bars)  # episodes overlap: independent draws are bars
    assert abs(gross.mean()) < 4 * se
    assert net.mean() < 0 and abs(net.mean() + cost.mean()) < 4 * se


def test_episodes_stay_inside_their_segment():
    data = panel(t=300, s=2)
    lo, hi = 100, 180
    for mode, lag in (("next_open", 1), ("same_close", 0)):
        env = make_env(data, segment=(lo, hi), execution=mode, n_envs=16, episode_len=30)
        env.reset(seed=0)
        seen = [env.t.clone()]
        for _ in range(200):  # many auto-resets
            env.step(torch.ones(16, 2))
            seen.append(env.t.clone())
        bars = torch.stack(seen)
        decided = bars[:-1]  # decision bars of steps (bars[-1] is only observed)
        assert decided.min() >= lo and decided.max() + lag + 1 <= hi
        assert bars.max() <= hi
        assert decided.max() + lag + 1 == hi  # the last start is reachable
    with pytest.raises(ConfigError, match="env.episode_len=90"):
        make_env(data, segment=(lo, hi), n_envs=2, episode_len=90)


def test_from_datamodule_uses_its_segments(tiny_db):
    dm = SQLiteDataModule(str(tiny_db), FeaturePipeline(["log_return", "volatility_20"]), 16, 2)
    dm.setup()
    cfg = EnvConfig.from_simulator(SimulatorConfig(), n_envs=8, episode_len=10)
    env = TradingEnv.from_datamodule(dm, "val", cfg, symbols=["SYM000", "SYM002"])
    assert env.n_symbols == 2 and env.n_features == dm.n_features and env.window == 16
    assert env.market.execution == "next_open" and env.config.impact_coef == 0.1
    lo, hi = dm.segments.val
    env.reset(seed=0)
    for _ in range(25):
        assert (env.t >= lo).all() and (env.t + 2 <= hi).all()
        env.step(torch.full((8, 2), 0.5))
    with pytest.raises(ConfigError, match="segment"):
        TradingEnv.from_datamodule(dm, "holdout", cfg)


def test_auto_reset_on_truncation():
    env = make_env(panel(), n_envs=4, episode_len=5)
    env.reset(seed=0)
    start = env.t.clone()
    for k in range(5):
        obs, _, term, trunc, info = env.step(torch.full((4, 4), 0.25))
        if k < 4:
            assert not trunc.any() and info["done_index"].numel() == 0
            assert info["final_observation"].features.shape == (0, 4, W, 3)
    assert trunc.all() and not term.any()
    assert torch.equal(info["done_index"], torch.arange(4))
    final = info["final_observation"]
    assert (final.position.abs().sum(-1) > 0).all()  # the ended episode's book
    for e in range(4):
        want = env.market.features[:, int(start[e]) + 5 - W + 1 : int(start[e]) + 6]
        assert torch.equal(final.features[e], want)
    assert (obs.position == 0).all() and (obs.cash == 1).all() and (env.k == 0).all()


def test_terminated_on_ruin_resets_only_that_env():
    data = panel(t=200, s=1)
    data["open_"][100:] *= 3.0  # a short position across bar 99 -> 100 loses 200 %
    data["close"][100:] *= 3.0
    env = make_env(data, segment=(W - 1, 199), n_envs=2, episode_len=50)
    env.reset(seed=0)
    env.t[:] = torch.tensor([98, 20])  # env 0 decides at 98: fills at open 99, marks at open 100
    obs, _, term, trunc, info = env.step(torch.tensor([[-1.0], [-1.0]]))
    assert term.tolist() == [True, False] and not trunc.any()
    assert info["done_index"].tolist() == [0] and info["equity"][0] == 0
    assert env.k.tolist() == [0, 1] and obs.position[0, 0] == 0


def test_seeding_is_reproducible():
    data = panel()
    acts = torch.rand(10, 8, 4, generator=torch.Generator().manual_seed(0)) * 2 - 1

    def roll(seed):
        env = make_env(data, n_envs=8, episode_len=4, seed=seed)
        env.reset()
        starts = [env.t.clone()]
        rewards = []
        for a in acts:
            rewards.append(env.step(a)[1])
            starts.append(env.t.clone())
        return torch.stack(starts), torch.stack(rewards)

    a, b, c = roll(1), roll(1), roll(2)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])
    env = make_env(data, n_envs=8, episode_len=4)
    assert torch.equal(env.reset(seed=5).features, env.reset(seed=5).features)


def test_discrete_actions_and_gross_cap():
    data = panel(t=100, s=2)
    env = make_env(data, action_kind="discrete", n_envs=3, episode_len=5)
    env.reset(seed=0)
    acts = torch.tensor([[2, 2], [0, 1], [1, 1]])  # buy both (scaled to 0.5 each), sell, hold
    _, _, _, _, info = env.step(acts)
    torch.testing.assert_close(info["gross"], torch.tensor([1.0, 1.0, 0.0]))
    torch.testing.assert_close(info["turnover"], torch.tensor([1.0, 1.0, 0.0]))


def test_shaping_terms_by_hand():
    r = [0.1, -0.2, 0.05, -0.1]
    u = [1.0, 0.5, 0.0, 2.0]

    def run(**kw):
        shaper = RewardShaper(RewardConfig(pnl_weight=0.0, **kw), 1, 4, torch.device("cpu"))
        return [
            float(shaper(torch.tensor([x]), torch.tensor([y]))[0])
            for x, y in zip(r, u, strict=True)
        ]

    np.testing.assert_allclose(run(drawdown_weight=1.0), [0, -0.2, 0, -(0.244 - 0.2)], atol=1e-6)
    cvar = [0.0, 0.2, 0.075, 0.15]  # alpha 0.5: worst 1, 1, 2, 2 returns
    np.testing.assert_allclose(run(cvar_weight=1.0, cvar_alpha=0.5), [-c for c in cvar], atol=1e-6)
    ent = [(1 - math.exp(-2 * x)) / 2 for x in r]
    np.testing.assert_allclose(run(entropic_weight=1.0, risk_aversion=2.0), ent, rtol=1e-5)
    np.testing.assert_allclose(run(turnover_weight=0.5), [-0.5 * x for x in u], atol=1e-7)
    eta, a, b, dsr = 0.1, 0.0, 0.0, []
    for x in r:  # Moody & Saffell's differential Sharpe ratio, written out
        var = b - a * a
        dsr.append((b * (x - a) - 0.5 * a * (x * x - b)) / var**1.5 if var > 1e-12 else 0.0)
        a, b = a + eta * (x - a), b + eta * (x * x - b)
    assert dsr[0] == 0 and dsr[1] != 0
    np.testing.assert_allclose(run(sharpe_weight=1.0, sharpe_eta=eta), dsr, rtol=1e-4)


def test_shaped_env_rewards_match_reference():
    cfg = RewardConfig(
        pnl_weight=0.5,
        sharpe_weight=0.1,
        drawdown_weight=2.0,
        cvar_weight=1.0,
        cvar_alpha=0.2,
        entropic_weight=0.5,
        risk_aversion=3.0,
        turnover_weight=0.01,
    )
    env = make_env(panel(), n_envs=3, episode_len=12, reward=cfg)
    env.reset(seed=0)
    gen = torch.Generator().manual_seed(0)
    rows = [env.step(torch.rand(3, 4, generator=gen) * 2 - 1) for _ in range(12)]
    rewards = torch.stack([x[1] for x in rows], 1)
    nets = torch.stack([x[4]["net_return"] for x in rows], 1)
    turns = torch.stack([x[4]["turnover"] for x in rows], 1)
    for e in range(3):
        ref = shape_reference(cfg, nets[e].double().tolist(), turns[e].double().tolist())
        np.testing.assert_allclose(rewards[e].numpy(), ref, rtol=1e-4, atol=1e-6)


def test_env_config_from_the_run_simulator():
    real = EnvConfig.from_simulator(RealisticSimulator(commission_bps=4.0, max_gross_leverage=2.0))
    assert (real.commission_bps, real.half_spread_bps, real.impact_coef) == (4.0, 2.0, 0.1)
    assert real.max_gross == 2.0 and real.initial_cash == 1e6
    free = EnvConfig.from_simulator(FrictionlessSimulator(execution="next_close"), n_envs=3)
    assert (free.commission_bps, free.half_spread_bps, free.impact_coef) == (0.0, 0.0, 0.0)
    assert free.execution == "next_close" and free.n_envs == 3


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="env.n_envs"):
        EnvConfig(n_envs=0)
    with pytest.raises(ConfigError, match="env.action_kind"):
        EnvConfig(action_kind="binary")
    with pytest.raises(ConfigError, match="env.execution"):
        EnvConfig(execution="next_tick")
    with pytest.raises(ConfigError, match="env.commission_bps"):
        EnvConfig(commission_bps=-1.0)
    with pytest.raises(ConfigError, match="reward.cvar_alpha"):
        RewardConfig(cvar_alpha=0.0)
    with pytest.raises(ConfigError, match="reward.drawdown_weight"):
        RewardConfig(drawdown_weight=float("nan"))
    market = EnvMarket.build(np.zeros((50, 1, 1)), np.ones((50, 1)), 4)
    with pytest.raises(ConfigError, match="market was built for 4"):
        TradingEnv(market, (3, 49), 5)
    with pytest.raises(DataError, match="volume and volatility"):
        EnvMarket.build(np.zeros((50, 1, 1)), np.ones((50, 1)), 4, impact_coef=0.1)


@pytest.mark.parametrize("kind,symbols", [("continuous", 3), ("discrete", 1), ("discrete", 3)])
def test_gym_wrapper_passes_check_env(kind, symbols):
    data = panel(t=120, s=symbols)
    market = EnvMarket.build(data["features"], data["close"], W, open_=data["open_"])
    env = TradingGymEnv(market, (W - 1, 119), W, EnvConfig(action_kind=kind, episode_len=10))
    with pytest.warns(UserWarning):  # gymnasium warns about the infinite Box bounds
        check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    parts = env.unflatten(obs)
    assert parts["features"].shape == (symbols, W, 3) and parts["cash"] == 1.0
    buy = np.ones(symbols, np.float32) if kind == "continuous" else np.full(symbols, 2)
    for _ in range(10):
        obs, reward, term, trunc, info = env.step(buy if symbols > 1 or kind != "discrete" else 2)
    assert trunc and not term and math.isfinite(reward)
    position = env.unflatten(obs)["position"]  # the ended episode's book, not a fresh one
    np.testing.assert_allclose(position, 1.0 / symbols, rtol=1e-6)
