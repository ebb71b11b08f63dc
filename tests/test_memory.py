"""The GPU path's up-front checks: segment lengths, activation checkpointing, memory estimate."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from torch import nn

import plusultra.models.layers as layers
from plusultra.data.datasets.windows import compute_segments
from plusultra.errors import ConfigError
from plusultra.models.backbones import BACKBONES
from plusultra.models.heads import RegressionHead
from plusultra.models.memory import (
    GIB,
    HEADROOM,
    _saved_bytes,
    check_fits,
    check_memory,
    device_budget,
    estimate_memory,
    size,
)
from tests.conftest import REPO, TINY, compose_config, run_cli

F_ = 5
SMALL: dict[str, dict] = {  # every backbone, small, with dropout and drop-path where it has them
    "hybrid": {"d_model": 16, "depth": 2, "n_heads": 2, "dropout": 0.1, "drop_path": 0.2},
    "transformer": {"d_model": 16, "depth": 2, "n_heads": 2, "dropout": 0.1},
    "tcn": {"d_model": 16, "depth": 2, "dropout": 0.1, "drop_path": 0.2},
    "ssm": {"d_model": 16, "depth": 2, "dropout": 0.1, "drop_path": 0.2, "chunk": 8},
    "moe": {"d_model": 16, "depth": 2, "n_heads": 2, "dropout": 0.1},
    "multiscale": {"d_model": 16, "depth": 2, "n_heads": 2, "dropout": 0.1, "scales": [1, 4]},
}


def small(name: str, **overrides) -> nn.Module:
    torch.manual_seed(0)
    return BACKBONES[name](F_, **{**SMALL[name], **overrides})


# ---------------------------------------------------------------- segment lengths
def test_segment_check_names_the_segment_its_bars_and_the_keys():
    """The old hybrid_large data: 5,040 days split 0.6/0.8 leave val 1,008 bars for 2,058."""
    dates = pd.bdate_range("2012-01-03", periods=5040).to_numpy()
    with pytest.raises(ConfigError) as err:
        compute_segments(dates, 2048, 5, 0.6, 0.8)
    msg = str(err.value)
    for part in ("the val segment", "1008 bars", "at least 2058", "embargo 2053 + horizon 5"):
        assert part in msg
    for key in ("data.train_end/data.val_end", "`window`", "data.fixture.days"):
        assert key in msg


@pytest.mark.parametrize(
    ("segment", "train_end", "val_end", "n"),
    [
        ("train", 12, 60, 100),  # train: bars 0..train_end need window + horizon = 12
        ("val", 30, 30 + 14, 100),  # val: bars after train_end need embargo + horizon = 14
        ("test", 30, 60, 60 + 14),  # test: bars after val_end need embargo + horizon = 14
    ],
)
def test_each_segment_needs_its_lead_in_plus_horizon(segment, train_end, val_end, n):
    """Exactly the bars needed pass (one labelled decision); one bar fewer is refused."""
    window, horizon = 10, 2
    dates = pd.bdate_range("2015-01-01", periods=n)

    def split(shift_train: int, shift_val: int, length: int):
        d = dates[:length].to_numpy()
        te, ve = train_end - 1 + shift_train, val_end - 1 + shift_val  # bar indices
        return compute_segments(d, window, horizon, str(dates[te].date()), str(dates[ve].date()))

    seg = split(0, 0, n)
    lo, hi = getattr(seg, segment)
    last_labelled = hi if segment != "test" else hi - horizon
    assert last_labelled == lo  # exactly one labelled decision
    short = {"train": (-1, 0, n), "val": (0, -1, n), "test": (0, 0, n - 1)}[segment]
    with pytest.raises(ConfigError, match=f"the {segment} segment is empty"):
        split(*short)


def test_hybrid_large_recipe_fits_its_fixture():
    """The recipe's fixture calendar leaves 463 labelled decision bars in val and test."""
    cfg = compose_config(["experiment=hybrid_large"])
    fix = cfg.data.fixture
    dates = pd.bdate_range(fix.start, periods=fix.days).to_numpy()
    seg = compute_segments(dates, cfg.window, cfg.horizon, cfg.data.train_end, cfg.data.val_end)
    assert seg.embargo == 2053
    assert seg.val[1] - seg.val[0] + 1 == 463
    assert seg.test[1] - cfg.horizon - seg.test[0] + 1 == 463
    assert seg.train[1] - seg.train[0] + 1 == 5040 - 2047 - 5


