"""Exact resume: resumable samplers, RNG round trip, checkpoint contents and compatibility,
in-process resume exactness, CPU determinism, and (slow) a SIGKILLed CLI run resumed."""

from __future__ import annotations

import glob
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import open_dict

from plusultra.data.datasets.sampler import BlockBatchSampler, EpochSampler, ResumableLoader
from plusultra.errors import ConfigError
from plusultra.lifecycle import Interrupted, RunDirCallback, RunDirTaken, handle_signals
from plusultra.models.backbones.hybrid import HybridBackbone
from plusultra.models.heads import RegressionHead
from plusultra.models.module import ForecastModule, OptimSettings
from plusultra.run import train
from plusultra.training.resume import ResumeCheckpoint, rng_state, set_rng_state
from plusultra.training.resume_config import (
    RUNTIME,
    check_compatible,
    check_shapes,
    find_resumable_run,
    flat_config,
    mismatches,
)
from plusultra.training.resume_plan import Resumer
from tests.conftest import REPO, TINY, compose_config, run_cli

# --------------------------------------------------------------------------- samplers


def _batches(loader) -> list[list[int]]:
    out = []
    for batch in loader:
        out.append(batch.tolist() if isinstance(batch, torch.Tensor) else list(batch))
    return out


def _reference_epoch(n: int, seed: int, epoch: int) -> list[int]:
    """Naive reference: the epoch's permutation drawn element by element (Fisher-Yates is
    what numpy does; here we only rely on it being a fixed function of (seed, epoch))."""
    return [int(i) for i in np.random.default_rng((seed, epoch)).permutation(n)]


