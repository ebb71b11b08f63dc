"""hardware=ddp: only rank zero writes; workers train and exit; rank zero evaluates alone.

The fast tests cover the rank helper and the guards with a monkeypatched environment; the slow
one runs the real CLI on two CPU processes (gloo) with an audit hook in the worker that records
every file it creates, opens for writing, renames or removes under the output directory.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch
from hydra.core.utils import JobReturn, JobStatus
from hydra.utils import instantiate
from lightning.fabric.strategies.launchers.subprocess_script import _ChildProcessObserver
from lightning.pytorch.strategies import DDPStrategy
from omegaconf import OmegaConf

from plusultra import distributed
from plusultra.catalogue.callback import CatalogueCallback
from plusultra.cli.predict import predict
from plusultra.distributed import check_sharding, finish_training, global_rank, is_rank_zero
from plusultra.errors import ConfigError
from plusultra.lifecycle import check_no_ddp_in_multirun
from plusultra.training.diagnostics_grads import GradientDiagnostics
from tests.conftest import TINY, compose_config, run_cli

RANK_KEYS = ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK", "LOCAL_WORLD_SIZE", "SLURM_PROCID")


@pytest.fixture
def clean_env(monkeypatch):
    for key in RANK_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


@pytest.mark.parametrize(
    ("env", "rank"),
    [
        ({}, 0),  # no launcher: the only process
        ({"LOCAL_RANK": "0"}, 0),  # Lightning's rank 0 after it launched the workers
        ({"LOCAL_RANK": "1"}, 1),  # a worker Lightning relaunched
        ({"LOCAL_RANK": "0", "NODE_RANK": "1", "LOCAL_WORLD_SIZE": "2"}, 2),  # node 1's first
        ({"RANK": "3", "LOCAL_RANK": "0"}, 3),  # torchrun: RANK wins
        ({"SLURM_PROCID": "1"}, 1),
    ],
)
def test_global_rank_reads_the_launchers_environment(clean_env, env, rank):
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert global_rank() == rank
    assert is_rank_zero() is (rank == 0)


def fake_hydra_config(out: Path, cwd: Path):
    return OmegaConf.create(
        {
            "hydra": {
                "mode": "RUN",
                "runtime": {"output_dir": str(out), "cwd": str(cwd), "choices": {}},
                "overrides": {"task": []},
                "job": {"num": "???"},
            },
            "seed": 1,
        }
    )


def test_catalogue_callback_writes_nothing_on_a_worker_rank(clean_env, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    config = fake_hydra_config(out, tmp_path)
    done = JobReturn(status=JobStatus.COMPLETED, _return_value=1.0)
    clean_env.setenv("LOCAL_RANK", "1")
    worker = CatalogueCallback("cat")
    worker.on_job_start(config, task_function=None)
    worker.on_job_end(config, done)
    assert list(out.iterdir()) == [] and not (tmp_path / "cat").exists()
    clean_env.setenv("LOCAL_RANK", "0")  # the same calls on rank zero write both
    zero = CatalogueCallback("cat")
    zero.on_job_start(config, task_function=None)
    zero.on_job_end(config, done)
    run_id = (out / "run_id.txt").read_text().strip()
    assert [p.stem for p in (tmp_path / "cat").glob("*.parquet")] == [run_id]


def _trainer(**kwargs) -> L.Trainer:
    return L.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, **kwargs)


def test_portfolio_batches_are_refused_under_ddp():
    ddp = _trainer(devices=2, strategy="ddp")  # built, not fitted: no process is started
    assert ddp.world_size == 2
    with pytest.raises(ConfigError, match=r"data\.block=5 .*2 DDP processes.*trainer\.devices=1"):
        check_sharding(ddp, 5)
    assert check_sharding(ddp, None) is ddp  # pooled batches: Lightning shards them
    one = _trainer(devices=1)
    assert check_sharding(one, 5) is one


def test_ddp_trainers_lose_the_broadcast_of_lightnings_sigterm_handler(monkeypatch):
    monkeypatch.setattr(distributed, "_LAUNCHERS", [])
    calls = []
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 0)
    monkeypatch.setattr(torch.distributed, "broadcast", lambda *a, **k: calls.append(a))
    ddp = distributed.prepare(_trainer(devices=2, strategy="ddp"))
    connector = ddp._signal_connector
    type(connector)._sigterm_notifier_fn(connector, signal.SIGTERM, None)  # Lightning's own
    assert len(calls) == 1  # the collective inside a signal handler
    connector.received_sigterm, calls[:] = False, []
    connector._sigterm_notifier_fn(signal.SIGTERM, None)  # what fit registers after prepare
    assert ddp.received_sigterm and calls == []
    assert distributed.workers() == [] and ddp.strategy.launcher in distributed._LAUNCHERS
    one = distributed.prepare(_trainer(devices=1))
    assert "_sigterm_notifier_fn" not in vars(one._signal_connector)  # untouched


def test_rank_zero_evaluates_on_one_device_of_its_own():
    solo = distributed.single_device(_trainer(devices=2, strategy="ddp"))
    assert solo == {"strategy": "auto", "devices": 1, "num_nodes": 1}  # CPU
    cuda = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 3)))
    assert distributed.single_device(cuda)["devices"] == [3]  # the GPU rank 0 trained on


def test_finish_training_is_a_no_op_in_one_process():
    assert finish_training([_trainer(devices=1), _trainer(devices=1)]) is True
    assert finish_training([]) is True


def test_a_failing_rank_zero_stops_its_workers_and_survives_the_observer(monkeypatch):
    """stop_workers kills the workers; Lightning's observer, which SIGKILLs the main process
    when a worker dies, then sees none (here it watches a stand-in for the main process)."""
    monkeypatch.setattr(distributed, "_LAUNCHERS", [])
    sleep = [sys.executable, "-c", "import time; time.sleep(60)"]
    main, worker = subprocess.Popen(sleep), subprocess.Popen(sleep)
    try:
        launcher = SimpleNamespace(procs=[worker])
        observer = _ChildProcessObserver(main.pid, launcher.procs, sleep_period=0.05)
        observer.start()
        trainer = SimpleNamespace(strategy=SimpleNamespace(launcher=launcher), world_size=1)
        distributed.prepare(trainer)
        assert distributed.workers() == [worker]
        assert distributed.stop_workers() == 1 and worker.returncode is not None
        observer.join(timeout=5)
        assert not observer.is_alive()
        with pytest.raises(subprocess.TimeoutExpired):  # the main process lives on
            main.wait(timeout=0.5)
        assert distributed.stop_workers() == 0 and distributed.workers() == []
    finally:
        for proc in (main, worker):
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("world", [1, 2])
def test_noise_scale_counts_the_samples_of_every_rank(world):
    """Under DDP a step's gradient averages every rank's batch: B_simple's batch is world x B."""
    grads = GradientDiagnostics()
    trainer = SimpleNamespace(global_step=0, world_size=world)
    batch = (torch.zeros(8, 16, 3), torch.zeros(8, 2))
    grads.on_train_batch_start(trainer, None, batch, 0)
    assert grads._samples == 8 * world


