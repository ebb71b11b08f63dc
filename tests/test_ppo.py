"""PPO: each implementation detail, the policy, the toy environments and convergence to their
known optimum, warm starts, freezing, checkpoint round trips."""

from __future__ import annotations

import inspect
import math

import lightning as L
import pytest
import torch
from torch import nn

from plusultra.errors import ConfigError
from plusultra.models.backbones import BACKBONES
from plusultra.models.backbones.transformer import TransformerBackbone
from plusultra.models.heads import PolicyHead, RegressionHead
from plusultra.models.losses import CVaR
from plusultra.models.module import ForecastModule, OptimSettings
from plusultra.rl import ppo
from plusultra.rl.buffer import ReplayBuffer, bc_loss
from plusultra.rl.module import PPOModule, PPOSettings
from plusultra.rl.policy import ActorCritic, FreezeSchedule
from plusultra.rl.protocol import Observation
from plusultra.rl.toy import OUEnv, TrendEnv

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


class MLPBackbone(nn.Module):
    """Tiny backbone under the registry's contract: the flat window -> one token (B, 1, D)."""

    def __init__(self, window: int, n_features: int = 1, d_model: int = 16, depth: int = 1):
        super().__init__()
        self.d_out = d_model
        self.inp = nn.Linear(window * n_features, d_model)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh()) for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x.flatten(1)))
        for block in self.blocks:
            h = block(h)
        return h[:, None]  # (B, 1, D)


def fit(module: PPOModule, epochs: int = 1, ckpt_path=None, **kw) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        **kw,
    )
    trainer.fit(module, ckpt_path=ckpt_path, weights_only=True)
    return trainer


def small(env, **kw) -> PPOModule:
    torch.manual_seed(0)
    settings = {"n_steps": 16, "updates_per_epoch": 2, "lr": 3e-3, "gamma": 0.9, **kw}
    policy = ActorCritic(MLPBackbone(env.window), env.action_kind, hidden=32)
    return PPOModule(policy, env, PPOSettings(**settings))


# ---------------------------------------------------------------- GAE


def test_gae_by_hand():
    r = torch.tensor([[1.0], [2.0], [3.0]])
    v = torch.tensor([[0.5], [1.0], [1.5]])
    nv = torch.tensor([[1.0], [1.5], [2.0]])  # values[t + 1], then the last obs' value 2.0
    no = torch.zeros(3, 1, dtype=torch.bool)
    g, lam = 0.9, 0.8
    d2 = 3 + g * 2.0 - 1.5
    d1 = 2 + g * 1.5 - 1.0
    d0 = 1 + g * 1.0 - 0.5
    a2, a1 = d2, d1 + g * lam * d2
    a0 = d0 + g * lam * a1
    adv, ret = ppo.gae(r, v, nv, no, no, g, lam)
    torch.testing.assert_close(adv[:, 0], torch.tensor([a0, a1, a2]))
    torch.testing.assert_close(ret, adv + v)


def test_gae_truncation_bootstraps_termination_does_not():
    r, v, nv = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.5, 0.5]]), torch.tensor([[4.0, 4.0]])
    term = torch.tensor([[True, False]])
    trunc = torch.tensor([[False, True]])
    adv, _ = ppo.gae(r, v, nv, term, trunc, 0.9, 0.95)
    assert adv[0, 0] == pytest.approx(1 - 0.5)  # terminal: no future
    assert adv[0, 1] == pytest.approx(1 + 0.9 * 4 - 0.5)  # time limit: V(final obs)


def test_gae_does_not_cross_episodes():
    r = torch.tensor([[1.0], [100.0]])
    v = torch.zeros(2, 1)
    nv = torch.tensor([[0.0], [0.0]])
    for flag in ("terminated", "truncated"):
        ended = torch.tensor([[True], [False]])
        no = torch.zeros_like(ended)
        args = (ended, no) if flag == "terminated" else (no, ended)
        adv, _ = ppo.gae(r, v, nv, *args, 0.99, 0.95)
        assert adv[0, 0] == pytest.approx(1.0)  # the next episode's 100 does not leak back


