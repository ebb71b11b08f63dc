"""Pruning in Optuna sweeps: the sweeper's pruner, the job's per-epoch reports, pruned rows."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import optuna
import pyarrow.parquet as pq
import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from lightning.pytorch.trainer.states import TrainerFn
from omegaconf import OmegaConf
from optuna.trial import TrialState

from hydra_plugins.plusultra_optuna_sweeper.job import build_pruner, open_trial
from hydra_plugins.plusultra_optuna_sweeper.sweeper import PlusUltraOptunaSweeper
from plusultra.catalogue.callback import CatalogueCallback
from plusultra.errors import ConfigError
from plusultra.lifecycle import PRUNED_FILE, is_pruned, read_pruned
from plusultra.training.pruning import PruningCallback, pruning_callbacks
from tests.test_sweeper import only_study, run_app

THRESHOLD = {"_target_": "optuna.pruners.ThresholdPruner", "upper": 1.0}


def fake_trainer(epoch: int, fn: TrainerFn = TrainerFn.FITTING, **metrics: float):
    """What PruningCallback reads of a Trainer after a validation epoch."""
    return SimpleNamespace(
        sanity_checking=False,
        state=SimpleNamespace(fn=fn),
        current_epoch=epoch,
        global_step=10 * epoch,
        is_global_zero=True,
        callback_metrics={k.replace("_", "/", 1): torch.tensor(v) for k, v in metrics.items()},
        logger=None,
        strategy=SimpleNamespace(broadcast=lambda obj, src=0: obj),
        datamodule="dm",
    )


def no_backtest(module, datamodule):
    raise AssertionError("val_loss is logged per epoch: no backtest needed")


# ------------------------------------------------------------------------------- sweeper side


def test_pruner_config():
    assert isinstance(build_pruner(None), optuna.pruners.NopPruner)  # null: never prunes
    median = {"_target_": "optuna.pruners.MedianPruner", "n_startup_trials": 2, "n_warmup_steps": 1}
    pruner = build_pruner(median)
    assert isinstance(pruner, optuna.pruners.MedianPruner) and pruner._n_warmup_steps == 1
    with pytest.raises(ValueError, match="hydra.sweeper.pruner"):
        build_pruner({"_target_": "optuna.samplers.RandomSampler"})
    with pytest.raises(ValueError, match="single-objective"):
        directions = ["maximize", "minimize"]
        PlusUltraOptunaSweeper(
            None, directions, None, ".", None, 1, 1, 0.0, None, None, None, pruner=median
        )


def test_sweeper_tells_pruned_counts_it_and_goes_on(tmp_path):
    """x=0 reports 4+y+2, 4+y+1 (> 3.5 at epoch 1: pruned); x=2 reports y+2, y+1, y (complete)."""
    run_app(
        tmp_path,
        "hydra.sweeper.n_trials=4",
        "hydra.sweeper.n_jobs=4",
        "x=choice(0.0, 2.0)",
        "epochs=3",
        "hydra.sweeper.sampler={_target_: optuna.samplers.RandomSampler, seed: 1}",
        "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, upper: 3.5, "
        "n_warmup_steps: 1}",
    )  # exit 0 with max_failure_rate=0: a pruned trial is no failure
    trials = only_study(tmp_path).trials
    assert len(trials) == 4  # pruned trials count toward n_trials
    states = {t.state for t in trials}
    assert states == {TrialState.PRUNED, TrialState.COMPLETE}, [t.params for t in trials]
    for t in trials:
        v = (t.params["x"] - 2) ** 2 + t.params["y"]
        if t.params["x"] == 0.0:
            assert t.state == TrialState.PRUNED
            assert t.intermediate_values == {0: v + 2, 1: v + 1}
            assert t.value == v + 1  # Optuna keeps the last reported value
        else:
            assert t.state == TrialState.COMPLETE and t.value == v
            assert t.intermediate_values == {0: v + 2, 1: v + 1, 2: v}


def test_open_trial_refuses_a_finished_or_unknown_trial(tmp_path):
    sweeper = {"storage": None, "storage_dir": str(tmp_path), "pruner": THRESHOLD}
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=url)
    running, done = study.ask(), study.ask()
    study.tell(done, 1.0)
    trial = open_trial(sweeper, "s", running.number)
    assert isinstance(trial.study.pruner, optuna.pruners.ThresholdPruner)
    trial.report(0.5, 0)
    assert study.trials[running.number].intermediate_values == {0: 0.5}  # in the storage
    with pytest.raises(ValueError, match="COMPLETE, not RUNNING"):
        open_trial(sweeper, "s", done.number)
    with pytest.raises(ValueError, match="optuna.trial=7 is not a trial"):
        open_trial(sweeper, "s", 7)
    with pytest.raises(ConfigError, match="hydra.sweeper.pruner is set but optuna.study='t'"):
        pruning_callbacks("t", 0, sweeper, "val_loss", tmp_path, None, no_backtest)


# ----------------------------------------------------------------------------------- job side


def test_outside_a_pruned_sweep_nothing_is_wired(tmp_path):
    assert pruning_callbacks(None, None, {}, "val_loss", tmp_path, None, no_backtest) == []
    no_pruner = {"storage": None, "storage_dir": str(tmp_path), "pruner": None}
    assert pruning_callbacks("s", 0, no_pruner, "val_loss", tmp_path, None, no_backtest) == []
    basic = {"_target_": "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"}
    assert pruning_callbacks("s", 0, basic, "val_loss", tmp_path, None, no_backtest) == []
    assert not list(tmp_path.iterdir())  # no storage opened


def test_callback_reports_each_epoch_and_prunes(tmp_path):
    study = optuna.create_study(pruner=optuna.pruners.ThresholdPruner(upper=1.0))
    trial = study.ask()
    cb = PruningCallback(trial, "val_loss", tmp_path, no_backtest)
    cb.on_fit_start(None, None)
    cb.on_validation_end(fake_trainer(0, val_loss=0.5), None)
    # a post-fit trainer.validate reports nothing (it could prune a finished trial)
    cb.on_validation_end(fake_trainer(0, TrainerFn.VALIDATING, val_loss=9.0), None)
    cb.on_fit_start(None, None)  # a second curriculum stage continues the epoch count
    with pytest.raises(optuna.TrialPruned, match="pruned at epoch 1: val_loss=2"):
        cb.on_validation_end(fake_trainer(0, val_loss=2.0), None)
    assert study.trials[0].intermediate_values == {0: 0.5, 1: 2.0}
    record = json.loads((tmp_path / PRUNED_FILE).read_text())
    assert record["status"] == "pruned" and record["metric"] == "val_loss"
    assert read_pruned(tmp_path) == {"pruned_value": 2.0, "pruned_epoch": 1}
    assert study.tell(trial, state=TrialState.PRUNED).value == 2.0


def test_backtest_metrics_are_computed_per_epoch(tmp_path):
    """val_sharpe is not logged by the module: it comes from the validation backtest."""
    calls = []

    def backtest(module, datamodule):
        calls.append((module, datamodule))
        return {"val_sharpe": 0.5 * len(calls) - 1, "val_information_ratio_benchmark": "cash"}

    study = optuna.create_study(direction="maximize", pruner=optuna.pruners.NopPruner())
    cb = PruningCallback(study.ask(), "val_sharpe", tmp_path, backtest)
    for epoch in range(3):
        cb.on_validation_end(fake_trainer(epoch, val_loss=1.0), "module")
    assert study.trials[0].intermediate_values == {0: -0.5, 1: 0.0, 2: 0.5}
    assert calls == [("module", "dm")] * 3 and not (tmp_path / PRUNED_FILE).exists()
    label = "val_information_ratio_benchmark"
    for metric, match in (("val_nope", "no per-epoch validation value"), (label, "label")):
        cb = PruningCallback(study.ask(), metric, tmp_path, backtest)
        with pytest.raises(ConfigError, match=f"optimized_metric='{metric}'.*{match}") as err:
            cb.on_validation_end(fake_trainer(0, val_loss=1.0), "module")
        assert "hydra.sweeper.pruner" in str(err.value)


def test_catalogue_row_of_a_pruned_job(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / PRUNED_FILE).write_text(json.dumps({"pruned_value": 1.5, "pruned_epoch": 2}))
    config = OmegaConf.create(
        {
            "hydra": {
                "mode": "MULTIRUN",
                "runtime": {"output_dir": str(out), "cwd": str(tmp_path), "choices": {}},
                "overrides": {"task": ["++optuna.trial=4"]},
                "job": {"num": 4},
            },
            "optuna": {"study": "s", "trial": 4},
        }
    )
    exc = optuna.TrialPruned("pruned at epoch 2")
    assert is_pruned(exc) and not is_pruned(RuntimeError("x"))
    cb = CatalogueCallback("cat")
    cb.on_job_start(config)
    run_id = (out / "run_id.txt").read_text().strip()
    cb.on_job_end(config, JobReturn(status=JobStatus.FAILED, _return_value=exc))
    row = pq.read_table(tmp_path / "cat" / f"{run_id}.parquet").to_pylist()[0]
    assert (row["status"], row["error"]) == ("pruned", None)
    assert (row["pruned_value"], row["pruned_epoch"]) == (1.5, 2)
    assert (row["optuna.study"], row["optuna.trial"]) == ("s", 4)


# --------------------------------------------------------------------------- real plusultra -m


@pytest.mark.slow
def test_real_sweep_prunes_on_val_sharpe_and_records_it(tmp_path):
    """Two trials: 3 epochs (pruned after epoch 1, the sweep goes on) and 1 epoch (complete)."""
    from tests.conftest import REPO, TINY

    env = {**os.environ, "PLUSULTRA_OUTPUT_DIR": str(tmp_path), "PYTHONPATH": str(REPO / "src")}
    cmd = [
        sys.executable, "-m", "plusultra.run", "-m",
        "hydra/sweeper=plusultra_optuna",
        "hydra.sweeper.n_trials=2",
        "hydra.sweeper.n_jobs=1",
        "hydra.sweeper.direction=maximize",
        # both values, one each (brute force never repeats a point)
        "hydra.sweeper.sampler={_target_: optuna.samplers.BruteForceSampler, seed: 0}",
        # every value is below lower: each trial past its first epoch is pruned
        "hydra.sweeper.pruner={_target_: optuna.pruners.ThresholdPruner, lower: 1e9, "
        "n_warmup_steps: 1}",
        "trainer.max_epochs=choice(1, 3)",
        "optimized_metric=val_sharpe",
        *[a for a in TINY if not a.startswith("trainer.max_epochs=")],
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]  # a pruned trial is no error
    (db,) = (tmp_path / "optuna").glob("*.db")
    (summary,) = optuna.get_all_study_summaries(f"sqlite:///{db}")
    trials = optuna.load_study(study_name=summary.study_name, storage=f"sqlite:///{db}").trials
    by_epochs = {t.params["trainer.max_epochs"]: t for t in trials}
    assert sorted(by_epochs) == [1, 3]
    rows = {}
    for f in (tmp_path / "catalogue").glob("*.parquet"):
        row = pq.read_table(f).to_pylist()[0]
        rows[row["optuna.trial"]] = row

    done = by_epochs[1]  # one epoch: the reported value IS the run's final objective
    assert done.state == TrialState.COMPLETE and list(done.intermediate_values) == [0]
    metrics = json.loads((Path(rows[done.number]["run_dir"]) / "metrics.json").read_text())
    assert done.intermediate_values[0] == pytest.approx(metrics["val_sharpe"], rel=1e-9)
    assert done.value == metrics["val_sharpe"] and rows[done.number]["status"] == "completed"

    pruned = by_epochs[3]
    assert pruned.state == TrialState.PRUNED and list(pruned.intermediate_values) == [0, 1]
    assert pruned.value == pruned.intermediate_values[1] and math.isfinite(pruned.value)
    row = rows[pruned.number]
    assert (row["status"], row["pruned_epoch"], row["error"]) == ("pruned", 1, None)
    assert row["pruned_value"] == pytest.approx(pruned.value)
    run_dir = Path(row["run_dir"])
    assert (run_dir / PRUNED_FILE).is_file() and not (run_dir / "metrics.json").exists()
    assert (row["optuna.study"], row["optimized_metric"]) == (summary.study_name, "val_sharpe")
