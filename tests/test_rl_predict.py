"""`plusultra-predict` on a PPO run (docs/rl.md, docs/data.md#inference-plusultra-predict): the
policy the stage handed to evaluation, rolled out greedily over the dates, gives the positions
the run traded in its test backtest; it reads no bar past each decision; a run without its
policy file is refused naming it."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf, open_dict

from plusultra.cli.predict import predict
from plusultra.errors import ConfigError, DataError
from plusultra.models.backbones import BACKBONES
from plusultra.rl.market import EnvMarket
from plusultra.rl.policy import ActorCritic
from plusultra.rl.predict import live_market, load_policy, save_policy
from tests.conftest import TINY, compose_config
from tests.test_rl_stage import SMALL_OVERRIDES
from tests.test_run import run_in_process

# the tests on a run are slow: one tiny curriculum=rl run (about 20 s), then predictions


@pytest.fixture(scope="module")
def rl_run(tiny_db, tmp_path_factory) -> Path:
    """A tiny curriculum=rl run on the realistic simulator, PPO over 3 epochs."""
    tmp = tmp_path_factory.mktemp("rlpredict")
    cfg = compose_config(
        [*TINY, "data=sqlite", f"data.path={tiny_db}", "curriculum=rl", "simulator=realistic"]
        + [*SMALL_OVERRIDES, "curriculum.stages.1.epochs=3"]
    )
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp)
        cfg.hydra.runtime.output_dir = str(tmp / "run")
    (tmp / "run").mkdir()
    return run_in_process(cfg)[1]


def _test_start(run_dir: Path) -> str:
    """The first date of the run's test segment (its walk-forward block)."""
    block = pd.read_parquet(run_dir / "walk_forward.parquet").iloc[0]
    return str(pd.Timestamp(block["start"]).date())


def _predict(run_dir: Path, db: Path, out: Path, **kw) -> pd.DataFrame:
    kw.setdefault("rollout_start", _test_start(run_dir))
    return pd.read_parquet(predict(run_dir, str(db), out, 256, None, None, progress=False, **kw))


@pytest.mark.slow
def test_the_policy_file_holds_the_selected_checkpoints_weights(rl_run):
    """``ppo-policy.pt`` (what predict loads) is the policy the stage handed over: the epoch of
    ``ppo-best.ckpt`` (kept by the run's checkpoint callback on the same validation score), or,
    when no epoch beat it (``ppo_best_epoch`` -1), the warm start before fine-tuning, which no
    Lightning checkpoint holds: its backbone is the supervised reference's and its residual
    head's output layer is still 0."""
    ckpts = rl_run / "checkpoints"
    saved = torch.load(ckpts / "ppo-policy.pt", map_location="cpu", weights_only=True)
    weights = saved["state_dict"]
    best = torch.load(ckpts / "ppo-best.ckpt", map_location="cpu", weights_only=True)
    policy = {k[7:]: v for k, v in best["state_dict"].items() if k.startswith("policy.")}
    assert saved["handed"] == "best"
    assert weights.keys() == policy.keys()
    kept = json.loads((rl_run / "metrics.json").read_text())["ppo_best_epoch"]
    if kept == -1:
        assert not all(torch.equal(weights[k], policy[k]) for k in policy)
        assert weights["pi.2.weight"].abs().sum() == 0 and weights["pi.2.bias"].abs().sum() == 0
        for k, v in weights.items():
            if k.startswith("backbone."):
                assert torch.equal(v, weights[f"reference.{k}"]), k
        return
    assert all(torch.equal(weights[k], policy[k]) for k in policy)
    last = torch.load(ckpts / "ppo-last.ckpt", map_location="cpu", weights_only=True)
    if last["epoch"] != best["epoch"]:  # then the handed policy is not the last epoch's
        assert not all(torch.equal(v, last["state_dict"][f"policy.{k}"]) for k, v in policy.items())


