"""TensorBoard HParams: every run logs its hyperparameters and final metrics; read back here."""

from __future__ import annotations

import math
from pathlib import Path

import yaml
from omegaconf import OmegaConf, open_dict

from plusultra.training.hparams import GROUPS, hyperparameters
from tests.test_run import run_in_process


def _tiny(tiny_db, tmp_path, *extra):
    from tests.conftest import TINY, compose_config

    cfg = compose_config([*TINY, "data=sqlite", f"data.path={tiny_db}", *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    (tmp_path / "run").mkdir(parents=True)
    return cfg


def _session(logdir: Path):
    """(hparams, metric names, scalars) of the HParams session in ``logdir``'s event file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    events = EventAccumulator(str(logdir))
    events.Reload()
    content = events.PluginTagToContent("hparams")
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(b) for tag, b in content.items()}
    start = data["_hparams_/session_start_info"].session_start_info
    values = {}
    for name, value in start.hparams.items():
        kind = value.WhichOneof("kind")
        values[name] = getattr(value, kind)
    experiment = data["_hparams_/experiment"].experiment
    metric_names = [m.name.tag for m in experiment.metric_infos]
    scalars = {tag: events.Scalars(tag)[-1].value for tag in events.Tags()["scalars"]}
    return values, metric_names, scalars


def test_hyperparameters_are_choices_curated_keys_and_swept_overrides():
    cfg = OmegaConf.create(
        {
            "seed": 3,
            "depth": 2,
            "window": 16,
            "optimized_metric": "val_sharpe",
            "optim": {"lr": 0.01, "betas": [0.9, 0.95]},
            "backbone": {"dropout": 0.1, "kernel_size": 5, "dilations": [1, 2]},
            "simulator": {"execution": None},
            "trainer": {"max_epochs": 2},
        }
    )
    choices = {"backbone": "tcn", "loss": "mse", "experiment": None, "hydra/launcher": "basic"}
    overrides = ["backbone=tcn", "backbone.kernel_size=5", "+backbone.dilations=[1,2]", "seed=3"]
    params = hyperparameters(cfg, choices, overrides)
    assert params == {
        "backbone": "tcn",
        "loss": "mse",
        "seed": 3,
        "depth": 2,
        "window": 16,
        "optimized_metric": "val_sharpe",
        "optim.lr": 0.01,
        "trainer.max_epochs": 2,
        "backbone.dropout": 0.1,
        "backbone.kernel_size": 5,  # swept on the command line, not a curated key
    }  # no lists (betas, dilations), no nulls (experiment, simulator.execution), no hydra/*


def test_a_run_logs_its_hparams_session_and_final_metrics(tiny_db, tmp_path):
    cfg = _tiny(tiny_db, tmp_path, "backbone=tcn", "backbone.dropout=0.1", "seed=4")
    _, run_dir = run_in_process(cfg)
    values, metric_names, scalars = _session(run_dir / "tensorboard")
    choices = cfg.hydra.runtime.choices
    for group in GROUPS:
        if choices.get(group) is not None:
            assert values[group] == choices[group], group
    assert values["backbone"] == "tcn" and values["data"] == "sqlite"
    assert values["seed"] == 4 and values["d_model"] == 16 and values["window"] == 16
    assert math.isclose(values["backbone.dropout"], 0.1)
    assert values["data.batch_size"] == 64 and values["trainer.max_epochs"] == 1
    assert math.isclose(values["optim.lr"], cfg.optim.lr)
    assert values["optimized_metric"] == "val_loss"

    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert {"summary/val_loss", "summary/val_sharpe", "summary/test_sharpe"} <= set(metric_names)
    assert "summary/test_max_drawdown" in metric_names
    for tag in metric_names:  # each named metric exists as a scalar with the run's final value
        expected = metrics[tag.removeprefix("summary/")]
        assert math.isclose(scalars[tag], expected, rel_tol=1e-6, abs_tol=1e-7) or (
            math.isnan(expected) and math.isnan(scalars[tag])
        ), tag
    assert "summary/test_n_periods" in scalars  # the other numbers stay plain scalars
    saved = yaml.safe_load((run_dir / "tensorboard" / "hparams.yaml").read_text())
    assert saved["backbone"] == "tcn" and saved["seed"] == 4