def test_gae_matches_reference():
    g = torch.Generator().manual_seed(1)
    T, E = 9, 6
    r, v, nv = (torch.randn(T, E, generator=g) for _ in range(3))
    term = torch.rand(T, E, generator=g) < 0.15
    trunc = (torch.rand(T, E, generator=g) < 0.15) & ~term
    got = ppo.gae(r, v, nv, term, trunc, 0.97, 0.9)
    want = ppo.gae_ref(r, v, nv, term, trunc, 0.97, 0.9)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- losses and diagnostics


def test_normalize_advantages():
    a = torch.tensor([1.0, 2.0, 3.0, 10.0])
    n = ppo.normalize_advantages(a)
    assert n.mean().abs() < 1e-6 and n.std() == pytest.approx(1.0, abs=1e-5)


def test_policy_loss_matches_reference():
    g = torch.Generator().manual_seed(2)
    logp, old, adv = (torch.randn(50, generator=g) * 0.3 for _ in range(3))
    loss, frac = ppo.policy_loss(logp, old, adv, 0.2)
    assert float(loss) == pytest.approx(ppo.policy_loss_ref(logp, old, adv, 0.2), rel=1e-5)
    ratio = (logp - old).exp()
    assert float(frac) == pytest.approx(float(((ratio - 1).abs() > 0.2).float().mean()))


@pytest.mark.parametrize(
    ("ratio", "adv", "has_grad"),
    [
        (1.19, 1.0, True),  # inside the range
        (1.21, 1.0, False),  # past 1 + eps in the advantage's direction: clipped, no gradient
        (1.21, -1.0, True),  # past 1 + eps against the advantage: the pessimistic term keeps it
        (0.79, -1.0, False),  # below 1 - eps with a negative advantage: clipped
        (0.79, 1.0, True),
    ],
)
def test_policy_loss_clipping_boundaries(ratio, adv, has_grad):
    logp = torch.tensor([math.log(ratio)], requires_grad=True)
    loss, _ = ppo.policy_loss(logp, torch.zeros(1), torch.tensor([adv]), 0.2)
    loss.backward()
    assert (logp.grad.abs() > 0).item() == has_grad


def test_value_clipping():
    old, ret = torch.zeros(1), torch.ones(1)
    v = torch.tensor([0.5], requires_grad=True)  # moved 0.5 towards the target, clip 0.2
    loss = ppo.value_loss(v, old, ret, 0.2)
    assert float(loss.detach()) == pytest.approx(0.5 * 0.8**2)  # the clipped (larger) error
    loss.backward()
    assert v.grad.item() == 0  # past the clip: no gradient
    v = torch.tensor([-0.5], requires_grad=True)  # moved away: unclipped error is larger
    ppo.value_loss(v, old, ret, 0.2).backward()
    assert v.grad.item() != 0
    assert float(ppo.value_loss(torch.tensor([0.5]), old, ret, None)) == pytest.approx(0.125)


def test_approx_kl_k3():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(400_000, generator=g)  # samples of the old policy N(0, 1)
    old = -0.5 * x**2
    new = -0.5 * (x - 0.3) ** 2  # N(0.3, 1): KL(old || new) = 0.3^2 / 2 = 0.045
    assert float(ppo.approx_kl(new, old)) == pytest.approx(0.045, rel=0.03)
    assert float(ppo.approx_kl(old, old)) == 0.0


def test_explained_variance():
    y = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert ppo.explained_variance(y, y) == pytest.approx(1.0)
    assert ppo.explained_variance(torch.full_like(y, 2.5), y) == pytest.approx(0.0)
    assert math.isnan(ppo.explained_variance(y, torch.ones(4)))


# ---------------------------------------------------------------- policy