def test_segments_are_checked_before_the_features(tiny_db, monkeypatch):
    from plusultra.data.datasets.datamodule import SQLiteDataModule
    from plusultra.data.features.pipeline import FeaturePipeline

    def never(*args, **kwargs):
        raise AssertionError("features computed before the segment check")

    monkeypatch.setattr(FeaturePipeline, "compute", never)
    dm = SQLiteDataModule(str(tiny_db), FeaturePipeline(["log_return"]), window=150, horizon=2)
    with pytest.raises(ConfigError, match="the val segment is empty"):
        dm.setup()


@pytest.mark.slow
def test_hybrid_large_runs_end_to_end(tmp_path):
    """experiment=hybrid_large (window 2048, its 10,080-day fixture), a tiny model, one epoch."""
    tiny = ["depth=1", "d_model=16", "n_heads=2", "data.batch_size=64", "evaluation.bootstrap=0"]
    trainer = [t for t in TINY if t.startswith("trainer.")]
    args = ["plusultra.run", "experiment=hybrid_large", *tiny, *trainer, "print_summary=false"]
    done = run_cli(args, tmp_path, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    (metrics_file,) = tmp_path.glob("runs/*/*/metrics.json")
    metrics = json.loads(metrics_file.read_text())
    assert metrics["val_samples"] > 0 and metrics["test_samples"] > 0
    config = (metrics_file.parent / "config.yaml").read_text()
    assert "window: 2048" in config


# ---------------------------------------------------------------- activation checkpointing
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_checkpointing_keeps_outputs_and_gradients(name):
    """Same weights, same seed: outputs and every gradient equal with and without it (dropout
    and drop-path masks are replayed in the recomputation)."""
    x = torch.randn(3, 32, F_, generator=torch.Generator().manual_seed(1))
    results = []
    for on in (False, True):
        model = small(name, activation_checkpointing=on).train()
        torch.manual_seed(5)
        y = model(x)
        y.square().mean().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((y.detach(), grads))
    (y0, g0), (y1, g1) = results
    torch.testing.assert_close(y1, y0, rtol=0, atol=0)
    assert g0.keys() == g1.keys() and len(g0) == len(list(model.parameters()))
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], rtol=1e-6, atol=1e-7, msg=n)


def test_checkpointing_runs_in_training_only(monkeypatch):
    calls = []
    real = layers.torch_checkpoint
    monkeypatch.setattr(
        layers, "torch_checkpoint", lambda *a, **k: calls.append(k) or real(*a, **k)
    )
    model = small("transformer", activation_checkpointing=True)
    x = torch.randn(2, 16, F_)
    model.eval()(x)
    with torch.no_grad():
        model.train()(x)
    assert calls == []
    model.train()(x)
    assert calls == [{"use_reentrant": False}] * 2  # one per block


def test_every_backbone_config_has_the_switch_off():
    for name in BACKBONES:
        cfg = compose_config([f"backbone={name}"])
        assert cfg.backbone.activation_checkpointing is False


