"""The environment curriculum (`rl.schedule`, `TradingEnv.set_phase`, the PPO hook and the
stage's ``schedule`` key): validation, the market regime against its loop reference, phases'
episode lengths, start bars and costs, unchanged draws without a phase, phase switches at the
right updates, exact resume, and a tiny command-line run (docs/rl.md#environment-curriculum)."""

from __future__ import annotations

import glob

import lightning as L
import numpy as np
import pytest
import torch

from plusultra.errors import ConfigError
from plusultra.rl.module import PPOModule, PPOSettings
from plusultra.rl.policy import ActorCritic
from plusultra.rl.schedule import EnvSchedule, Phase, market_regime, market_regime_reference
from plusultra.rl.stage import RLStage
from plusultra.sim.frictionless import FrictionlessSimulator
from tests.conftest import TINY, run_cli
from tests.test_ppo import MLPBackbone, StopAfterFirstEpoch, fit
from tests.test_rl_env import W, make_env, panel
from tests.test_rl_stage import _module, dm  # noqa: F401 - dm: the tiny data module fixture

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        ([{"episode_len": 8}, {}], r"schedule\[0\]\.updates=None must be an integer >= 1"),
        ([{"updates": 0}, {}], r"schedule\[0\]\.updates=0 must be"),
        ([{"updates": 3}], r"schedule\[0\]\.updates=3: the last phase runs to the end"),
        ([{"updates": 2, "episode_len": 0}, {}], r"schedule\[0\]\.episode_len=0"),
        ([{"cost_scale": -1.0}], r"schedule\[0\]\.cost_scale=-1\.0 must be a finite number"),
        ([{"updates": 1}, {"cost": 1}], r"schedule\[1\]: unknown key\(s\) \['cost'\]"),
        ([{"regimes": {"moon": [0]}}], r"schedule\[0\]\.regimes\.moon: unknown label"),
        ([{"regimes": {"volatility": [3]}}], r"schedule\[0\]\.regimes\.volatility=\[3\]"),
        ([{"regimes": {"volatility": []}}], r"schedule\[0\]\.regimes\.volatility=\[\]"),
        ([3], r"schedule\[0\] must be a mapping"),
        ([], r"schedule: at least one phase"),
        ({"updates": 1}, r"schedule must be a list"),
        ([{"regimes": {"volatility": 2}}], r"schedule\[0\]\.regimes=.* lists of classes"),
    ],
)
def test_a_bad_schedule_names_the_phase_and_key(specs, match):
    with pytest.raises(ConfigError, match=match):
        EnvSchedule.from_config(specs)


def test_phases_built_directly_are_checked_too():
    with pytest.raises(ConfigError, match=r"curriculum\[0\]\.updates=None must be"):
        EnvSchedule([Phase(), Phase()], where="curriculum")
    with pytest.raises(ConfigError, match=r"schedule\[0\]\.regimes\.volatility=\[True\]"):
        EnvSchedule([Phase(regimes={"volatility": [True]})])


def test_phase_index_follows_the_updates():
    sched = EnvSchedule.from_config([{"updates": 2}, {"updates": 3}, {"cost_scale": 0.0}])
    assert [sched.index(u) for u in range(8)] == [0, 0, 1, 1, 1, 2, 2, 2]
    assert sched.phases[2] == Phase(cost_scale=0.0)


def test_the_stage_validates_its_schedule_on_creation():
    sim = FrictionlessSimulator()
    with pytest.raises(ConfigError, match=r"stage 'ppo': schedule\[0\]\.updates"):
        RLStage(name="ppo", simulator=sim, schedule=[{}, {}])
    assert RLStage(name="ppo", simulator=sim, schedule=[])._schedule is None
    spec = [{"updates": 2, "regimes": {"volatility": [0, 1]}}, {}]
    stage = RLStage(name="ppo", simulator=sim, schedule=spec)  # labels come with the data
    with pytest.raises(ConfigError, match=r"schedule\[0\]\.regimes: .* without regime labels"):
        stage._schedule.apply(make_env(panel(), n_envs=2, episode_len=8), 0)


@pytest.mark.parametrize(
    ("phase", "match"),
    [
        ({"episode_len": 1000}, r"schedule\[0\]\.episode_len=1000 does not fit"),
        # the 400-bar fixture's train segment ends before any volatility label is defined
        ({"regimes": {"volatility": [0, 1, 2]}}, r"schedule\[0\]: no allowed start bar"),
    ],
)
def test_the_stage_check_refuses_a_phase_the_data_cannot_serve(dm, phase, match):  # noqa: F811
    sim = FrictionlessSimulator()
    stage = RLStage(name="ppo", simulator=sim, schedule=[{"updates": 1, **phase}, {}])
    with pytest.raises(ConfigError, match=r"stage 'ppo': " + match):
        stage.check(_module(dm), dm)
    RLStage(name="ppo", simulator=sim, schedule=[{"updates": 1, "episode_len": 8}, {}]).check(
        _module(dm), dm
    )