def test_log_prob_and_entropy_match_torch_distributions():
    obs = TrendEnv(n_envs=3, n_symbols=4, window=4).reset(0)
    obs.mask[0, 1] = False
    for kind in ("continuous", "discrete"):
        pol = ActorCritic(MLPBackbone(4), kind)
        out = pol(obs)
        act = pol.sample(out, torch.Generator().manual_seed(0))
        lp, ent = pol.log_prob_entropy(out, act, obs.mask)
        if kind == "continuous":
            dist = torch.distributions.Normal(out.mean, out.log_std.exp().expand_as(out.mean))
        else:
            dist = torch.distributions.Categorical(logits=out.logits)
        m = obs.mask.float()
        torch.testing.assert_close(lp, (dist.log_prob(act) * m).sum(1))
        torch.testing.assert_close(ent, (dist.entropy() * m).sum(1))


def test_orthogonal_init_of_heads():
    pol = ActorCritic(MLPBackbone(4), "discrete", hidden=32)
    w = pol.pi[0].weight  # (32, 18): orthonormal rows scaled by sqrt(2)
    torch.testing.assert_close(w.T @ w, 2 * torch.eye(18), atol=1e-5, rtol=0)
    out = pol.pi[2].weight  # (3, 32), gain 0.01: near-uniform initial actions
    torch.testing.assert_close(out @ out.T, 1e-4 * torch.eye(3), atol=1e-7, rtol=0)
    assert pol.pi[2].bias.abs().sum() == 0


# ---------------------------------------------------------------- toy environments


def test_toy_timing_fill_at_next_bar():
    env = TrendEnv(n_envs=2, window=3, episode_len=5, drift=0.5)
    obs = env.reset(0)
    torch.testing.assert_close(obs.features[0, 0, :, 0], torch.full((3,), 0.5))
    nxt, r, *_ = env.step(torch.tensor([[1.0], [-1.0]]))
    torch.testing.assert_close(r, torch.tensor([0.5, -0.5]))  # earns t+1 -> t+2
    torch.testing.assert_close(nxt.position[:, 0], torch.tensor([1.0, -1.0]))  # filled
    torch.testing.assert_close(nxt.cash, torch.tensor([0.0, 2.0]))


def test_ou_reward_uses_future_bars_only_and_matches_the_derivation():
    env = OUEnv(n_envs=4000, window=2, episode_len=4, theta=0.3, cost=0.2)
    obs = env.reset(5)
    t = int(env.t[0])
    x = env.prices[:, 0]
    _, r, *_ = env.step(torch.ones(4000, 1))
    torch.testing.assert_close(r, x[:, t + 2] - x[:, t + 1] - 0.1)
    torch.testing.assert_close(obs.features[:, 0, -1, 0], x[:, t])  # the window ends at t
    move = x[:, t + 2] - x[:, t + 1]
    slope = (move * x[:, t]).mean() / (x[:, t] ** 2).mean()  # regression through 0
    assert float(slope) == pytest.approx(-0.3 * 0.7, abs=0.03)  # E[move | x_t] = -theta(1-theta)x_t


def test_toy_auto_reset_and_final_observation():
    env = TrendEnv(n_envs=3, window=2, episode_len=2)
    env.reset(0)
    _, _, term, trunc, info = env.step(torch.ones(3, 1))
    assert not trunc.any() and info == {}
    nxt, _, term, trunc, info = env.step(torch.ones(3, 1))
    assert trunc.all() and not term.any()
    assert info["done_index"].tolist() == [0, 1, 2]
    assert info["final_observation"].position.eq(1).all()  # the ended episode's state
    assert nxt.position.eq(0).all()  # the new episode starts flat


# ---------------------------------------------------------------- the module's mechanics


