"""Lazy observations (`rl.protocol.LazyWindows`): `TradingEnv` hands out window row indices,
gathered when ``features`` is read. They must read exactly as the eager tensors did: at every
step against a per-env, per-symbol slicing reference, after later steps (nothing overwritten),
through ``_cat`` / ``_rows`` / ``index`` / ``to``, and through PPO, whose weights after a few
updates must be bit-identical with lazy and with eager observations."""

from __future__ import annotations

import lightning as L
import numpy as np
import pytest
import torch
from experiments.benchmarks.ppo import EagerEnv  # the eager side the benchmark times too
from torch import nn

from plusultra.rl.env import EnvConfig, TradingEnv
from plusultra.rl.market import EnvMarket
from plusultra.rl.module import PPOModule, PPOSettings, _cat, _rows
from plusultra.rl.policy import ActorCritic
from plusultra.rl.protocol import LazyWindows, Observation

W, S, F, T = 6, 3, 2, 120


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def data(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0.0, 0.01, (T, S)), axis=0))
    return dict(
        features=rng.normal(size=(T, S, F)).astype(np.float32),
        close=close,
        open_=close * np.exp(rng.normal(0, 0.003, (T, S))),
    )


def make_env(d: dict, **cfg) -> TradingEnv:
    market = EnvMarket.build(d["features"], d["close"], W, open_=d["open_"])
    return TradingEnv(market, (W - 1, T - 1), W, EnvConfig(**{"n_envs": 5, **cfg}))


def reference_windows(d: dict, t: torch.Tensor) -> np.ndarray:
    """(K, S, W, F) by slicing the raw features env by env, symbol by symbol."""
    out = np.zeros((len(t), S, W, F), dtype=np.float32)
    for e, bar in enumerate(t.tolist()):
        for s in range(S):
            out[e, s] = d["features"][bar - W + 1 : bar + 1, s]
    return out


def test_lazy_observations_read_as_the_windows_at_every_step_and_stay_valid():
    d = data()
    env = make_env(d, episode_len=7)  # several auto-resets in 30 steps
    gen = torch.Generator().manual_seed(0)
    obs = env.reset(seed=1)
    kept: list[tuple[Observation, np.ndarray]] = []
    for _ in range(30):
        assert isinstance(obs.windows, LazyWindows)
        want = reference_windows(d, env.t)
        np.testing.assert_array_equal(obs.features.numpy(), want)
        assert obs.features.shape == (5, S, W, F) and obs.features.dtype == torch.float32
        assert obs.features.data_ptr() != obs.features.data_ptr()  # gathered afresh, no cache
        kept.append((obs, want))
        t_before = env.t.clone()
        obs, _, term, trunc, info = env.step(torch.rand(5, S, generator=gen) * 2 - 1)
        done = info["done_index"]
        final = info["final_observation"]
        assert isinstance(final.windows, LazyWindows) and final.features.shape[0] == len(done)
        np.testing.assert_array_equal(
            final.features.numpy(), reference_windows(d, t_before[done] + 1)
        )
    for old, want in kept:  # stored observations still read what they read when returned
        np.testing.assert_array_equal(old.features.numpy(), want)


def test_features_into_an_agents_buffer_reads_as_the_windows_and_reuses_it():
    d = data()
    env = make_env(d, episode_len=4)
    gen = torch.Generator().manual_seed(2)
    buf = torch.full((5, S, W, F), float("nan"))
    obs = env.reset(seed=0)
    for _ in range(12):  # across auto-resets
        got = obs.features_into(buf)
        assert got is buf  # the same memory, step after step
        np.testing.assert_array_equal(buf.numpy(), reference_windows(d, env.t))
        eager = obs.materialize()  # an eager observation copies into the buffer as well
        buf.fill_(float("nan"))
        np.testing.assert_array_equal(eager.features_into(buf).numpy(), obs.features.numpy())
        obs = env.step(torch.rand(5, S, generator=gen) * 2 - 1)[0]
    for bad, what in (
        (torch.zeros(4, S, W, F), "shape"),
        (torch.zeros(5, S, W, F, dtype=torch.float64), "float64"),
        (torch.zeros(5, S, F, W).transpose(2, 3), "contiguous"),
    ):
        with pytest.raises(ValueError, match=what):
            obs.features_into(bad)


def test_cat_rows_index_and_to_of_lazy_equal_the_eager_equivalents():
    env = make_env(data(), episode_len=5)
    gen = torch.Generator().manual_seed(3)
    lazy = [env.reset(seed=0)]
    for _ in range(9):
        lazy.append(env.step(torch.rand(5, S, generator=gen) * 2 - 1)[0])
    eager = [o.materialize() for o in lazy]
    assert all(o.windows is None for o in eager)

    def same(a: Observation, b: Observation) -> None:
        for k in ("features", "position", "cash", "mask"):
            assert torch.equal(getattr(a, k), getattr(b, k)), k

    cat_l, cat_e = _cat(lazy), _cat(eager)
    assert cat_l.windows is not None and cat_l.windows.rows.shape == (50, S)  # indices only
    same(cat_l, cat_e)
    idx = torch.randperm(50, generator=gen)[:17]
    sub = _rows(cat_l, idx)
    assert sub.windows is not None
    same(sub, _rows(cat_e, idx))
    keep = torch.rand(50, generator=gen) > 0.5
    same(cat_l.index(keep), cat_e.index(keep))
    moved = cat_l.to("cpu")
    assert moved.windows is not None
    same(moved, cat_e)
    mixed = _cat([lazy[0], eager[1], lazy[2]])  # mixing kinds gathers
    assert mixed.windows is None
    same(mixed, _cat(eager[:3]))
    other = make_env(data(seed=1)).reset(seed=0)  # another env's table: gathered as well
    two = _cat([lazy[0], other])
    assert two.windows is None
    same(two, _cat([eager[0], other.materialize()]))


class MLPBackbone(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.d_out = 8
        self.inp = nn.Linear(W * F, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.inp(x.flatten(1)))[:, None]  # (B, 1, D)


def trained_weights(env) -> tuple[dict, dict, PPOModule]:
    """(initial weights, weights after 3 PPO updates, the module)."""
    torch.manual_seed(0)
    settings = PPOSettings(n_steps=8, updates_per_epoch=3, n_minibatches=2, update_epochs=2)
    module = PPOModule(ActorCritic(MLPBackbone(), hidden=16), env, settings)
    start = {k: v.clone() for k, v in module.policy.state_dict().items()}
    L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    ).fit(module)
    return start, {k: v.clone() for k, v in module.policy.state_dict().items()}, module


def test_ppo_weights_identical_with_lazy_and_eager_observations():
    d = data()
    start, lazy_w, module = trained_weights(make_env(d, episode_len=6))
    _, eager_w, _ = trained_weights(EagerEnv(make_env(d, episode_len=6)))
    assert any(not torch.equal(lazy_w[k], start[k]) for k in start)  # it trained
    assert lazy_w.keys() == eager_w.keys()
    for k in lazy_w:
        assert torch.equal(lazy_w[k], eager_w[k]), k
    module.policy.eval()
    batch = module.rollout()  # the stored rollout holds row indices, not windows
    assert batch["obs"].windows is not None and batch["obs"].windows.rows.shape == (8 * 5, S)