# --------------------------------------------------------------------------- market regime


def test_market_regime_matches_the_loop_reference():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 3, size=(500, 7)).astype(np.int8)
    labels[:20] = -1  # warm-up: no symbol defined
    labels[20:40, :4] = -1
    np.testing.assert_array_equal(market_regime(labels), market_regime_reference(labels))
    ties = np.array([[0, 1, -1], [2, 2, 0], [1, 0, 1], [-1, -1, -1], [0, 0, 2]], dtype=np.int8)
    np.testing.assert_array_equal(market_regime(ties), [1, 2, 1, -1, 0])  # ties: higher class
    assert market_regime(np.full((3, 2), -1, np.int8)).tolist() == [-1, -1, -1]


# --------------------------------------------------------------------------- set_phase


def _starts(env, resets=20):
    out = []
    for seed in range(resets):
        env.reset(seed=seed)
        out.append(env.t.clone())
    return torch.cat(out)


def test_without_a_phase_the_start_bars_are_unchanged():
    data = panel()
    env = make_env(data, n_envs=6, episode_len=20)
    before = _starts(env)
    env.set_phase(episode_len=10, cost_scale=0.0, start_ok=torch.ones(300, dtype=torch.bool))
    env.set_phase()  # back to the env's own settings
    torch.testing.assert_close(_starts(env), before)
    torch.testing.assert_close(_starts(make_env(data, n_envs=6, episode_len=20)), before)
    # the draws are those of the plain randint over first_start..last_start
    gen = torch.Generator().manual_seed(3)
    want = torch.randint(env.first_start, env.last_start + 1, (6,), generator=gen)
    assert env.reset(seed=3) is not None and torch.equal(env.t, want)


def test_a_phase_sets_the_episode_length_and_the_allowed_start_bars():
    data = panel()
    env = make_env(data, n_envs=8, episode_len=40)
    ok = torch.zeros(300, dtype=torch.bool)
    ok[100:110] = True
    ok[200] = True
    env.set_phase(episode_len=12, start_ok=ok)
    starts = _starts(env)
    assert set(starts.tolist()) <= set(range(100, 110)) | {200}
    assert len(set(starts.tolist())) > 5  # drawn among them, not one
    env.reset(seed=0)
    action = torch.zeros(8, env.n_symbols)
    for k in range(12):
        _, _, term, trunc, info = env.step(action)
        assert bool(trunc.all()) == (k == 11)  # every episode lasts the phase's 12 steps
    assert tuple(env.shaper.history.shape) == (8, 12)  # the shaper is sized for it
    assert set(env.t.tolist()) <= set(range(100, 110)) | {200}  # restarted on allowed bars


def test_a_phase_that_cannot_start_names_itself():
    env = make_env(panel(), n_envs=2, episode_len=20)
    ok = torch.zeros(300, dtype=torch.bool)
    ok[295:] = True  # only bars an episode of 20 steps does not fit after
    with pytest.raises(ConfigError, match=r"schedule\[1\]: no allowed start bar"):
        env.set_phase(episode_len=20, start_ok=ok, name="schedule[1]")
    with pytest.raises(ConfigError, match=r"schedule\[0\]\.episode_len=400 does not fit"):
        env.set_phase(episode_len=400, name="schedule[0]")
    with pytest.raises(ConfigError, match=r"start_ok has shape \(5,\)"):
        env.set_phase(start_ok=torch.ones(5, dtype=torch.bool))
    assert env.episode_len == 20  # a refused phase leaves the env as it was


@pytest.mark.parametrize("impact", [0.0, 0.1])
def test_cost_scale_multiplies_every_cost(impact):
    data = panel()
    cfg = dict(n_envs=4, episode_len=10, commission_bps=3.0, half_spread_bps=2.0)
    gen = torch.Generator().manual_seed(0)
    actions = torch.rand(10, 4, 4, generator=gen) * 2 - 1
    costs = {}
    for scale in (1.0, 0.5, 0.0):
        env = make_env(data, impact_coef=impact, **cfg)
        env.set_phase(cost_scale=scale)
        env.reset(seed=1)
        costs[scale] = torch.stack([env.step(a)[4]["cost"] for a in actions])
    assert bool((costs[1.0] > 0).all())
    assert bool((costs[0.0] == 0).all())
    if impact == 0:  # linear costs, the same trades: exactly half
        torch.testing.assert_close(costs[0.5], costs[1.0] / 2)
    else:  # trades after the first step are measured against drifted books that differ
        torch.testing.assert_close(costs[0.5][0], costs[1.0][0] / 2)


