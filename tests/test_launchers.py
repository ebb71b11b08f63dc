"""Parallel and cluster launchers: joblib and submitit_local sweeps for real, DDP refused in -m."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import duckdb
import optuna
import pytest
from optuna.trial import TrialState

from plusultra.errors import ConfigError
from plusultra.lifecycle import RunDirCallback, RunDirTaken, check_no_ddp_in_multirun
from tests.conftest import REPO, TINY, compose_config, run_cli

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
@pytest.mark.parametrize(
    ("launcher", "extra"),
    [
        pytest.param("joblib", ["hydra.launcher.n_jobs=2"], id="joblib"),
        pytest.param("parallel", [], id="parallel"),
        # fake GPU ids on a CPU run (hardware=cpu never touches CUDA): the plumbing end to end
        pytest.param(
            "joblib_gpus",
            ["hydra.launcher.gpus=[7,9]", "hydra.launcher.lock_dir={tmp}/locks"],
            id="joblib_gpus",
        ),
    ],
)
def test_joblib_sweep_runs_trials_in_parallel_processes(tiny_db, tmp_path, launcher, extra):
    proc = run_cli(
        [
            *SWEEP,
            f"hydra/launcher={launcher}",
            *(e.format(tmp=tmp_path) for e in extra),
            "data=sqlite",
            f"data.path={tiny_db}",
        ],
        tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Joblib.Parallel(n_jobs=2" in proc.stdout + proc.stderr  # Hydra logs to stdout
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


# A Hydra app that records which process ran each job and which GPUs that process could see.
GPU_APP = """
import json, os, time
from pathlib import Path
import hydra
from hydra.core.hydra_config import HydraConfig

@hydra.main(version_base="1.3", config_path=None, config_name=None)
def main(cfg):
    seen = {"pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "x": cfg.x}
    Path(HydraConfig.get().runtime.output_dir, "gpu.json").write_text(json.dumps(seen))
    time.sleep(0.5)  # long enough for both workers to take jobs
    return 0.0

if __name__ == "__main__":
    main()
"""


def run_gpu_app(tmp_path: Path, *overrides: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """Sweep the app over x=1..4 with hydra/launcher=joblib_gpus; returns each job's record."""
    app = tmp_path / "gpu_app.py"
    app.write_text(GPU_APP)
    cmd = [
        sys.executable,
        str(app),
        "-m",
        "+x=1,2,3,4",
        "hydra/launcher=joblib_gpus",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        f"hydra.launcher.lock_dir={tmp_path / 'locks'}",
        *overrides,
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    jobs = [json.loads(p.read_text()) for p in sorted((tmp_path / "sweep").glob("*/gpu.json"))]
    return proc, jobs


@pytest.mark.slow
def test_joblib_gpus_gives_each_worker_its_own_gpu(tmp_path):
    proc, jobs = run_gpu_app(tmp_path, "hydra.launcher.gpus=[7,9]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(j["x"] for j in jobs) == [1, 2, 3, 4]
    gpu_of = {}
    for job in jobs:
        assert gpu_of.setdefault(job["pid"], job["gpu"]) == job["gpu"]  # a worker keeps its GPU
    assert set(gpu_of.values()) <= {"7", "9"}
    assert len(set(gpu_of.values())) == len(gpu_of)  # two workers never share one


@pytest.mark.slow
def test_joblib_gpus_waits_for_gpus_other_sweeps_hold(tmp_path):
    (tmp_path / "locks").mkdir()
    with open(tmp_path / "locks" / "gpu-7.lock", "w") as held:  # another sweep's worker
        fcntl.flock(held, fcntl.LOCK_EX)
        proc, jobs = run_gpu_app(tmp_path, "hydra.launcher.gpus=[7,9]", "hydra.launcher.n_jobs=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [j["gpu"] for j in jobs] == ["9"] * 4


def test_joblib_gpus_refuses_more_workers_than_gpus(tmp_path):
    proc, jobs = run_gpu_app(tmp_path, "hydra.launcher.gpus=[7,9]", "hydra.launcher.n_jobs=3")
    assert proc.returncode != 0 and jobs == []
    assert "hydra.launcher.n_jobs=3 with 2 GPU(s)" in proc.stderr


def test_ray_cluster_config_joins_a_cluster_with_one_gpu_per_trial():
    pytest.importorskip("hydra_plugins.hydra_ray_launcher")  # the `ray` extra
    launcher = compose_config(["hydra/launcher=ray_cluster"]).hydra.launcher
    assert launcher._target_.endswith("RayLauncher")
    assert launcher.ray.init.address == "auto"
    assert launcher.ray.init.object_store_memory is None  # ray refuses it when joining
    assert launcher.ray.remote.num_gpus == 1
    assert "PLUSULTRA_OUTPUT_DIR" in launcher.ray.init.runtime_env.env_vars