def test_ddp_config_and_its_multirun_refusal():
    cfg = compose_config(["hardware=ddp"])
    assert (cfg.trainer.strategy, cfg.trainer.devices) == ("ddp", -1)
    assert (cfg.trainer.accelerator, cfg.trainer.precision) == ("gpu", "bf16-mixed")  # rtx4090
    cpu = compose_config(["hardware=ddp", "trainer.accelerator=cpu", "trainer.devices=2"])
    node = OmegaConf.to_container(cpu.trainer)
    check_no_ddp_in_multirun(node, multirun=False)
    with pytest.raises(ConfigError, match="relaunch the whole multirun"):
        check_no_ddp_in_multirun(node, multirun=True)
    node = {k: v for k, v in node.items() if k != "default_root_dir"}  # ${hydra:...}
    trainer = instantiate({**node, "logger": False, "precision": "32-true"})
    assert isinstance(trainer.strategy, DDPStrategy) and trainer.world_size == 2
    assert trainer.strategy._get_process_group_backend() == "gloo"  # NCCL on GPUs


# ----------------------------------------------------------------------------- slow: real CLI

AUDIT = """
import os, sys

if os.environ.get("LOCAL_RANK", "0") != "0":  # a worker rank Lightning started
    _root = os.path.realpath(os.environ["DDP_AUDIT_ROOT"])
    _log = os.environ["DDP_AUDIT_LOG"]
    _busy = []
    _WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    _PATHS = {"os.mkdir": 0, "os.remove": 0, "os.rmdir": 0, "os.rename": 1, "os.truncate": 0,
              "os.symlink": 1, "os.link": 1, "shutil.rmtree": 0, "shutil.move": 1}

    def _write(line):
        _busy.append(1)
        try:
            with open(_log, "a") as f:
                f.write(line + "\\n")
        finally:
            _busy.pop()

    def _hook(event, args):
        if _busy:
            return
        if event == "open":
            path, mode, flags = args
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool(
                isinstance(flags, int) and flags & _WRITE)
            if not writes:
                return
        elif event in _PATHS:
            path = args[_PATHS[event]]
            if event == "os.mkdir" and os.path.isdir(os.fsdecode(path)):
                return  # mkdir(exist_ok=True) of a directory rank 0 made: creates nothing
        else:
            return
        if isinstance(path, (str, bytes, os.PathLike)):
            full = os.path.realpath(os.fsdecode(path))
            if full == _root or full.startswith(_root + os.sep):
                _write(f"{event} {full}")

    _write(f"audit active in pid {os.getpid()} LOCAL_RANK={os.environ['LOCAL_RANK']}")
    sys.addaudithook(_hook)
"""