# ---------------------------------------------------------------- memory estimate
def test_saved_bytes_equal_a_hand_count():
    """Linear -> ReLU -> Linear on (B, T, F): the first linear saves x, ReLU its output, which
    the second linear saves again (one storage); weights are model state, not activations."""
    B, T, F, H = 3, 7, 5, 11
    mlp = nn.Sequential(nn.Linear(F, H), nn.ReLU(), nn.Linear(H, 2))
    total, _ = _saved_bytes(nn.Sequential(mlp), torch.randn(B, T, F), None, None)
    assert total == 4 * B * T * (F + H)
    est = estimate_memory(mlp, nn.Identity(), T, F, batch_size=8)
    assert (est.plain.fixed, est.plain.per_sample) == (0, 4 * T * (F + H))
    n_params = F * H + H + H * 2 + 2
    assert est.n_params == n_params and est.state == 16 * n_params  # fp32 w + g + 2 moments
    assert est.total() == 16 * n_params + 8 * 4 * T * (F + H)


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_fake_estimate_equals_real_tensors_at_another_batch(name, precision):
    """Fitted on fake tensors at batch 2 and 3, the estimate equals the bytes that real CPU
    tensors save at batch 5 (same hook): the method is exact and linear in the batch."""
    model, head, T = small(name), RegressionHead(16, 2), 32
    est = estimate_memory(model, head, T, F_, batch_size=5, precision=precision)
    net = nn.Sequential(model, head).train()
    cast = torch.bfloat16 if precision == "bf16-mixed" else None
    real, _ = _saved_bytes(net, torch.randn(5, T, F_), cast, model.blocks)
    if precision == "32-true":
        assert est.activations() == real
    else:  # CPU kernels keep a bf16 layer norm's statistics in fp32, the fake kernels in bf16
        assert est.activations() == pytest.approx(real, rel=0.03)
    assert est.activations(batch=11) - est.activations(batch=10) == est.plain.per_sample > 0


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_checkpointing_lowers_the_estimate(name):
    est = estimate_memory(small(name, depth=4), RegressionHead(16, 2), 64, F_, batch_size=64)
    assert est.checkpointed is not None
    assert est.checkpointed.per_sample < est.plain.per_sample
    assert est.total(checkpointing=True) < est.total(checkpointing=False)


def test_bf16_mixed_saves_less_than_fp32():
    args = (small("transformer"), RegressionHead(16, 2), 64, F_, 64)
    fp32, bf16 = estimate_memory(*args, "32-true"), estimate_memory(*args, "bf16-mixed")
    assert bf16.plain.per_sample < fp32.plain.per_sample
    assert bf16.plain.fixed > 0  # the bf16 copies of the weights autocast keeps for backward
    assert estimate_memory(*args, "bf16-true").state == fp32.state // 2
    with pytest.raises(ConfigError, match="trainer.precision='8-bit'; valid"):
        estimate_memory(*args, "8-bit")


def test_refusal_gives_the_numbers_the_batch_that_fits_and_checkpointing():
    est = estimate_memory(small("hybrid"), RegressionHead(16, 2), 64, F_, batch_size=1024)
    budget = est.total(batch=300) + 1  # fits 300 samples, not 301
    assert est.max_batch(budget) == 300
    with pytest.raises(ConfigError) as err:
        check_memory(est, budget, "a test device")
    msg = str(err.value)
    assert msg.startswith(f"estimated peak memory {size(est.total())} (params+optimizer")
    assert "at batch 1024, window 64" in msg and "exceeds the" in msg and "of a test device" in msg
    assert "lower data.batch_size to 300 (or below)" in msg
    assert f"activation_checkpointing=true (estimate with it: {size(est.total(True))};" in msg
    assert f"largest batch with it: {est.max_batch(budget, checkpointing=True)}" in msg
    assert "estimated peak memory" in check_memory(est, est.total(), "a test device")


def test_refusal_without_room_for_one_sample_and_with_checkpointing_on():
    model = small("tcn", activation_checkpointing=True)
    est = estimate_memory(model, RegressionHead(16, 2), 64, F_, batch_size=8)
    assert est.checkpointing
    with pytest.raises(ConfigError) as err:
        check_memory(est, est.state, "a test device")
    assert "no batch size fits" in str(err.value) and "estimate with it" not in str(err.value)


def test_sizes_read_in_gib_or_mib():
    assert size(31.24 * GIB) == "31.2 GiB" and size(0.1 * GIB) == "0.1 GiB"
    assert size(3 * 1024**2) == "3.0 MiB"


