"""The PPO curriculum stage: schema, the sequential rollout's timing, validation-only selection,
and `curriculum=rl` / `full` runs end to end with their catalogue rows (docs/rl.md)."""

from __future__ import annotations

import json

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import open_dict

import plusultra.rl.stage as rl_stage
from plusultra.catalogue.callback import CatalogueCallback
from plusultra.catalogue.query import query
from plusultra.errors import ConfigError
from plusultra.models.backbones import BACKBONES
from plusultra.models.heads import RegressionHead
from plusultra.models.module import ForecastModule, OptimSettings
from plusultra.rl.env import EnvConfig
from plusultra.rl.market import EnvMarket
from plusultra.rl.policy import ActorCritic
from plusultra.rl.rollout import positions_frame, segment_rollout
from plusultra.rl.stage import RLStage
from plusultra.sim.frictionless import FrictionlessSimulator
from plusultra.training.curriculum import Curriculum, build_stage
from plusultra.training.evaluate import check_evaluation
from plusultra.training.pretrain import PretrainStage
from plusultra.training.stages import SupervisedStage
from plusultra.training.walk_forward import WalkForward
from tests.conftest import TINY, compose_config, run_cli
from tests.test_run import run_in_process

SIM = FrictionlessSimulator()
PPO = {"kind": "ppo", "name": "ppo", "simulator": SIM}
SUP = {"kind": "supervised", "name": "supervised"}
# small PPO settings for tests: one update per epoch of 4 envs x 8 steps, 2 minibatch steps
PPO_SMALL = {"n_steps": 8, "updates_per_epoch": 1, "update_epochs": 1, "n_minibatches": 2}
SMALL = {"env": {"n_envs": 4, "episode_len": 16}, "ppo": PPO_SMALL, "policy": {"hidden": 16}}
SMALL_OVERRIDES = [
    "curriculum.stages.1.env.n_envs=4",
    "curriculum.stages.1.env.episode_len=16",
    "curriculum.stages.1.policy.hidden=16",
    *(f"curriculum.stages.1.ppo.{k}={v}" for k, v in PPO_SMALL.items()),
]


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({**PPO, "ppo": {"lr": -1.0}}, r"stages\[2\] \(ppo\): .*ppo: ppo\.lr=-1\.0 must be > 0"),
        ({**PPO, "ppo": {"lrate": 1}}, r"stages\[2\] \(ppo\): .*ppo: unknown key\(s\) \['lrate'\]"),
        ({**PPO, "env": {"n_envs": 0}}, r"stages\[2\] \(ppo\): .*env\.n_envs must be"),
        ({**PPO, "env": {"episodes": 3}}, r"env: unknown key\(s\) \['episodes'\]"),
        ({**PPO, "env": {"execution": "next_close"}}, "env.execution is the run's simulator's"),
        ({**PPO, "env": {"action_kind": "box"}}, r"env\.action_kind='box'"),
        ({**PPO, "reward": {"cvar_alpha": 2.0}}, r"reward: reward\.cvar_alpha"),
        ({**PPO, "reward": {"sharpe": 1.0}}, r"reward: unknown key\(s\) \['sharpe'\]"),
        ({**PPO, "policy": {"hidden": 0}}, r"policy: policy\.hidden=0"),
        ({**PPO, "select": "sortino"}, r"select='sortino'; valid: \['sharpe', 'return'\]"),
        ({**PPO, "window": 8}, "window and regimes do not apply to a PPO stage"),
        ({**PPO, "regimes": {"volatility": [2]}}, "window and regimes do not apply"),
        ({**PPO, "simulator": None}, "simulator is required"),
        ({**PPO, "epochs": 0}, "epochs=0"),
    ],
)
def test_a_wrong_ppo_stage_fails_naming_the_key(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_stage(2, spec)


def test_costs_come_from_the_simulator_and_the_stage_must_be_last():
    from plusultra.sim.realistic import RealisticSimulator

    stage = build_stage(1, {**PPO, "simulator": RealisticSimulator(commission_bps=3.0)})
    assert stage._env.commission_bps == 3.0 and stage._env.impact_coef > 0
    assert build_stage(1, {**PPO, "env": {"commission_bps": 9.0}})._env.commission_bps == 9.0
    with pytest.raises(ConfigError, match=r"\['ppo'\] must be the last stage"):
        Curriculum("x", [PPO, SUP])


@pytest.mark.parametrize(
    ("option", "kinds"),
    [("rl", [SupervisedStage, RLStage]), ("full", [PretrainStage, SupervisedStage, RLStage])],
)
def test_rl_curricula_build_and_trade_positions_as_they_are(option, kinds, tmp_path):
    cfg = compose_config([f"curriculum={option}", "simulator=realistic", "periods_per_year=252"])
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(tmp_path)
    HydraConfig.instance().set_config(cfg)
    cur = instantiate(cfg.curriculum, _convert_="all")
    assert cur.name == option and [type(s) for s in cur.stages] == kinds
    assert cur.stages[-1]._env.commission_bps == cfg.simulator.commission_bps  # the run's costs
    assert cfg.evaluation.position_method == "weights"  # the policy's positions, not re-ranked
    with pytest.raises(ConfigError, match="walk_forward.refit_every=21"):
        check_evaluation(cur, WalkForward(refit_every=21))
    check_evaluation(cur, WalkForward())  # one block: fine


# --------------------------------------------------------------------------- rollout

W, F_, S, T = 8, 3, 3, 120


def _market(features, close):
    return EnvMarket.build(features, close, W, open_=close * 1.001)


def _policy(seed=0, action_kind="continuous"):
    torch.manual_seed(seed)
    backbone = BACKBONES["transformer"](n_features=F_, d_model=16, depth=1, n_heads=2)
    policy = ActorCritic(backbone, action_kind, hidden=16)
    with torch.no_grad():  # a policy that moves: a larger output layer than the 0.01 init
        policy.pi[-1].weight.mul_(100)
    return policy


@pytest.mark.parametrize("action_kind", ["continuous", "discrete"])
def test_rollout_positions_only_read_bars_up_to_each_decision(action_kind):
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(T, S, F_)).astype(np.float32)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (T, S)), axis=0))
    cfg = EnvConfig(action_kind=action_kind)
    policy = _policy(action_kind=action_kind)
    segment, cut = (60, 110), 80  # decision bars; the future is everything after `cut`
    base = segment_rollout(policy, _market(feats, close), segment, cfg)
    f2, c2 = feats.copy(), close.copy()
    f2[cut + 1 :] = rng.normal(size=f2[cut + 1 :].shape)
    c2[cut + 1 :] *= np.exp(rng.normal(0, 0.05, c2[cut + 1 :].shape))
    moved = segment_rollout(policy, _market(f2, c2), segment, cfg)
    assert base.bars[0] == 60 and base.bars[-1] == 110
    past = base.bars <= cut
    np.testing.assert_array_equal(base.positions[past], moved.positions[past])
    assert not np.array_equal(base.positions[~past], moved.positions[~past])  # it can fail
    assert np.abs(base.positions).max() > 0.05  # the policy trades
    frame = positions_frame(base, pd.bdate_range("2020-01-01", periods=T), ["a", "b", "c"])
    assert list(frame.columns) == ["symbol", "timestamp", "pred_1"] and len(frame) == 51 * S