def test_epoch_sampler_orders_depend_only_on_seed_and_epoch():
    a = EpochSampler(50, shuffle=True, seed=7)
    torch.manual_seed(123)  # the global RNG's history does not matter
    first, second = list(a), list(a)
    assert first == _reference_epoch(50, 7, 0) and second == _reference_epoch(50, 7, 1)
    assert sorted(first) == list(range(50)) and first != second
    b = EpochSampler(50, shuffle=True, seed=7)
    b.set_epoch(1)
    assert list(b) == second
    assert list(EpochSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("block", [False, True])
def test_resumable_loader_continues_an_epoch_where_it_stopped(block):
    n, bs = 37, 4
    data = torch.arange(n)
    dates = np.repeat(np.arange(n // 2 + 1), 2)[:n]

    def loader():
        if block:
            return ResumableLoader(data, batch_sampler=BlockBatchSampler(dates, 2, True, seed=3))
        return ResumableLoader(data, sampler=EpochSampler(n, True, seed=3), batch_size=bs)

    full = loader()
    assert "epoch" not in full.state_dict()  # no position marked: nothing to restore but the seed
    reference = [_batches(full) for _ in range(3)]  # three uninterrupted epochs
    for epoch in range(3):
        for stop in range(len(reference[epoch]) + 1):
            first = loader()
            first.mark(epoch, stop)  # what the training loop consumed before the kill
            state = first.state_dict()
            resumed = loader()
            resumed.load_state_dict(state)
            got = _batches(resumed)
            assert got == reference[epoch][stop:]
            assert _batches(resumed) == reference[epoch + 1] if epoch < 2 else True
            assert sorted(x for b in reference[epoch] for x in b) == list(range(n))


# --------------------------------------------------------------------------- RNG


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    np.random.normal()  # a cached gaussian in numpy's state
    state = rng_state()
    torch.save({"rng": state}, tmp_path / "s.pt")
    expected = (random.random(), np.random.normal(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_state(torch.load(tmp_path / "s.pt", weights_only=True)["rng"])
    got = (random.random(), np.random.normal(), torch.rand(3))
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2])


# --------------------------------------------------------------------------- config checks


def test_incompatible_config_is_refused_naming_each_key_with_both_values():
    saved = flat_config(compose_config(["window=64", "d_model=32"]))
    current = flat_config(compose_config(["window=32", "d_model=32", "trainer.max_epochs=9"]))
    with pytest.raises(ConfigError) as err:
        check_compatible(saved, current, "ck.ckpt")
    msg = str(err.value)
    assert "incompatible checkpoint ck.ckpt: " in msg
    assert "window: 64 (checkpoint) vs 32 (this run)" in msg
    assert "max_epochs" not in msg.split("(keys that may differ")[0]  # allowed to differ
    # paths of the run itself are never compared; hardware / workers / display may differ
    assert current["callbacks.model_checkpoint.dirpath"] == RUNTIME
    other = compose_config(["data.num_workers=3", "print_summary=false", "resume=true"])
    assert mismatches(flat_config(compose_config()), flat_config(other)) == []


def test_a_state_dict_of_another_shape_is_refused_naming_the_parameter():
    a, b = torch.nn.Linear(4, 3), torch.nn.Linear(5, 3)
    with pytest.raises(ConfigError, match=r"parameter weight has shape \(3, 5\) in the checkpoint"):
        check_shapes(b.state_dict(), a, "x.ckpt")
    check_shapes(a.state_dict(), a, "x.ckpt")


def test_resume_without_a_candidate_run_exits_2_with_a_clear_message(tmp_path, monkeypatch, capsys):
    with pytest.raises(ConfigError, match="resume=true: no run under"):
        find_resumable_run(tmp_path, flat_config(compose_config()))
    from hydra.core.global_hydra import GlobalHydra

    from plusultra.run import main

    GlobalHydra.instance().clear()
    monkeypatch.setenv("PLUSULTRA_OUTPUT_DIR", str(tmp_path))
    monkeypatch.setattr(sys, "argv", ["plusultra", *TINY, "resume=true"])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    assert "plusultra: error: resume=true: no run under" in capsys.readouterr().err
    assert not list(tmp_path.glob("runs/*/*"))  # no run dir was created


def test_resume_is_refused_in_a_multirun():
    with pytest.raises(RunDirTaken, match="resume=true continues one killed run"):
        RunDirCallback().on_multirun_start(compose_config(["resume=true"]))


# --------------------------------------------------------------------------- in-process resume


class Kill(Exception):
    """Stands in for SIGKILL: training stops after a given step, nothing else runs."""


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if trainer.global_step == self.step:
            raise Kill


@pytest.fixture(scope="module")
def dm(tiny_db):
    cfg = compose_config([*TINY, "data=sqlite", f"data.path={tiny_db}", "data.batch_size=32"])
    data = instantiate(cfg.data, features=instantiate(cfg.features, _convert_="all"))
    data.setup()
    return data


def _module(dm) -> ForecastModule:
    torch.manual_seed(0)
    net = HybridBackbone(dm.n_features, 16, 1, 2, max_len=dm.window, ssm_state=4, dropout=0.1)
    return ForecastModule(net, RegressionHead(16, dm.horizon), torch.nn.MSELoss(), OptimSettings())


SHORT = {"limit_train_batches": 4, "limit_val_batches": 1}  # the fast tests' fits


def _trainer(tmp: Path, *extra, **kw) -> L.Trainer:
    callbacks = [
        ModelCheckpoint(dirpath=tmp, filename="best", monitor="val/loss", save_last=True),
        ResumeCheckpoint(str(tmp), every_n_train_steps=2),
        *extra,
    ]
    kw = {"limit_train_batches": 7, "limit_val_batches": 2} | kw
    return L.Trainer(
        num_sanity_val_steps=0,
        logger=False, enable_progress_bar=False, enable_model_summary=False,
        callbacks=callbacks, accelerator="cpu", **kw,
    )  # fmt: skip


# step checkpoints every 2 steps. Killed after step 3 of one 4-step epoch: resumes from step 2
# (mid-epoch); after steps 8 / 11 of two 7-step epochs: from the epoch-end last.ckpt of step 7 /
# from step 10 (mid epoch 1).
@pytest.mark.parametrize(
    ("epochs", "kill_at", "saved"),
    [
        (1, 3, 2),
        pytest.param(2, 8, 7, marks=pytest.mark.slow),
        pytest.param(2, 11, 10, marks=pytest.mark.slow),
    ],
)
def test_a_resumed_fit_equals_an_uninterrupted_one_exactly(dm, tmp_path, epochs, kill_at, saved):
    size = {"max_epochs": epochs} | ({} if epochs > 1 else SHORT)
    L.seed_everything(5, verbose=False)
    whole = _module(dm)
    _trainer(tmp_path / "a", **size).fit(whole, datamodule=dm)

    L.seed_everything(5, verbose=False)
    killed = _module(dm)
    with pytest.raises(Kill):
        _trainer(tmp_path / "b", KillAt(kill_at), **size).fit(killed, datamodule=dm)
    ckpts = [tmp_path / "b" / n for n in ("resume.ckpt", "last.ckpt")]
    steps = {p: torch.load(p, weights_only=True)["global_step"] for p in ckpts if p.exists()}
    newest = max(steps, key=steps.get)
    assert steps[newest] == saved

    torch.manual_seed(999)  # whatever the RNGs hold now, the checkpoint's states come back
    resumed = _module(dm)
    trainer = _trainer(tmp_path / "b", **size)
    trainer.fit(resumed, datamodule=dm, ckpt_path=newest, weights_only=True)
    expected, got = whole.state_dict(), resumed.state_dict()
    assert expected.keys() == got.keys()
    for name, value in expected.items():
        assert torch.equal(value, got[name]), name
    for path in (tmp_path / "b").glob("*.ckpt"):  # every checkpoint: plain tensors and lists
        assert "plusultra" in torch.load(path, weights_only=True)


class SigtermInStep(L.Callback):
    """Sends this process SIGTERM inside the optimiser step of step `step` (1-based)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if trainer.global_step == self.step - 1:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_inside_a_step_is_held_checkpointed_and_resumed_exactly(dm, tmp_path):
    L.seed_everything(5, verbose=False)
    whole = _module(dm)
    _trainer(tmp_path / "a", max_epochs=1, **SHORT).fit(whole, datamodule=dm)

    L.seed_everything(5, verbose=False)
    stopped = _module(dm)
    trainer = _trainer(tmp_path / "b", SigtermInStep(3), max_epochs=1, **SHORT)
    with handle_signals(), pytest.raises(Interrupted):
        trainer.fit(stopped, datamodule=dm)
    ckpt = tmp_path / "b" / "resume.ckpt"  # step 2 (every 2 steps), then step 3 (the signal)
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3

    resumed = _module(dm)
    trainer = _trainer(tmp_path / "b", max_epochs=1, **SHORT)
    trainer.fit(resumed, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    for name, value in whole.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[name]), name


def _fake_checkpoint(path: Path, stage: str, step: int, config: dict) -> None:
    torch.save({"global_step": step, "state_dict": {}, "plusultra": {"stage": stage,
                "config": config}}, path)  # fmt: skip


def test_the_plan_skips_recorded_stages_and_continues_the_newest_checkpoint(tmp_path):
    config = {"window": 16, "seed": 1}
    ckpts = tmp_path / "checkpoints"
    ckpts.mkdir()
    net = torch.nn.Linear(2, 2)
    first = Resumer(1, config, ckpts)
    first.prepare(["pretrain", "supervised"])
    first.finish("pretrain", net, {"best_checkpoint": None, "best_score": 0.5, "handed": "last"})
    _fake_checkpoint(ckpts / "resume.ckpt", "supervised", 12, config)
    _fake_checkpoint(ckpts / "last.ckpt", "supervised", 10, config)
    (ckpts / "pretrain-last.ckpt").write_bytes(b"torn")  # unreadable: ignored

    plan = Resumer(1, config, ckpts, resume=True)
    plan.prepare(["pretrain", "supervised"])
    assert plan.completed("pretrain")["best_score"] == 0.5 and plan.in_progress == "supervised"
    assert plan.checkpoint == ckpts / "resume.ckpt"  # further into training than last.ckpt
    other = torch.nn.Linear(2, 2)
    plan.restore("pretrain", other)
    assert torch.equal(other.weight, net.weight)

    with pytest.raises(ConfigError, match=r"window: 16 \(checkpoint\) vs 32 \(this run\)"):
        Resumer(1, {**config, "window": 32}, ckpts, resume=True).prepare(["pretrain", "supervised"])
    elsewhere = Resumer(1, config, tmp_path / "new", ckpt_path=ckpts / "last.ckpt")
    elsewhere.prepare(["pretrain", "supervised"])
    assert elsewhere.checkpoint == ckpts / "last.ckpt" and list(elsewhere.records) == ["pretrain"]
    with pytest.raises(ConfigError, match="its stage 'supervised' is not a stage"):
        Resumer(1, config, tmp_path, ckpt_path=ckpts / "last.ckpt").prepare(["finetune"])
    with pytest.raises(ConfigError, match="holds no readable checkpoint"):
        Resumer(1, config, tmp_path / "empty", resume=True).prepare(["supervised"])


# --------------------------------------------------------------------------- whole runs

# Fields of metrics.json that are not results of the run (none are timings or paths today;
# diag_* summarise the steps a process saw: a resumed run's cover only its own steps).
NOT_RESULTS = ("diag_",)


def _results(run_dir: Path) -> dict:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.startswith(NOT_RESULTS)}


def _train(cfg) -> float:
    """The task function as Hydra runs it (tests/test_run.py)."""
    HydraConfig.instance().set_config(cfg)
    task = cfg.copy()
    with open_dict(task):
        del task["hydra"]
    return train(task)


def _tiny(tiny_db, tmp_path: Path, name: str, *extra: str):
    cfg = compose_config([*TINY, "data=sqlite", f"data.path={tiny_db}", *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path / name)
        cfg.hydra.job.num = 0
    (tmp_path / name).mkdir()
    return cfg


@pytest.mark.slow  # two whole tiny runs (~10 s each on a shared CPU)
def test_same_seed_same_metrics_and_every_checkpoint_loads_weights_only(tiny_db, tmp_path):
    extra = ("callbacks.resume_checkpoint.every_n_train_steps=1",)
    for name in ("a", "b"):
        _train(_tiny(tiny_db, tmp_path, name, *extra))
    assert _results(tmp_path / "a") == _results(tmp_path / "b")  # identical, not approx
    ckpts = sorted((tmp_path / "a" / "checkpoints").glob("*.ckpt"))
    assert {p.name for p in ckpts} >= {"best.ckpt", "last.ckpt", "resume.ckpt"}
    for path in [*ckpts, *(tmp_path / "a" / "checkpoints").glob("*.pt")]:
        ckpt = torch.load(path, weights_only=True)  # no pickled objects anywhere
        assert isinstance(ckpt, dict) and ckpt
    meta = torch.load(tmp_path / "a" / "checkpoints" / "last.ckpt", weights_only=True)["plusultra"]
    assert meta["stage"] == "supervised" and meta["config"]["window"] == 16
    record = json.loads((tmp_path / "a" / "checkpoints" / "stages.json").read_text())
    assert [r["name"] for r in record] == ["supervised"]


@pytest.mark.slow
@pytest.mark.parametrize("curriculum", ["supervised", "pretrain_finetune", "rl"])
def test_a_sigkilled_cli_run_resumes_in_its_dir_to_the_uninterrupted_metrics(
    tiny_db, tmp_path, curriculum
):
    """The real CLI: SIGKILL mid-epoch once a step checkpoint of the final stage exists, rerun
    with resume=true, and the run finishes in the same dir with the metrics of a run never
    stopped (pretrain_finetune: the finished pretrain stage is skipped, not redone; rl: killed
    in the PPO stage, once the supervised stage is recorded; that one is skipped, PPO reruns
    from its seeded start)."""
    args = [
        "plusultra.run", *TINY, "data=sqlite", f"data.path={tiny_db}", "evaluation.bootstrap=0",
        "trainer.max_epochs=2", "trainer.limit_train_batches=null", "data.batch_size=16",
        "callbacks.resume_checkpoint.every_n_train_steps=5", f"curriculum={curriculum}",
    ]  # fmt: skip
    whole = run_cli(args, tmp_path / "whole")
    assert whole.returncode == 0, whole.stderr[-3000:]

    out = tmp_path / "killed"
    env = {**os.environ, "PLUSULTRA_OUTPUT_DIR": str(out)}
    env.pop("HYDRA_FULL_ERROR", None)
    proc = subprocess.Popen(
        [sys.executable, "-m", *args], cwd=REPO, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    trigger = "stages.json" if curriculum == "rl" else "resume.ckpt"
    deadline = time.monotonic() + 300
    while proc.poll() is None and time.monotonic() < deadline:
        if glob.glob(str(out / "runs" / "*" / "*" / "checkpoints" / trigger)):
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, "the run ended before a step checkpoint"
    (killed,) = (out / "runs").glob("*/*")
    assert not (killed / "metrics.json").exists()
    if curriculum != "rl":
        ckpt = torch.load(killed / "checkpoints" / "resume.ckpt", weights_only=True)
        assert ckpt["global_step"] >= 5  # killed after its first step checkpoint

    resumed = run_cli([*args, "resume=true"], out)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    done_first = {"pretrain_finetune": "pretrain", "rl": "supervised"}.get(curriculum)
    if done_first:
        assert f"Resume: stage {done_first} already done" in resumed.stdout + resumed.stderr
    assert list((out / "runs").glob("*/*")) == [killed]  # continued in its own dir
    (done,) = (tmp_path / "whole" / "runs").glob("*/*")
    a, b = _results(done), _results(killed)
    assert a.keys() == b.keys()
    for key, value in a.items():
        if isinstance(value, float):
            assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
        else:
            assert b[key] == value, key
    import pandas as pd

    rows = pd.concat(pd.read_parquet(p) for p in (out / "catalogue").glob("*.parquet"))
    assert rows["run_dir"].tolist() == [str(killed)]
    assert rows["status"].tolist() == ["completed"]
    if curriculum != "supervised":
        return
    # ckpt_path=: a new run dir trains the finished run one epoch longer; another window: refused
    last = killed / "checkpoints" / "last.ckpt"
    longer = run_cli([*args, f"ckpt_path={last}", "trainer.max_epochs=3"], tmp_path / "longer")
    assert longer.returncode == 0, longer.stderr[-3000:]
    (new,) = (tmp_path / "longer" / "runs").glob("*/*")
    assert torch.load(new / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    other = run_cli([*args, f"ckpt_path={last}", "window=12"], tmp_path / "other")
    assert other.returncode == 2
    assert f"incompatible checkpoint {last}: " in other.stderr
    assert "; window: 16 (checkpoint) vs 12 (this run)" in other.stderr