def test_start_bars_follow_the_market_regime():
    labels = np.full((300, 4), -1, np.int8)
    labels[50:150] = 0
    labels[150:250] = [2, 2, 1, 0]  # market regime 2
    labels[250:] = [1, 1, 2, 2]  # a tie: 2
    sched = EnvSchedule.from_config(
        [{"updates": 1, "regimes": {"volatility": [0]}}, {"regimes": {"volatility": [2]}}],
        labels={"volatility": labels},
    )
    env = make_env(panel(), n_envs=8, episode_len=10)
    for phase, bars in ((0, range(50, 150)), (1, range(150, 300))):
        assert sched.apply(env, phase) == {"phase": phase, "cost_scale": 1.0, "episode_len": 10}
        assert set(_starts(env).tolist()) <= set(bars)
    sched.check(env)  # every phase fits; then the env's own settings again
    assert env._starts is None and env.episode_len == 10


# --------------------------------------------------------------------------- PPO hook


def _ppo(env, schedule, seed=0):
    torch.manual_seed(seed)
    settings = PPOSettings(n_steps=4, updates_per_epoch=3, update_epochs=1, n_minibatches=2)
    policy = ActorCritic(MLPBackbone(W, env.n_features), env.action_kind, hidden=16)
    return PPOModule(policy, env, settings, schedule)


class Record(L.Callback):
    def __init__(self):
        self.rows = []

    def on_train_batch_end(self, trainer, module, *args):
        logs = module.last_logs
        self.rows.append((logs["train/phase"], logs["train/episode_len"], logs["train/cost_scale"]))


SPECS = [
    {"updates": 2, "episode_len": 6, "cost_scale": 0.0},
    {"updates": 3, "episode_len": 9},
    {"cost_scale": 0.5},
]


def test_ppo_switches_phase_at_the_right_updates():
    env = make_env(panel(t=200), n_envs=4, episode_len=12)
    record = Record()
    module = _ppo(env, EnvSchedule.from_config(SPECS))
    fit(module, epochs=3, callbacks=[record])
    assert record.rows == [
        (0, 6, 0.0), (0, 6, 0.0),
        (1, 9, 1.0), (1, 9, 1.0), (1, 9, 1.0),
        (2, 12, 0.5), (2, 12, 0.5), (2, 12, 0.5), (2, 12, 0.5),
    ]  # fmt: skip


def test_epoch_end_resume_with_a_schedule_is_exact(tmp_path):
    def env():
        return make_env(panel(t=200), n_envs=4, episode_len=12)

    straight = _ppo(env(), EnvSchedule.from_config(SPECS))
    fit(straight, epochs=3)
    first = _ppo(env(), EnvSchedule.from_config(SPECS))
    trainer = fit(first, epochs=3, callbacks=[StopAfterFirstEpoch()])
    ckpt = tmp_path / "ppo.ckpt"
    trainer.save_checkpoint(ckpt)
    resumed = _ppo(env(), EnvSchedule.from_config(SPECS))  # a fresh env, no phase set
    fit(resumed, epochs=3, ckpt_path=ckpt)
    assert int(resumed.updates) == 9
    for (name, a), b in zip(
        straight.policy.state_dict().items(), resumed.policy.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


# --------------------------------------------------------------------------- command line


@pytest.mark.slow
def test_a_two_phase_schedule_from_the_command_line(tiny_db, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    small = ["n_envs=4", "episode_len=16"]
    ppo = ["n_steps=8", "updates_per_epoch=3", "update_epochs=1", "n_minibatches=2"]
    done = run_cli(
        [
            "plusultra.run", *TINY, "data=sqlite", f"data.path={tiny_db}",
            "evaluation.bootstrap=0", "curriculum=rl", "curriculum.stages.1.policy.hidden=16",
            *(f"curriculum.stages.1.env.{o}" for o in small),
            *(f"curriculum.stages.1.ppo.{o}" for o in ppo),
            "curriculum.stages.1.schedule=[{updates: 2, episode_len: 8, cost_scale: 0.0}, {}]",
            f"hydra.run.dir={run}",
        ],
        tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    series = {}
    for f in glob.glob(str(run / "tensorboard" / "events*")):
        acc = EventAccumulator(f)
        acc.Reload()
        for tag in ("ppo/train/phase", "ppo/train/episode_len", "ppo/train/cost_scale"):
            if tag in acc.Tags()["scalars"]:
                series[tag] = [e.value for e in acc.Scalars(tag)]
    assert series["ppo/train/phase"] == [0, 0, 1]
    assert series["ppo/train/episode_len"] == [8, 8, 16]
    assert series["ppo/train/cost_scale"] == [0, 0, 1]
    # the documented override parses; on this short fixture no train bar has a volatility
    # label yet (252 bars of history), so check() stops before training, naming the phase
    bad = run_cli(
        ["plusultra.run", *TINY, "data=sqlite", f"data.path={tiny_db}", "curriculum=rl",
         "curriculum.stages.1.schedule=[{updates: 20, episode_len: 16, cost_scale: 0.0, "
         "regimes: {volatility: [0, 1]}}, {episode_len: 64}]"],
        tmp_path,
    )  # fmt: skip
    assert bad.returncode == 2
    assert "curriculum.stages[1] (ppo): curriculum stage 'ppo': schedule[0]" in bad.stderr