def test_rollout_policy_sees_the_position_it_chose_at_the_previous_bar():
    rng = np.random.default_rng(1)
    feats = rng.normal(size=(T, S, F_)).astype(np.float32)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (T, S)), axis=0))
    policy, seen = _policy(), []
    forward = policy.forward

    def spy(obs):
        seen.append(obs.position[0].clone())
        return forward(obs)

    policy.forward = spy
    out = segment_rollout(policy, _market(feats, close), (30, 60), EnvConfig())
    assert torch.equal(seen[0], torch.zeros(S))  # flat at the segment's start
    for k in range(1, len(out.bars)):
        np.testing.assert_array_equal(seen[k].numpy(), out.positions[k - 1])


def test_rollout_scores_by_hand():
    from plusultra.rl.rollout import SegmentRollout

    r = np.array([0.01, -0.02, 0.03, 0.0])
    out = SegmentRollout(np.arange(4), np.zeros((4, 1)), np.ones((4, 1), bool), r)
    assert out.score("return", 252) == pytest.approx(0.005 * 252)
    assert out.score("sharpe", 252) == pytest.approx(0.005 / np.std(r, ddof=1) * np.sqrt(252))
    flat = SegmentRollout(np.arange(4), np.zeros((4, 1)), np.ones((4, 1), bool), np.zeros(4))
    assert flat.score("sharpe", 252) == 0.0


# --------------------------------------------------------------------------- stage


@pytest.fixture(scope="module")
def dm(tiny_db):
    cfg = compose_config([*TINY, "data=sqlite", f"data.path={tiny_db}"])
    data = instantiate(cfg.data, features=instantiate(cfg.features, _convert_="all"))
    data.setup()
    return data


def _module(dm) -> ForecastModule:
    torch.manual_seed(0)
    backbone = BACKBONES["transformer"](n_features=dm.n_features, d_model=16, depth=1, n_heads=2)
    return ForecastModule(
        backbone, RegressionHead(16, dm.horizon), torch.nn.MSELoss(), OptimSettings()
    )


def _factory(tmp_path):
    def make_trainer(*extra, **overrides):
        ckpt = ModelCheckpoint(tmp_path, filename="best", monitor="val/loss", save_last=True)
        kw = dict(max_epochs=2, logger=False, enable_progress_bar=False, gradient_clip_val=1.0)
        kw |= dict(enable_model_summary=False, callbacks=[ckpt, *extra])
        return L.Trainer(**(kw | overrides))

    return make_trainer


