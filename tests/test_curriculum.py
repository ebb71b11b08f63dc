"""Curriculum schema, stage data, stage checks, the stage hand-over, and warm starts end to end."""

from __future__ import annotations

import glob
import json
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger

from plusultra.data.features.regimes import regime_labels
from plusultra.errors import ConfigError
from plusultra.models.backbones.hybrid import HybridBackbone
from plusultra.models.heads import RegressionHead
from plusultra.models.losses import NegSharpe
from plusultra.models.module import ForecastModule, OptimSettings
from plusultra.training.curriculum import Curriculum, build_stage
from plusultra.training.pretrain import PretrainStage
from plusultra.training.stage_data import StageData
from plusultra.training.stages import SupervisedStage
from tests.conftest import TINY, compose_config, run_cli

SUP = {"kind": "supervised", "name": "supervised"}
PRE = {"kind": "pretrain", "name": "pretrain", "masked": {}}


@pytest.fixture(scope="module")
def dm(tiny_db):
    """The tiny database with a long train segment (regime labels need ~270 bars of history)."""
    split = ["data.train_end=0.8", "data.val_end=0.9"]
    cfg = compose_config([*TINY, "data=sqlite", f"data.path={tiny_db}", *split])
    data = instantiate(cfg.data, features=instantiate(cfg.features, _convert_="all"))
    data.setup()
    return data


def _module(dm, loss=None, **backbone) -> ForecastModule:
    torch.manual_seed(0)
    kw = {"d_model": 16, "depth": 1, "n_heads": 2, "max_len": dm.window, "ssm_state": 4} | backbone
    return ForecastModule(
        HybridBackbone(dm.n_features, **kw),
        RegressionHead(16, dm.horizon),
        loss or torch.nn.MSELoss(),
        OptimSettings(),
    )


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize(
    ("option", "kinds"),
    [("supervised", [SupervisedStage]), ("pretrain_finetune", [PretrainStage, SupervisedStage])],
)
def test_every_curriculum_option_builds_its_stages(option, kinds, tmp_path):
    cfg = compose_config([f"curriculum={option}", f"hydra.runtime.output_dir={tmp_path}"])
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    cur = instantiate(cfg.curriculum, _convert_="all")
    assert cur.name == option
    assert [type(s) for s in cur.stages] == kinds
    assert cur.checkpoint_dir == tmp_path / "checkpoints"


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ({**SUP, "epoch": 3}, r"stages\[0\] \(supervised\): unknown key\(s\) \['epoch'\]"),
        ({**PRE, "cost_bps": 5.0}, r"unknown key\(s\) \['cost_bps'\]"),  # supervised-only key
        ({**SUP, "kind": "dqn"}, r"stages\[0\]\.kind='dqn'; valid: \['ppo', 'pretrain', 's"),
        ({"kind": "supervised"}, "name is required"),
        ({**PRE, "masked": {"ratio": 0.3}}, r"'pretrain': masked: unknown key\(s\) \['ratio'\]"),
        ({**PRE, "masked": {"mask_ratio": 2}}, "'pretrain': masked: masked.mask_ratio=2"),
        ({**PRE, "masked": None}, "set masked and/or contrastive"),
        ({**SUP, "epochs": 0}, "'supervised': epochs=0"),
        ({**SUP, "window": 1}, "'supervised': window=1"),
        ({**SUP, "regimes": {"mood": [1]}}, r"regimes\.mood: unknown label"),
        ({**SUP, "regimes": {"volatility": [3]}}, r"regimes\.volatility=\[3\]; classes in"),
        ({**SUP, "cost_bps": -1.0}, "cost_bps must be >= 0"),
    ],
)
def test_a_wrong_stage_fails_naming_the_key(spec, match):
    with pytest.raises(ConfigError, match=match):
        build_stage(0, spec)