def test_device_budget():
    assert device_budget("cpu", 1, 2.5) == (2.5 * GIB, "hardware.memory_gb=2.5")
    budget, device = device_budget("cpu", 1, None)
    physical = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert budget == HEADROOM * physical and "this machine's memory" in device
    assert device_budget("cpu", 2, None) == (budget / 2, device[:-1] + " / 2 processes)")
    with pytest.raises(ConfigError, match="hardware.memory_gb=0"):
        device_budget("cpu", 1, 0)
    if not torch.cuda.is_available():
        assert device_budget("gpu", 1, None)[0] is None  # the trainer refuses that run itself


def test_a_run_that_cannot_fit_is_refused_before_training(tiny_cfg):
    from tests.test_run import run_in_process

    with open_dict(tiny_cfg):
        tiny_cfg.hardware.memory_gb = 1e-4
    with pytest.raises(ConfigError, match=r"exceeds the 0\.1 MiB of hardware.memory_gb=0.0001"):
        run_in_process(tiny_cfg)
    run_dir = Path(tiny_cfg.hydra.runtime.output_dir)
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()


def test_check_fits_leaves_the_rng_stream_alone():
    model, head = small("hybrid", dropout=0.1), RegressionHead(16, 2)
    torch.manual_seed(3)
    assert "estimated peak memory" in check_fits(model, head, 32, F_, 8, "32-true", "cpu", 1, None)
    after = torch.rand(3)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(3), after)
    assert copy.deepcopy(model).activation_checkpointing is False


@pytest.mark.slow
@pytest.mark.parametrize(("hw", "gib", "plain"), [("rtx4090", 24, 96), ("h100", 80, 320)])
def test_hardware_batch_sizes_fit_hybrid_large(hw, gib, plain):
    """conf/hardware's batch fits experiment=hybrid_large (activation checkpointing on) in 90% of
    the card, and would not without checkpointing; the batch its comment names fits without."""
    from plusultra.data.features.pipeline import REGISTRY

    cfg = compose_config(["experiment=hybrid_large", f"hardware={hw}"])
    assert cfg.backbone.activation_checkpointing is True
    n_features = len(REGISTRY) + len(cfg.features.indicators) + len(cfg.features.regimes)
    backbone = instantiate(cfg.backbone, n_features=n_features, _convert_="all")
    head = instantiate(cfg.head, _convert_="all")
    batch = cfg.data.batch_size
    est = estimate_memory(backbone, head, cfg.window, n_features, batch, cfg.trainer.precision)
    budget = HEADROOM * gib * GIB
    assert "within" in check_memory(est, budget, hw)
    assert est.total(True, batch) <= budget < est.total(False, batch)
    assert est.total(False, plain) <= budget
    assert f"without checkpointing: {plain}" in (REPO / f"conf/hardware/{hw}.yaml").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_estimate_against_torch_memory_tracker(name, precision):
    """Peak memory of one real AdamW step on CPU, tracked allocation by allocation by torch's
    MemTracker (an independent reference), is 1.0-1.25x the estimate, with and without
    checkpointing: the estimate leaves out backward temporaries (the 10% budget headroom)."""
    tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    B, T = 32, 64
    for ckpt in (False, True):
        model, head = small(name, activation_checkpointing=ckpt), RegressionHead(16, 2)
        net = nn.Sequential(model, head).train()
        opt = torch.optim.AdamW(net.parameters())
        x = torch.randn(B, T, F_)
        net(x).sum().backward()
        opt.step()  # the AdamW moments exist before the tracked step, as in training
        opt.zero_grad(set_to_none=False)
        mt = tracker.MemTracker()
        mt.track_external(net, opt)
        with mt:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision != "32-true"):
                loss = net(x).float().square().mean()
            loss.backward()
            opt.step()
        peak = sum(v.get("Total", 0) for v in mt.get_tracker_snapshot("peak").values())
        est = estimate_memory(model, head, T, F_, B, precision)
        assert 0.95 <= peak / est.total() <= 1.25, (ckpt, peak, est.total())
