"""The residual warm start (``policy.residual``) and the validation candidate before fine-tuning
(docs/rl.md, "Policy and warm starts" and "Curriculum integration")."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import plusultra.rl.stage as rl_stage
from plusultra.errors import ConfigError
from plusultra.models.backbones.transformer import TransformerBackbone
from plusultra.models.heads import PolicyHead, RegressionHead
from plusultra.models.losses import CVaR
from plusultra.models.module import ForecastModule, OptimSettings
from plusultra.rl.buffer import bc_loss
from plusultra.rl.env import TradingEnv
from plusultra.rl.module import PPOModule, PPOSettings
from plusultra.rl.policy import ActorCritic
from plusultra.rl.stage import PolicySettings
from plusultra.rl.toy import OUEnv
from plusultra.training.curriculum import build_stage
from tests.test_rl_stage import PPO, SMALL, _factory, _module, dm  # noqa: F401 (fixture)

W = 8


HEADS = {"forecast": lambda: RegressionHead(16, 1), "policy": lambda: PolicyHead(16, "discrete")}


def forecaster(head: str) -> ForecastModule:
    """A tiny supervised model with a forecast or a discrete policy head, seeded."""
    torch.manual_seed(0)
    bb = TransformerBackbone(1, d_model=16, depth=1, n_heads=2, max_len=W)
    head = HEADS[head]()
    loss = torch.nn.MSELoss() if head.kind == "forecast" else CVaR()
    return ForecastModule(bb, head, loss, OptimSettings())


def residual_policy(kind: str = "continuous", head: str = "forecast", **kw) -> ActorCritic:
    """A residual policy on a tiny forecaster; forecast_scale 5 spreads the reference
    positions over (0, 1] (some clipped)."""
    src = forecaster(head)
    torch.manual_seed(1)
    kw = {"hidden": 16, "forecast_scale": 5.0, "residual": True} | kw
    return ActorCritic.from_forecast(src, kind, **kw).eval()


def observation(kind: str = "continuous", envs: int = 6, symbols: int = 3):
    return OUEnv(n_envs=envs, n_symbols=symbols, window=W, action_kind=kind).reset(0)


# ---------------------------------------------------------------- the policy at init


def test_residual_policy_at_init_acts_like_the_supervised_one():
    pol, obs = residual_policy(), observation()
    with torch.no_grad():
        ref = pol.reference_position(obs)  # already clipped to [-1, 1]
        greedy = pol.greedy(pol(obs))
    assert ((ref.abs() > 0.3) & (ref.abs() < 1)).any() and (ref.abs() == 1).any()  # some clipped
    torch.testing.assert_close(greedy, ref.clamp(-1, 1), atol=0.02, rtol=0)
    flat = residual_policy(residual=False)  # the same heads without the residual: a flat book
    with torch.no_grad():
        assert flat.greedy(flat(obs)).abs().max() < 0.05


@pytest.mark.parametrize("head", sorted(HEADS))
def test_discrete_residual_probabilities_at_init_are_the_references(head):
    pol, obs = residual_policy("discrete", head), observation("discrete")
    with torch.no_grad():
        probs = torch.softmax(pol(obs).logits, -1)  # (E, S, 3)
        ref = pol.reference_target(obs)
    assert ref.max() > 0.5  # not uniform: the comparison can fail
    torch.testing.assert_close(probs, ref, atol=0.02, rtol=0)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_cached_reference_gives_the_plain_forward(kind):
    pol, obs = residual_policy(kind), observation(kind)
    with torch.no_grad():
        plain, cached = pol(obs), pol(obs, base=pol.reference_target(obs))
    for a, b in zip(dataclasses.astuple(plain), dataclasses.astuple(cached), strict=True):
        if a is not None:
            assert torch.equal(a, b)


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_rollout_caches_the_reference_of_each_row(kind):
    """The rollout's stored base is each row's own reference: its log-probabilities recomputed
    with the cached base, and without it, equal the rollout's."""
    env = OUEnv(n_envs=4, n_symbols=2, window=W, episode_len=5, action_kind=kind)
    pol = residual_policy(kind)
    m = PPOModule(pol, env, PPOSettings(n_steps=7, ref_kl_coef=0.1))
    pol.eval()
    m.on_train_epoch_start()
    batch = m.rollout()
    obs, action = batch["obs"], batch["action"]
    with torch.no_grad():
        for out in (pol(obs, base=batch["ref"]), pol(obs)):
            logp, _ = pol.log_prob_entropy(out, action, obs.mask)
            torch.testing.assert_close(logp, batch["logp"])
        torch.testing.assert_close(batch["ref"], pol.reference_target(obs))