def test_curriculum_rules():
    with pytest.raises(ConfigError, match="at least one stage"):
        Curriculum("x", [])
    with pytest.raises(ConfigError, match="must be unique"):
        Curriculum("x", [SUP, SUP])
    with pytest.raises(ConfigError, match="the last stage \\('pretrain'\\) must train"):
        Curriculum("x", [SUP | {"name": "a"}, PRE])


# --------------------------------------------------------------------------- checks


def test_a_stage_window_longer_than_the_runs_is_refused(dm):
    stage = build_stage(0, {**SUP, "name": "grow", "window": dm.window + 1})
    with pytest.raises(ConfigError, match=f"stage 'grow': window={dm.window + 1} exceeds"):
        stage.check(_module(dm), dm)


def test_a_stage_window_the_backbone_refuses_names_stage_and_key(dm):
    stage = build_stage(0, {**SUP, "name": "short", "window": 3})  # hybrid patch_len = 4
    with pytest.raises(ConfigError, match="stage 'short': window=3: the backbone refuses .*patch"):
        stage.check(_module(dm), dm)
    build_stage(0, {**SUP, "window": 8}).check(_module(dm), dm)  # a shorter one is fine


def test_a_cost_on_a_loss_without_one_is_refused(dm):
    with pytest.raises(ConfigError, match="loss MSELoss has no turnover cost"):
        build_stage(0, {**SUP, "cost_bps": 20.0}).check(_module(dm), dm)


def test_masked_pretraining_refuses_a_non_causal_backbone(dm):
    stage = build_stage(0, PRE)
    with pytest.raises(ConfigError, match="causal=false"):
        stage.check(_module(dm, causal=False), dm)


# --------------------------------------------------------------------------- stage data


def test_stage_window_shortens_every_window(dm):
    data = StageData(dm, window=8)
    x, y = data.dataset("train").__getitems__([0, 1])
    assert x.shape[1] == 8 and y.shape[1] == dm.horizon
    # the same decision bars as the run's plus those whose long window was incomplete
    ours = {tuple(r) for r in data.dataset("train").index.tolist()}
    runs = {tuple(r) for r in dm.labelled_dataset(*dm.segments.train).index.tolist()}
    assert runs <= ours


def test_regime_filter_keeps_only_the_listed_classes_in_training(dm):
    data = StageData(dm, regimes={"volatility": [2]}, stage="calm")
    idx = data.dataset("train", filtered=True).index.numpy()
    labels = regime_labels(dm.panel, ["volatility"])["volatility"]
    assert len(idx) > 0 and (labels[idx[:, 0], idx[:, 1]] == 2).all()
    everything = data.dataset("train").index.numpy()
    assert len(everything) > len(idx)
    assert len(data.dataset("val").index) == len(StageData(dm).dataset("val").index)  # unfiltered


def test_pretraining_reads_train_inputs_only(dm):
    """Every bar a pretraining window reads is in the train segment; validation in val."""
    data = StageData(dm, inputs_only=True)
    train, val = data.dataset("train"), data.dataset("val")
    assert train.targets is None
    t = train.index[:, 0].numpy()
    assert t.max() <= dm.segments.train[1] <= dm.segments.train_end
    assert t.min() - dm.window + 1 >= 0
    v = val.index[:, 0].numpy()
    assert v.min() - dm.window + 1 > dm.segments.train_end  # the embargo: no shared bar
    assert v.max() <= dm.segments.val[1] < dm.segments.val_end
    batch = next(iter(data.train_dataloader()))
    assert isinstance(batch, torch.Tensor) and batch.shape[1:] == (dm.window, dm.n_features)


# --------------------------------------------------------------------------- running