@pytest.mark.slow
def test_predicted_positions_are_the_positions_the_run_traded(rl_run, tiny_db, tmp_path):
    ours = pd.read_parquet(rl_run / "predictions.parquet")
    preds = _predict(rl_run, tiny_db, tmp_path / "p.parquet")
    assert list(preds.columns[:3]) == ["symbol", "timestamp", "pred_1"]
    merged = ours.merge(preds, on=["symbol", "timestamp"], suffixes=("", "_cli"))
    assert len(ours) > 0 and len(merged) == len(ours)
    assert merged["pred_1"].abs().max() > 0  # the policy holds positions
    np.testing.assert_allclose(merged["pred_1_cli"], merged["pred_1"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(merged["position_cli"], merged["position"], atol=1e-6)
    # beyond the last bar a backtest can score, the newest bars still get their positions
    assert preds["timestamp"].max() > ours["timestamp"].max()
    with sqlite3.connect(tiny_db) as con:
        last = pd.Timestamp(con.execute("SELECT max(timestamp) FROM series").fetchone()[0])
    assert preds["timestamp"].max() == last


@pytest.mark.slow
def test_positions_up_to_a_cut_read_no_later_bar(rl_run, tiny_db, tmp_path):
    """Perturbing every bar after a cut, or ending the data there, leaves the positions up to
    the cut unchanged."""
    base = _predict(rl_run, tiny_db, tmp_path / "a.parquet")
    days = np.sort(base["timestamp"].unique())
    cut = pd.Timestamp(days[len(days) // 2])
    db = tmp_path / "perturbed.sqlite"
    shutil.copy(tiny_db, db)
    rng = np.random.default_rng(0)
    with sqlite3.connect(db) as con:
        later = con.execute(
            "SELECT symbol, timestamp FROM series WHERE timestamp > ?", (str(cut.date()),)
        ).fetchall()
        factors = rng.uniform(0.9, 1.1, len(later))
        con.executemany(
            "UPDATE series SET open = open * ?1, high = high * ?1, low = low * ?1, "
            "close = close * ?1, volume = volume * ?1 WHERE symbol = ?2 AND timestamp = ?3",
            [(float(f), s, t) for f, (s, t) in zip(factors, later, strict=True)],
        )
    perturbed = _predict(rl_run, db, tmp_path / "b.parquet")
    ended = predict(
        rl_run, str(tiny_db), tmp_path / "c.parquet", 256, None, str(cut.date()),
        progress=False, rollout_start=_test_start(rl_run),
    )  # fmt: skip
    upto = base[base["timestamp"] <= cut].reset_index(drop=True)[["symbol", "timestamp", "pred_1"]]
    for name, frame in (("perturbed", perturbed), ("ended", pd.read_parquet(ended))):
        got = frame[frame["timestamp"] <= cut].reset_index(drop=True)
        pd.testing.assert_frame_equal(got[upto.columns], upto, obj=name)
    after = base["timestamp"] > cut  # the perturbation did reach the policy after the cut
    assert not np.allclose(perturbed.loc[after, "pred_1"], base.loc[after, "pred_1"])


@pytest.mark.slow
def test_a_run_without_its_policy_file_is_refused(rl_run, tiny_db, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(rl_run, run)
    (run / "checkpoints" / "ppo-policy.pt").unlink()
    with pytest.raises(DataError, match=r"ppo-policy\.pt: no policy file for PPO stage 'ppo'"):
        _predict(run, tiny_db, tmp_path / "p.parquet")


@pytest.mark.slow
def test_rollout_start_is_for_policy_runs_only(rl_run, tiny_db, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(rl_run, run, ignore=shutil.ignore_patterns("checkpoints"))
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.curriculum.stages = cfg.curriculum.stages[:1]  # as a supervised run
    OmegaConf.save(cfg, run / "config.yaml")
    with pytest.raises(ConfigError, match="--rollout-start applies to a run whose last"):
        _predict(run, tiny_db, tmp_path / "p.parquet")
    with pytest.raises(ConfigError, match="after the data's last bar"):
        _predict(rl_run, tiny_db, tmp_path / "p.parquet", rollout_start="2100-01-01")


def test_live_market_holds_the_last_bars_where_they_are_tradable_at_their_fill():
    """The last lag + 1 decision bars (no holding return in the data) hold a target where the
    symbol is observable and, with the fill bar in the data, tradable there; earlier bars are
    the environment's; lag + 1 empty bars are appended."""
    rng = np.random.default_rng(0)
    t, s, w = 30, 3, 4
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (t, s)), axis=0))
    tradable = np.ones((t, s), dtype=bool)
    tradable[-1, 1] = False  # symbol 1 cannot trade on the last bar (the fill of bar t - 2)
    feats = rng.normal(size=(t, s, 2))
    market = EnvMarket.build(feats, close, w, open_=close * 1.001, tradable=tradable)
    assert market.lag == 1
    live = live_market(market, tradable)
    assert live.n_bars == t + 2 and not live.observable[t:].any()
    assert torch.equal(live.holdable[: t - 2], market.holdable[: t - 2])
    assert not market.holdable[t - 2 :].any()  # the environment's: no return in the data
    assert live.holdable[t - 2].tolist() == [True, False, True]  # fill bar t - 1 is known
    assert torch.equal(live.holdable[t - 1], market.observable[t - 1])  # fill past the data
    assert torch.equal(live.features[:, :t], market.features)
    assert not live.returns[t - 2 :].any()


def _policy(seed: int) -> ActorCritic:
    torch.manual_seed(seed)
    backbone = BACKBONES["transformer"](n_features=2, d_model=8, depth=1, n_heads=2)
    return ActorCritic(backbone, "continuous", hidden=4)


def test_the_policy_file_round_trips_and_its_absence_names_file_and_stage(tmp_path):
    a, b = _policy(0), _policy(1)
    save_policy(a, "best", tmp_path / "rl-policy.pt")
    assert load_policy(b, tmp_path, "rl") == tmp_path / "rl-policy.pt"
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())
    with pytest.raises(DataError, match=r"ppo-policy\.pt: no policy file for PPO stage 'ppo'"):
        load_policy(b, tmp_path, "ppo")
    discrete = ActorCritic(a.backbone, "discrete", hidden=4)  # a (sell, hold, buy) head
    with pytest.raises(DataError, match="does not fit the policy of the run's config"):
        load_policy(discrete, tmp_path, "rl")