def test_rollout_bootstraps_truncated_episodes_from_the_final_observation():
    env = TrendEnv(n_envs=3, window=4, episode_len=2)
    m = small(env, n_steps=3)
    m._obs, m._ep_return = env.reset(0), torch.zeros(3)
    m.policy.eval()
    b = m.rollout()
    nv, v = b["next_value"].view(3, 3), b["value"].view(3, 3)  # (T, E)
    torch.testing.assert_close(nv[0], v[1])  # inside the episode: the next state's value
    pos = b["action"].view(3, 3)[1].clamp(-1, 1)[:, None]  # filled at the episode's last bar
    final = Observation(torch.full((3, 1, 4, 1), env.drift), pos, 1 - pos[:, 0], pos > -2)
    with torch.no_grad():
        torch.testing.assert_close(nv[1], m.policy(final).value)  # time limit: V(final obs)
    assert not torch.allclose(nv[1], v[2])  # not the next episode's first state
    assert b["episode_return"] is not None


def test_settings_errors_name_the_key():
    with pytest.raises(ConfigError, match="ppo.gamma"):
        PPOSettings(gamma=1.5)
    with pytest.raises(ConfigError, match="ppo.n_minibatches"):
        PPOSettings(n_minibatches=0)
    with pytest.raises(ConfigError, match="ppo.target_kl"):
        PPOSettings(target_kl=0.0)
    with pytest.raises(ConfigError, match="ppo.unfreeze_top"):
        PPOSettings(unfreeze_top=-1)


def test_advantages_normalised_per_minibatch(monkeypatch):
    sizes = []
    real = ppo.normalize_advantages
    monkeypatch.setattr(ppo, "normalize_advantages", lambda a: sizes.append(len(a)) or real(a))
    env = TrendEnv(n_envs=8, window=4, episode_len=8)
    fit(small(env, n_steps=8, n_minibatches=4, update_epochs=2, updates_per_epoch=1))
    assert sizes == [16] * 8  # 8 steps x 8 envs / 4 minibatches, 2 epochs


def test_kl_early_stop_stops_the_epoch_loop():
    env = TrendEnv(n_envs=8, window=4, episode_len=8)
    m = small(env, n_steps=8, updates_per_epoch=1, lr=0.05, target_kl=1e-6)
    fit(m)
    assert m.last_logs["train/minibatch_steps"] == 1 and m.last_logs["train/kl_stop"] == 1
    m = small(env, n_steps=8, updates_per_epoch=1, update_epochs=3, n_minibatches=2)
    fit(m)
    assert m.last_logs["train/minibatch_steps"] == 6 and m.last_logs["train/kl_stop"] == 0


def test_gradient_clipping_applied():
    env = TrendEnv(n_envs=8, window=4, episode_len=8)
    m = small(env, n_steps=8, updates_per_epoch=1, max_grad_norm=1e-3)
    clipped = []
    real = m.clip_gradients

    def spy(opt, **kw):
        real(opt, **kw)
        grads = [p.grad.norm() for p in m.policy.parameters() if p.grad is not None]
        clipped.append(float(torch.stack(grads).norm()))

    m.clip_gradients = spy
    fit(m)
    assert m.last_logs["train/grad_norm"] > 1e-3  # before clipping
    assert clipped and max(clipped) <= 1e-3 * 1.0001


def test_entropy_bonus_keeps_the_policy_wider():
    env = TrendEnv(n_envs=16, window=4, episode_len=8)
    stds = []
    for ent_coef in (0.0, 0.5):
        m = small(env, n_steps=8, updates_per_epoch=4, ent_coef=ent_coef, lr=1e-2)
        fit(m)
        stds.append(m.last_logs["train/std"])
    assert stds[1] > stds[0]


def test_learning_rate_annealing():
    env = TrendEnv(n_envs=4, window=4, episode_len=8)
    m = small(env, n_steps=4, updates_per_epoch=4, lr=1e-2)
    lrs = []
    m.on_train_batch_end = lambda *a: lrs.append(m.optimizers().param_groups[0]["lr"])
    fit(m)
    assert lrs == pytest.approx([1e-2 * (1 - k / 4) for k in range(4)])


def test_policy_env_mismatch_is_a_config_error():
    env = TrendEnv(n_envs=2, window=4)
    with pytest.raises(ConfigError, match="n_features"):
        PPOModule(ActorCritic(MLPBackbone(4, n_features=3)), env, PPOSettings())
    with pytest.raises(ConfigError, match="action_kind"):
        PPOModule(ActorCritic(MLPBackbone(4), "discrete"), env, PPOSettings())