def test_selection_reads_the_validation_segment_only(dm, tmp_path, monkeypatch):
    """The stage's validation rollouts cover the val segment, and perturbing every bar of the
    test segment changes neither the selected epoch's score nor its weights."""
    seen = []
    real = rl_stage.segment_rollout

    def spy(policy, market, segment, config):
        seen.append(tuple(segment))
        return real(policy, market, segment, config)

    monkeypatch.setattr(rl_stage, "segment_rollout", spy)

    def fit(directory):
        stage = build_stage(1, {**PPO, **SMALL})
        stage.check(_module(dm), dm)
        result = stage.run(_module(dm), dm, _factory(directory), final=True)
        return result, {
            k: v.clone() for k, v in result.trainer.lightning_module.state_dict().items()
        }

    result, state = fit(tmp_path / "a")
    # one validation rollout before fine-tuning and one per epoch, nothing else
    assert seen == [dm.segments.val] * 3
    assert result.metric == "sharpe" and np.isfinite(result.best_score)
    names = {p.name for p in (tmp_path / "a").iterdir()}
    assert names == {"ppo-best.ckpt", "ppo-last.ckpt", "ppo-policy.pt"}
    saved = torch.load(tmp_path / "a" / "ppo-policy.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(v, state[f"policy.{k}"]) for k, v in saved.items())  # as handed
    lo = dm.segments.test[0]
    saved = dm.features.copy(), dm.panel.fields["close"].copy()
    try:
        dm.features[lo:] = np.random.default_rng(0).normal(size=dm.features[lo:].shape)
        dm.panel.fields["close"][lo:] *= 1.5
        again, state2 = fit(tmp_path / "b")
    finally:
        dm.features[:], dm.panel.fields["close"][:] = saved
    assert again.best_score == result.best_score
    assert all(torch.equal(state[k], state2[k]) for k in state)
    # evaluation's positions do read the test segment
    assert not result.positions("test").empty and not result.positions("val").empty


# --------------------------------------------------------------------------- end to end


def test_curriculum_rl_runs_end_to_end_and_records_its_row(tiny_db, tmp_path):
    cfg = compose_config(
        [*TINY, "data=sqlite", f"data.path={tiny_db}", "evaluation.bootstrap=0", "curriculum=rl"]
        + SMALL_OVERRIDES
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    callback = CatalogueCallback(str(tmp_path / "catalogue"))
    callback.on_job_start(cfg)
    from hydra.core.utils import JobReturn, JobStatus

    value, run_dir = run_in_process(cfg)
    callback.on_job_end(cfg, JobReturn(status=JobStatus.COMPLETED, _return_value=value))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val_sharpe", "test_sharpe", "val_max_drawdown", "test_max_drawdown"):
        assert np.isfinite(metrics[key]), key
    assert np.isfinite(metrics["supervised_best_val_loss"])
    # frictionless simulator: the environment's validation score is the backtest's val Sharpe
    assert metrics["ppo_best_val_sharpe"] == pytest.approx(metrics["val_sharpe"], rel=1e-4)
    assert metrics["ppo_best_epoch"] in (-1, 0)  # before fine-tuning, or the one epoch
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    block = pd.read_parquet(run_dir / "walk_forward.parquet").iloc[0]  # the test segment
    assert preds["timestamp"].between(block["start"], block["end"]).all()
    np.testing.assert_allclose(preds["position"], preds["pred_1"], atol=1e-6)  # traded as is
    assert {"ppo-best.ckpt", "ppo-last.ckpt"} <= {
        p.name for p in (run_dir / "checkpoints").iterdir()
    }
    rows = query(
        tmp_path / "catalogue",
        "SELECT curriculum, avg(test_sharpe) AS s, any_value(ppo_best_val_sharpe) AS p, "
        "any_value(ppo_best_epoch) AS e FROM runs GROUP BY curriculum",
    )
    assert rows["curriculum"].tolist() == ["rl"] and rows["e"][0] == metrics["ppo_best_epoch"]
    assert rows["s"][0] == pytest.approx(metrics["test_sharpe"])


@pytest.mark.slow
def test_curriculum_full_from_the_command_line(tiny_db, tmp_path):
    run = tmp_path / "full"
    done = run_cli(
        [
            "plusultra.run",
            *TINY,
            "data=sqlite",
            f"data.path={tiny_db}",
            "evaluation.bootstrap=0",
            "curriculum=full",
            *(o.replace("stages.1", "stages.2") for o in SMALL_OVERRIDES),
            f"hydra.run.dir={run}",
        ],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("pretrain_best_val_loss", "supervised_best_val_loss", "ppo_best_val_sharpe"):
        assert np.isfinite(metrics[key]), key
    assert np.isfinite(metrics["val_sharpe"]) and np.isfinite(metrics["test_sharpe"])
    rows = query(tmp_path / "catalogue", "SELECT curriculum, test_sharpe FROM runs")
    assert rows["curriculum"].tolist() == ["full"]

    refit = run_cli(
        ["plusultra.run", *TINY, "data=sqlite", f"data.path={tiny_db}", "curriculum=rl",
         "walk_forward.refit_every=20"],
        tmp_path,
    )  # fmt: skip
    assert refit.returncode == 2 and "walk_forward.refit_every=20" in refit.stderr