CPU_DDP = [
    "hardware=ddp",
    "trainer.accelerator=cpu",
    "trainer.devices=2",
    "trainer.precision=32-true",
    "compile=false",
    "data.num_workers=0",
    "data.pin_memory=false",
]
REQUIRED = [
    "config.yaml",
    "data.json",
    "normalisation.json",
    "metrics.json",
    "predictions.parquet",
    "backtest.parquet",
    "val_backtest.parquet",
    "walk_forward.parquet",
    "report.html",
    "report.md",
    "run_id.txt",
    "run.log",
    ".hydra/config.yaml",
    "checkpoints/best.ckpt",
    "checkpoints/last.ckpt",
    "checkpoints/backbone.pt",
    "diagnostics/gradients.parquet",
]


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_writes_once_from_rank_zero(tiny_db, tmp_path, monkeypatch):
    out = tmp_path / "outputs"
    audit_dir = tmp_path / "audit"
    audit_dir.mkdir()
    (audit_dir / "sitecustomize.py").write_text(textwrap.dedent(AUDIT))
    log = tmp_path / "worker_writes.log"
    path = os.pathsep.join([str(audit_dir), *filter(None, [os.environ.get("PYTHONPATH")])])
    monkeypatch.setenv("PYTHONPATH", path)  # the worker inherits it from rank 0
    monkeypatch.setenv("DDP_AUDIT_ROOT", str(out))
    monkeypatch.setenv("DDP_AUDIT_LOG", str(log))
    for key in RANK_KEYS:
        monkeypatch.delenv(key, raising=False)
    args = [*TINY, "evaluation.bootstrap=0", "data=sqlite", f"data.path={tiny_db}", *CPU_DDP]
    proc = run_cli(["plusultra.run", *args], out, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    runs = [p for p in (out / "runs").glob("*/*") if p.is_dir()]
    assert len(runs) == 1, runs
    run_dir = runs[0]
    assert sorted(p.name for p in out.iterdir()) == ["catalogue", "runs"]
    for name in REQUIRED:
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    names = [p.name for p in run_dir.rglob("*")]
    assert not [n for n in names if "ddp_process" in n or n.endswith(".tmp")], names
    assert "DDP training done on 2 processes" in (run_dir / "run.log").read_text()

    # the worker ran under the audit hook and wrote nothing under the output directory
    lines = log.read_text().splitlines()
    assert len(lines) >= 1 and lines[0].startswith("audit active") and "LOCAL_RANK=1" in lines[0]
    assert lines[1:] == [], lines[1:20]

    rows = list((out / "catalogue").glob("*.parquet"))
    assert len(rows) == 1, rows
    row = pq.read_table(rows[0]).to_pylist()[0]
    assert row["status"] == "completed" and row["error"] is None
    assert row["run_id"] == (run_dir / "run_id.txt").read_text().strip()
    assert Path(row["run_dir"]) == run_dir
    assert row["trainer.strategy"] == "ddp" and row["trainer.devices"] == 2

    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("val_loss", "test_loss", "val_naive_loss", "test_sharpe", "val_sharpe"):
        assert np.isfinite(metrics[key]), key
    assert metrics["val_loss"] == pytest.approx(row["val_loss"])
    assert metrics["n_params"] > 0 and metrics["test_max_drawdown"] <= 0

    # rank zero's evaluation is a one-process evaluation of the saved weights: plusultra-predict
    # (one process, best.ckpt) gives the same test predictions and positions
    full = pd.read_parquet(predict(run_dir, str(tiny_db), tmp_path / "p.parquet", 256, None,
                                   None, progress=False))  # fmt: skip
    ours = pd.read_parquet(run_dir / "predictions.parquet")
    merged = ours.merge(full, on=["symbol", "timestamp"], suffixes=("", "_cli"))
    assert len(merged) == len(ours) > 0
    np.testing.assert_allclose(merged["pred_1"], merged["pred_1_cli"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(merged["position"], merged["position_cli"], atol=1e-9)