# ---------------------------------------------------------------- gradients and penalties


def test_residual_gradient_reaches_head_and_backbone_not_the_reference():
    pol, obs = residual_policy(), observation()
    last = pol.pi[-1]
    assert last.weight.abs().sum() == 0 and last.bias.abs().sum() == 0  # starts as the reference
    with torch.no_grad():  # as after the first optimiser step, which moves the output layer only
        last.weight.normal_(0.0, 0.1, generator=torch.Generator().manual_seed(0))
    out = pol(obs)
    logp, _ = pol.log_prob_entropy(out, out.mean.detach() + 0.3, obs.mask)
    logp.sum().backward()
    for part in (pol.pi, pol.backbone):
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in part.parameters())
    assert all(p.grad is None for p in pol.reference.parameters())


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_kl_to_reference_penalises_the_residual(kind):
    pol, obs = residual_policy(kind), observation(kind)
    with torch.no_grad():  # a residual of a visible size
        pol.pi[-1].weight.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(0))
        out = pol(obs)
        delta = pol.pi(pol._tokens(obs))  # the head's output: the residual
        kl = pol.kl_to_reference(out, pol.reference_target(obs), obs.mask)
    if kind == "continuous":
        want = (delta[..., 0] ** 2 / (2 * (2 * pol.log_std).exp())).sum(1)
    else:
        logq = torch.log_softmax(out.logits, -1)
        ref = pol.reference_target(obs)
        want = (logq.exp() * (logq - ref.log())).sum((-1, -2))
        # log pi - log ref = the residual logits minus their log-normaliser
        shift = delta - torch.logsumexp(out.logits, -1, keepdim=True)
        torch.testing.assert_close(logq - ref.log(), shift)
    assert (want > 1e-5).all()  # a residual to penalise
    torch.testing.assert_close(kl, want)


def test_behaviour_cloning_of_a_residual_policy_uses_the_stored_base():
    env = OUEnv(n_envs=4, window=W, episode_len=6)
    pol = residual_policy()
    m = PPOModule(pol, env, PPOSettings(n_steps=4, bc_coef=0.5, bc_capacity=64))
    pol.eval()
    m.on_train_epoch_start()
    batch = m.rollout()
    m.buffer.add(batch["obs"], pol.reference_action(batch["ref"]), batch["ref"])
    o, a, base = m.buffer.sample_with_base(9, torch.Generator().manual_seed(0))
    assert base is not None and base.shape == a.shape
    with torch.no_grad():
        torch.testing.assert_close(bc_loss(pol, o, a, base), bc_loss(pol, o, a))
    with pytest.raises(ConfigError, match="base"):
        m.buffer.add(batch["obs"], batch["action"])


# ---------------------------------------------------------------- configuration


def test_residual_needs_a_reference_and_a_boolean():
    from tests.test_ppo import MLPBackbone

    with pytest.raises(ConfigError, match="policy.residual=true needs a supervised reference"):
        ActorCritic(MLPBackbone(W), residual=True)
    with pytest.raises(ConfigError, match=r"policy\.residual='yes' must be true or false"):
        PolicySettings(residual="yes")
    with pytest.raises(ConfigError, match=r"policy: policy\.residual=1"):
        build_stage(1, {**PPO, "policy": {"residual": 1}})
    assert build_stage(1, {**PPO, "policy": {"residual": True}})._policy.residual


# ---------------------------------------------------------------- the candidate before PPO