class StopAfterFirstEpoch(L.Callback):
    def on_train_epoch_end(self, trainer, module):
        trainer.should_stop = True


def test_checkpoint_round_trip_resumes_exactly(tmp_path):
    env = OUEnv(n_envs=8, window=4, episode_len=6)
    straight = small(env, n_steps=4)
    fit(straight, epochs=2)
    first = small(env, n_steps=4)
    trainer = fit(first, epochs=2, callbacks=[StopAfterFirstEpoch()])  # same lr schedule
    ckpt = tmp_path / "ppo.ckpt"
    trainer.save_checkpoint(ckpt)
    state = torch.load(ckpt, weights_only=True)  # only weights_only-safe types inside
    assert "ppo_generator" in state and int(state["state_dict"]["updates"]) == 2
    resumed = small(env, n_steps=4)
    fit(resumed, epochs=2, ckpt_path=ckpt)
    assert int(resumed.updates) == 4
    for (name, a), b in zip(
        straight.policy.state_dict().items(), resumed.policy.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


# ---------------------------------------------------------------- warm start and freezing


def _forecaster(head: nn.Module) -> ForecastModule:
    torch.manual_seed(0)
    bb = TransformerBackbone(1, d_model=16, depth=3, n_heads=2, max_len=8)
    loss = nn.MSELoss() if head.kind == "forecast" else CVaR()
    return ForecastModule(bb, head, loss, OptimSettings())


def test_warm_start_copies_the_backbone():
    src = _forecaster(RegressionHead(16, 1))
    pol = ActorCritic.from_forecast(src, "continuous")
    for (name, a), b in zip(
        src.backbone.state_dict().items(), pol.backbone.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)
        assert a.data_ptr() != b.data_ptr()  # a copy: PPO does not change the source model
    assert not any(p.requires_grad for p in pol.reference.parameters())
    obs = OUEnv(n_envs=3, window=8).reset(0)
    ref = pol.reference_position(obs)
    x = obs.features.reshape(3, 8, 1)
    torch.testing.assert_close(ref[:, 0], src(x)[:, 0].clamp(-1, 1))  # forecast as position


def test_reference_position_of_a_policy_head():
    src = _forecaster(PolicyHead(16, "discrete"))
    pol = ActorCritic.from_forecast(src, "discrete")
    obs = OUEnv(n_envs=3, window=8).reset(0)
    p = torch.softmax(src(obs.features.reshape(3, 8, 1)), -1)
    torch.testing.assert_close(pol.reference_position(obs)[:, 0], p[:, 2] - p[:, 0])
    target = pol.reference_target(obs)  # the head's own probabilities, 1 % smoothed
    torch.testing.assert_close(target[:, 0], 0.99 * p + 0.01 / 3)
    assert pol.reference_action(target)[:, 0].tolist() == p.argmax(-1).tolist()


def test_freeze_schedule():
    pol = ActorCritic.from_forecast(_forecaster(RegressionHead(16, 1)))
    bb = pol.backbone
    schedule = FreezeSchedule(frozen_updates=2, unfreeze_top=1)
    for update in (0, 1):
        assert schedule.apply(bb, update) == 0
    n = schedule.apply(bb, 2)
    assert n == sum(p.numel() for p in bb.blocks[-1].parameters())
    assert all(p.requires_grad for p in bb.blocks[2].parameters())
    assert not any(p.requires_grad for p in bb.blocks[1].parameters())
    assert not bb.embed.weight.requires_grad
    assert FreezeSchedule(0, None).apply(bb, 0) == sum(p.numel() for p in bb.parameters())
    with pytest.raises(ConfigError, match="exceeds"):
        FreezeSchedule(0, 4).apply(bb, 0)


def test_frozen_backbone_does_not_move_in_training():
    env = OUEnv(n_envs=4, window=8, episode_len=6)
    pol = ActorCritic.from_forecast(_forecaster(RegressionHead(16, 1)))
    before = {k: v.clone() for k, v in pol.backbone.state_dict().items()}
    m = PPOModule(pol, env, PPOSettings(n_steps=4, updates_per_epoch=2, frozen_updates=2, lr=1e-2))
    fit(m)
    for k, v in pol.backbone.state_dict().items():
        torch.testing.assert_close(v, before[k], msg=k)
    assert m.last_logs["train/backbone_trainable"] == 0


def test_kl_to_reference_and_warm_start_refusals():
    obs = OUEnv(n_envs=2, n_symbols=2, window=4).reset(0)
    pol = ActorCritic(MLPBackbone(4))
    out = pol(obs)
    assert (pol.kl_to_reference(out, torch.full((2, 2), 0.7), obs.mask) > 0).all()
    same = pol.kl_to_reference(out, out.mean.detach(), obs.mask)
    torch.testing.assert_close(same, torch.zeros(2))
    pol = ActorCritic(MLPBackbone(4), "discrete")
    out = pol(obs)
    probs = torch.softmax(out.logits, -1).detach()
    torch.testing.assert_close(pol.kl_to_reference(out, probs, obs.mask), torch.zeros(2))
    want = (probs * (probs.log() - torch.tensor([0.1, 0.2, 0.7]).log())).sum((-1, -2))
    got = pol.kl_to_reference(out, torch.tensor([0.1, 0.2, 0.7]).expand(2, 2, 3), obs.mask)
    torch.testing.assert_close(got, want)
    with pytest.raises(ConfigError, match="ref_kl_coef"):
        PPOModule(
            ActorCritic(MLPBackbone(4)), OUEnv(n_envs=2, window=4), PPOSettings(ref_kl_coef=0.1)
        )


def test_ref_kl_and_behaviour_cloning_pull_towards_the_supervised_policy():
    env = OUEnv(n_envs=16, window=8, episode_len=8)
    src = _forecaster(RegressionHead(16, 1))
    torch.manual_seed(1)
    pol = ActorCritic.from_forecast(src, "continuous", hidden=32)
    obs = env.reset(99)
    ref = pol.reference_position(obs)
    with torch.no_grad():
        gap0 = float((pol(obs).mean - ref).abs().mean())
    settings = PPOSettings(
        n_steps=8, updates_per_epoch=6, lr=1e-2, ref_kl_coef=1.0, bc_coef=1.0, bc_capacity=512
    )
    m = PPOModule(pol, env, settings)
    fit(m)
    assert {"train/ref_kl", "train/bc_loss"} <= set(m.last_logs) and len(m.buffer) == 512
    with torch.no_grad():
        gap = float((pol(obs).mean - ref).abs().mean())
    assert gap < 0.5 * gap0


def test_replay_buffer_ring_and_bc_loss():
    buf = ReplayBuffer(5)
    obs = TrendEnv(n_envs=3, window=2).reset(0)
    for k in range(3):
        buf.add(obs, torch.full((3, 1), float(k)))
    assert len(buf) == 5
    assert sorted(buf.store["action"][:, 0].tolist()) == [1, 1, 2, 2, 2]  # oldest overwritten
    o, a = buf.sample(7, torch.Generator().manual_seed(0))
    assert isinstance(o, Observation) and a.shape == (7, 1)
    pol = ActorCritic(MLPBackbone(2))
    assert torch.isfinite(bc_loss(pol, o, a))
    with pytest.raises(ConfigError, match="empty"):
        ReplayBuffer(2).sample(1)


# ---------------------------------------------------------------- the known optimum


@pytest.mark.parametrize("kind", ["continuous", "discrete"])
def test_ppo_learns_the_trend_optimum(kind):
    env = TrendEnv(n_envs=32, window=4, episode_len=16, action_kind=kind)
    m = small(env, updates_per_epoch=15)
    fit(m)
    obs = env.reset(123)
    pos = env.positions(m.policy.greedy(m.policy(obs)))
    assert pos.min() > 0.95  # optimum: +1 everywhere
    assert m.last_logs["train/reward"] > 0.8 * env.drift  # sampled actions too


def test_ppo_learns_the_ou_optimum():
    env = OUEnv(n_envs=128, window=4, episode_len=16)
    m = small(env, updates_per_epoch=40, gamma=0.5, gae_lambda=0.9)
    fit(m)
    test = OUEnv(n_envs=2000, window=4)
    obs = test.reset(123)
    with torch.no_grad():
        pos = m.policy.greedy(m.policy(obs))
    best = test.optimal_position(obs)
    ratio = test.expected_reward(obs, pos).mean() / test.expected_reward(obs, best).mean()
    assert float((pos - best).abs().mean()) < 0.12
    assert float(ratio) > 0.95  # a flat policy scores 0, the optimum 1


@pytest.mark.slow
def test_ppo_with_a_transformer_backbone_learns_the_ou_optimum():
    torch.manual_seed(0)
    env = OUEnv(n_envs=128, window=8, episode_len=16)
    bb = TransformerBackbone(1, d_model=16, depth=1, n_heads=2, max_len=8)
    settings = PPOSettings(n_steps=16, updates_per_epoch=60, lr=3e-3, gamma=0.5, gae_lambda=0.9)
    m = PPOModule(ActorCritic(bb, hidden=32), env, settings)
    fit(m)
    test = OUEnv(n_envs=2000, window=8)
    obs = test.reset(123)
    with torch.no_grad():
        pos = m.policy.greedy(m.policy(obs))
    ratio = (
        test.expected_reward(obs, pos).mean()
        / test.expected_reward(obs, test.optimal_position(obs)).mean()
    )
    assert float(ratio) > 0.95


def test_discrete_policy_with_reference_kl_and_behaviour_cloning_trains():
    src = _forecaster(PolicyHead(16, "discrete"))
    pol = ActorCritic.from_forecast(src, "discrete", hidden=16)
    env = OUEnv(n_envs=4, window=8, episode_len=6, action_kind="discrete")
    settings = PPOSettings(n_steps=4, updates_per_epoch=2, ref_kl_coef=0.5, bc_coef=0.5)
    m = PPOModule(pol, env, settings)
    fit(m)
    assert m.buffer.store["action"].dtype == torch.long and len(m.buffer) == 2 * 4 * 4
    assert math.isfinite(m.last_logs["train/ref_kl"]) and math.isfinite(
        m.last_logs["train/bc_loss"]
    )


def test_moe_backbone_aux_loss_is_added_and_logged():
    from plusultra.models.backbones.moe import MoEBackbone

    torch.manual_seed(0)
    env = TrendEnv(n_envs=4, window=4, episode_len=6)
    bb = MoEBackbone(1, d_model=16, depth=1, n_heads=2, max_len=4)
    m = PPOModule(ActorCritic(bb, hidden=16), env, PPOSettings(n_steps=4, updates_per_epoch=1))
    fit(m)
    assert m.last_logs["train/aux_loss"] > 0


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_actor_critic_on_every_registered_backbone(name):
    torch.manual_seed(0)
    tiny = {"n_features": 1, "d_model": 16, "depth": 2, "n_heads": 2}
    params = inspect.signature(BACKBONES[name]).parameters
    backbone = BACKBONES[name](**{k: v for k, v in tiny.items() if k in params})
    env = OUEnv(n_envs=2, n_symbols=3, window=32)
    obs = env.reset(0)
    pol = ActorCritic(backbone, hidden=8)
    out = pol(obs)
    assert out.mean.shape == (2, 3) and out.value.shape == (2,)
    assert torch.isfinite(out.mean).all() and torch.isfinite(out.value).all()
    logp, _ = pol.log_prob_entropy(out, pol.sample(out), obs.mask)
    logp.sum().backward()  # gradients reach the backbone
    assert any(p.grad is not None for p in pol.backbone.parameters())
