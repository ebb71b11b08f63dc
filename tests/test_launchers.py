"""Parallel and cluster launchers: joblib and submitit_local sweeps for real, DDP refused in -m."""

from __future__ import annotations

from pathlib import Path

import duckdb
import optuna
import pytest
from optuna.trial import TrialState

from plusultra.errors import ConfigError
from plusultra.lifecycle import RunDirCallback, RunDirTaken, check_no_ddp_in_multirun
from tests.conftest import TINY, compose_config, run_cli

# Two trials of the default experiment, shrunk, on the plusultra_optuna sweeper.
SWEEP = [
    "plusultra.run",
    "-m",
    "hydra/sweeper=plusultra_optuna",
    "hydra.sweeper.n_trials=2",
    "hydra.sweeper.n_jobs=2",
    "optim.lr=interval(1e-4,1e-2)",
    "evaluation.bootstrap=0",
    *TINY,
]


def check_sweep(out: Path) -> None:
    """Two complete trials in one study, one completed catalogue row each, in their own dirs."""
    (db,) = (out / "optuna").glob("*.db")
    url = f"sqlite:///{db}"
    (summary,) = optuna.get_all_study_summaries(url)
    study = optuna.load_study(study_name=summary.study_name, storage=url)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    rows = duckdb.sql(
        f'SELECT status, "optuna.study", "optuna.trial", run_dir, val_loss '
        f"FROM '{out / 'catalogue'}/*.parquet' ORDER BY \"optuna.trial\""
    ).fetchall()
    assert [(r[0], r[1], r[2]) for r in rows] == [
        ("completed", summary.study_name, 0),
        ("completed", summary.study_name, 1),
    ]
    dirs = [Path(r[3]) for r in rows]
    assert dirs[0] != dirs[1] and dirs[0].parent == dirs[1].parent  # one sweep dir, own subdirs
    assert all((d / "metrics.json").is_file() for d in dirs)
    values = {t.number: t.value for t in study.trials}
    assert [r[4] for r in rows] == pytest.approx([values[0], values[1]])  # the value it was told


@pytest.mark.parametrize(
    ("trainer", "multirun"),
    [
        ({"devices": 2, "strategy": "ddp"}, True),
        ({"devices": 2}, True),  # strategy auto picks ddp on two devices
        ({"devices": [0, 1], "accelerator": "gpu"}, True),
        ({"devices": "0,1", "strategy": "fsdp"}, True),
        ({"devices": 1, "num_nodes": 2, "strategy": "ddp"}, True),
        (
            {
                "devices": 2,
                "strategy": {"_target_": "lightning.pytorch.strategies.DDPStrategy"},
            },
            True,
        ),
    ],
)
def test_ddp_in_a_multirun_is_refused_naming_the_keys(trainer, multirun):
    with pytest.raises(ConfigError, match=r"trainer\.strategy=.*trainer\.devices=.*under -m"):
        check_no_ddp_in_multirun(trainer, multirun)


@pytest.mark.parametrize(
    ("trainer", "multirun"),
    [
        ({"devices": 2, "strategy": "ddp"}, False),  # a single run: Lightning's DDP is fine
        ({"devices": 1, "strategy": "ddp"}, True),  # one process: nothing is relaunched
        ({"devices": 1, "accelerator": "cpu"}, True),
        ({"devices": "auto", "accelerator": "cpu"}, True),  # auto on cpu is one device
        ({"devices": 2, "strategy": "ddp_spawn"}, True),  # multiprocessing: no relaunch
        (
            {
                "devices": 2,
                "strategy": {
                    "_target_": "lightning.pytorch.strategies.DDPStrategy",
                    "start_method": "spawn",
                },
            },
            True,
        ),
    ],
)
def test_single_device_or_spawned_ranks_are_allowed(trainer, multirun):
    check_no_ddp_in_multirun(trainer, multirun)


def test_ddp_multirun_is_refused_before_the_sweep_dir_exists(tmp_path):
    """The refusal comes at multirun start: no sweep dir, no study, no trial."""
    sweep_dir = tmp_path / "sweep"
    cfg = compose_config(
        ["trainer.devices=2", "+trainer.strategy=ddp", f"hydra.sweep.dir={sweep_dir}"]
    )
    with pytest.raises(RunDirTaken) as caught:
        RunDirCallback().on_multirun_start(cfg)
    assert isinstance(caught.value.error, ConfigError)
    assert "docs/sweeps.md" in str(caught.value.error)
    assert not sweep_dir.exists()
    ok = compose_config([f"hydra.sweep.dir={sweep_dir}"])  # the default trainer: one device
    RunDirCallback().on_multirun_start(ok)
    assert sweep_dir.is_dir()


def test_parallel_launcher_runs_one_worker_per_trial_of_a_batch():
    cfg = compose_config(
        ["hydra/launcher=parallel", "hydra/sweeper=plusultra_optuna", "hydra.sweeper.n_jobs=3"]
    )
    assert cfg.hydra.launcher.n_jobs == 3
    assert cfg.hydra.launcher._target_.endswith("JoblibLauncher")
    assert compose_config(["hydra/launcher=parallel"]).hydra.launcher.n_jobs == -1  # basic sweeper


@pytest.mark.slow
def test_ddp_multirun_cli_exits_2_with_one_line(tmp_path):
    proc = run_cli(
        ["plusultra.run", "-m", "trainer.devices=2", "+trainer.strategy=ddp", "seed=1,2"], tmp_path
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "relaunch the whole multirun" in proc.stderr
    assert not (tmp_path / "multiruns").exists()


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["joblib", "parallel"])
def test_joblib_sweep_runs_trials_in_parallel_processes(tiny_db, tmp_path, launcher):
    extra = ["hydra.launcher.n_jobs=2"] if launcher == "joblib" else []
    proc = run_cli(
        [*SWEEP, f"hydra/launcher={launcher}", *extra, "data=sqlite", f"data.path={tiny_db}"],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stderr
    check_sweep(tmp_path)


@pytest.mark.slow
def test_submitit_local_sweep_completes_both_trials(tiny_db, tmp_path):
    proc = run_cli(
        [
            *SWEEP,
            "hydra/launcher=submitit_local",
            "hydra.launcher.timeout_min=10",
            "data=sqlite",
            f"data.path={tiny_db}",
        ],
        tmp_path,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_sweep(tmp_path)
    (sweep_dir,) = (tmp_path / "multiruns").glob("*/*")
    assert (sweep_dir / ".submitit").is_dir()  # the jobs went through submitit