@pytest.mark.parametrize("ppo_wins", [False, True])
def test_selection_keeps_the_policy_before_fine_tuning_unless_an_epoch_beats_it(
    dm,  # noqa: F811
    tmp_path,
    monkeypatch,
    ppo_wins,
):
    """The PPO epoch's validation score is shifted (the rollouts are real): down, and the
    stage hands over the policy before the first update (epoch -1); up, and the epoch's."""
    calls = []
    real = rl_stage.segment_rollout

    def scored(policy, market, segment, config):
        rollout = real(policy, market, segment, config)
        calls.append(({k: v.clone() for k, v in policy.state_dict().items()}, rollout))
        if len(calls) == 1:  # the candidate before fine-tuning: scored as it is
            return rollout
        shift = 0.01 if ppo_wins else -0.01  # a return per bar: the Sharpe ratio follows it
        return dataclasses.replace(rollout, net_returns=rollout.net_returns + shift)

    monkeypatch.setattr(rl_stage, "segment_rollout", scored)
    spec = {**PPO, **SMALL, "epochs": 1, "policy": {"hidden": 16, "residual": True}}
    stage = build_stage(1, spec)
    result = stage.run(_module(dm), dm, _factory(tmp_path), final=True)
    assert len(calls) == 2  # before fine-tuning, then after the one epoch
    initial, first = calls[0]
    handed = result.trainer.lightning_module.policy.state_dict()
    same = all(torch.equal(handed[k], initial[k]) for k in initial)
    if ppo_wins:
        assert result.best_epoch == 0 and not same and result.best_checkpoint is not None
    else:
        assert result.best_epoch == -1 and same and result.best_checkpoint is None
        assert result.best_score == first.score("sharpe", bars_a_year(dm.panel.dates))
        monkeypatch.setattr(rl_stage, "segment_rollout", real)
        val = result.positions("val")  # the handed policy's positions: the initial rollout's
        assert val["pred_1"].abs().max() > 0  # the warm start trades
        assert val["pred_1"].tolist() == pytest.approx(
            first.positions[first.observable].tolist(), abs=1e-6
        )


def bars_a_year(dates) -> float:
    """The stage's annualisation with ``periods_per_year: null``."""
    from plusultra.data.datasets.calendar import resolve_periods_per_year

    return float(resolve_periods_per_year(None, dates))


def test_residual_policy_starts_as_the_book_the_supervised_backtest_trades(dm):  # noqa: F811
    """forecast_scale null: the reference is the forecast of the traded step in return units,
    so the policy before fine-tuning is the supervised `evaluation=weights` book (up to the
    gross cap, which both apply the same way)."""
    from plusultra.data.datasets.windows import WindowDataset
    from plusultra.training.predict import predictions_frame

    module = _module(dm)
    stage = build_stage(1, {**PPO, **SMALL, "policy": {"hidden": 16, "residual": True}})
    pol = stage.make_policy(module, dm).eval()
    assert pol.signal_index == dm.horizon - 1  # signal_step null: the last step, as evaluation
    assert pol.forecast_scale == pytest.approx(dm.norm.target_scale[-1])
    env = TradingEnv.from_datamodule(dm, "val", stage._env)
    obs = env.reset(seed=0)
    with torch.no_grad():
        greedy = pol.greedy(pol(obs))  # (E, S)
    t, s = env.t, torch.arange(env.n_symbols)
    idx = torch.stack([t[:, None].expand(-1, env.n_symbols), s.expand(len(t), -1)], -1)
    idx = idx.reshape(-1, 2)
    ds = WindowDataset(dm.features, idx.numpy(), dm.window)
    preds = predictions_frame(
        module, ds, dm.panel.dates, dm.panel.symbols, dm.norm.target_scale, progress=False
    )
    want = preds[f"pred_{dm.horizon}"].to_numpy().reshape(greedy.shape)
    ok = obs.mask.numpy()
    assert np.abs(want[ok]).max() > 1e-4  # a book to compare
    np.testing.assert_allclose(greedy.numpy()[ok], np.clip(want[ok], -1, 1), atol=1e-6)