def _factory(tmp_path: Path):
    logger = TensorBoardLogger(tmp_path, name="tb", version="")

    def make_trainer(*extra, **overrides):
        ckpt = ModelCheckpoint(
            tmp_path / "checkpoints", filename="best", monitor="val/loss", save_last=True
        )
        kw = dict(max_epochs=1, limit_train_batches=1, limit_val_batches=1, logger=logger)
        kw |= dict(num_sanity_val_steps=0, enable_progress_bar=False, log_every_n_steps=1)
        kw |= dict(enable_model_summary=False, callbacks=[ckpt, *extra])
        return L.Trainer(**(kw | overrides))

    return make_trainer


def test_stages_hand_over_their_best_weights_and_log_under_their_prefix(dm, tmp_path):
    module = _module(dm)
    cur = Curriculum(
        "grow",
        [PRE | {"window": 8}, SUP | {"name": "long"}],
        tmp_path / "checkpoints",
    )
    results = cur.run(module, dm, _factory(tmp_path))
    assert [r.name for r in results] == ["pretrain", "long"]
    assert [r.handed for r in results] == ["best", "best"]
    assert all(r.best_score is not None for r in results)
    files = {p.name for p in (tmp_path / "checkpoints").iterdir()}
    assert {"pretrain-best.ckpt", "pretrain-last.ckpt", "pretrain-backbone.pt"} <= files
    assert {"best.ckpt", "last.ckpt", "backbone.pt"} <= files  # the final stage's
    # the backbone handed to the next stage is the pretrain stage's best checkpoint
    best = torch.load(tmp_path / "checkpoints" / "pretrain-best.ckpt", weights_only=True)
    handed = torch.load(tmp_path / "checkpoints" / "pretrain-backbone.pt", weights_only=True)
    for name, value in handed.items():
        assert torch.equal(best["state_dict"][f"backbone.{name}"], value)
    final = torch.load(tmp_path / "checkpoints" / "backbone.pt", weights_only=True)
    for name, value in module.backbone.state_dict().items():
        assert torch.equal(final[name], value)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for f in glob.glob(str(tmp_path / "tb" / "events*")):
        acc = EventAccumulator(f)
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    assert {"pretrain/val/loss", "pretrain/val/masked_loss", "long/val/loss"} <= tags
    assert not any(t.startswith("val/") for t in tags)  # nothing unprefixed during the stages


def test_a_stage_cost_applies_during_the_stage_only(dm):
    module = _module(dm, loss=NegSharpe(cost_bps=5.0))
    seen = []

    class Recorder:  # the trainer a stage asks for: records the cost the loss has while fitting
        checkpoint_callback, loggers = None, []

        def fit(self, m, datamodule):
            seen.append(m.loss_fn.cost)

    build_stage(0, {**SUP, "cost_bps": 20.0}).run(module, dm, lambda *a, **k: Recorder(), True)
    assert seen == [pytest.approx(20e-4)]
    assert module.loss_fn.cost == pytest.approx(5e-4)  # evaluation uses the loss's own


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_pretrain_finetune_then_a_warm_started_run(tiny_db, tmp_path):
    common = [*TINY, "data=sqlite", f"data.path={tiny_db}", "evaluation.bootstrap=0"]
    first = tmp_path / "first"
    done = run_cli(
        ["plusultra.run", *common, "curriculum=pretrain_finetune", f"hydra.run.dir={first}"],
        tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    metrics = json.loads((first / "metrics.json").read_text())
    assert np.isfinite(metrics["pretrain_best_val_loss"])
    assert metrics["val_loss"] == pytest.approx(metrics["supervised_best_val_loss"])
    assert (first / "checkpoints" / "pretrain-backbone.pt").is_file()

    second = tmp_path / "second"
    done = run_cli(
        ["plusultra.run", *common, f"init_from={first}", f"hydra.run.dir={second}"], tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Warm start: backbone weights from" in done.stderr + done.stdout

    bad = run_cli(["plusultra.run", *common, "d_model=8", f"init_from={first}"], tmp_path)
    assert bad.returncode == 2
    assert "has shape" in bad.stderr and "in this run's backbone" in bad.stderr
