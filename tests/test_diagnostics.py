"""Training diagnostics: kernels against naive references, the NaN guard, files and TensorBoard
scalars of a tiny run, and ``diagnostics=off`` attaching nothing."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict

from plusultra.errors import ConfigError
from plusultra.models.backbones.transformer import TransformerBackbone
from plusultra.models.heads import QuantileHead, RegressionHead
from plusultra.models.losses import Pinball
from plusultra.models.module import ForecastModule, OptimSettings
from plusultra.training.diagnostics import Diagnostics, NonFiniteError
from plusultra.training.diagnostics_activations import activation_stats, activation_stats_ref
from plusultra.training.diagnostics_base import (
    Alerts,
    group_sq_norms,
    group_sq_norms_ref,
    parameter_groups,
)
from plusultra.training.diagnostics_calibration import (
    CalibrationDiagnostics,
    quantile_coverage,
    quantile_coverage_ref,
)
from plusultra.training.diagnostics_grads import (
    GradientDiagnostics,
    NoiseScale,
    noise_scale_ref,
    update_ratios,
    update_ratios_ref,
)
from plusultra.training.diagnostics_landscape import filter_normalized, filter_normalized_ref
from plusultra.training.diagnostics_loss import (
    LossSpikeDiagnostics,
    NonFiniteGuard,
    spike_thresholds,
    spike_thresholds_ref,
    trailing_threshold,
)
from tests.conftest import TINY, compose_config

# ----------------------------------------------------------------------------- helpers


def _module(head=None, loss=None, depth: int = 2) -> ForecastModule:
    torch.manual_seed(0)
    backbone = TransformerBackbone(n_features=3, d_model=8, depth=depth, n_heads=2)
    return ForecastModule(
        backbone=backbone,
        head=head or RegressionHead(8, 2),
        loss=loss or torch.nn.MSELoss(),
        optim=OptimSettings(lr=1e-3),
    )


def _batches(n: int, nan_at: int | None = None, seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        x, y = torch.randn(8, 6, 3, generator=gen), torch.randn(8, 2, generator=gen)
        if i == nan_at:
            x[3, 2, 1] = math.nan
        out.append((x, y))
    return out


def _fit(module, callbacks, train, val=None, tmp_path=None, epochs=1) -> L.Trainer:
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        limit_val_batches=len(val) if val else 0,
    )

    def loader(batches):  # batch_size=None: each item is one ready batch
        return torch.utils.data.DataLoader(batches, batch_size=None) if batches else None

    trainer.fit(module, train_dataloaders=loader(train), val_dataloaders=loader(val))
    return trainer


def _diagnostics(tmp_path, **parts) -> Diagnostics:
    return Diagnostics(dir=tmp_path / "diagnostics", **parts)


# ----------------------------------------------------------------------------- kernels


def test_group_norms_match_reference():
    gen = torch.Generator().manual_seed(1)
    tensors = [torch.randn(*s, generator=gen) for s in [(3, 4), (5,), (2, 2, 2), (7,)]]
    groups = [0, 2, 0, 1]
    got = group_sq_norms(tensors, torch.tensor(groups), 3).tolist()
    # per-tensor norms in the tensors' float32, summed in float64: float32 rounding
    assert got == pytest.approx(group_sq_norms_ref(tensors, groups, 3), rel=1e-6)


def test_parameter_groups_follow_the_module_tree():
    module = _module(depth=2)
    groups = parameter_groups(module)
    assert groups.names == ("embedding", "block_0", "block_1", "backbone_out", "head")
    by_group = {g: [] for g in groups.names}
    for (name, _), i in zip(groups.params, groups.index.tolist(), strict=True):
        by_group[groups.names[i]].append(name)
    assert all(n.startswith("backbone.blocks.1.") for n in by_group["block_1"])
    assert {n.split(".")[1] for n in by_group["embedding"]} == {"embed", "pos"}
    assert {n.split(".")[1] for n in by_group["backbone_out"]} == {"ln_f"}
    assert all(n.startswith("head.") for n in by_group["head"])
    assert len(groups.params) == len([p for p in module.parameters() if p.requires_grad])


def test_noise_scale_matches_reference():
    gen = torch.Generator().manual_seed(2)
    shapes, window, ema = [(3, 2), (4,)], 4, 0.7
    steps, batches, got = [], [], []
    noise = NoiseScale(window, ema)
    for i in range(3 * window + 1):  # three complete windows and one step of a fourth
        grads = [torch.randn(*s, generator=gen) + 0.5 for s in shapes]
        batch = 16 + i % 3
        flat = torch.cat([g.flatten() for g in grads]).double()
        steps.append(flat.tolist())
        batches.append(batch)
        est = noise.update(grads, float(flat.square().sum()), batch)
        if est is not None:
            got.append(est["b_simple"])
    # the window's gradient sum is kept in the gradients' float32
    assert got == pytest.approx(noise_scale_ref(steps, batches, window, ema), rel=1e-5)


def test_noise_scale_recovers_a_known_value():
    """Gradients G + N(0, I / B): tr(S) = dim, |G|^2 = dim * 0.1^2, so B_noise = 100."""
    gen = torch.Generator().manual_seed(3)
    dim, batch, window = 4000, 32, 8
    G = torch.full((dim,), 0.1)
    noise = NoiseScale(window, ema=0.9)
    est = None
    for _ in range(window * 40):
        g = G + torch.randn(dim, generator=gen) / math.sqrt(batch)
        est = noise.update([g], float(g.double().square().sum()), batch) or est
    assert est["b_simple"] == pytest.approx(100.0, rel=0.1)


def test_update_ratios_match_reference():
    gen = torch.Generator().manual_seed(4)
    before = [torch.randn(*s, generator=gen) for s in [(4, 3), (3,), (2, 5)]]
    after = [b + 0.01 * torch.randn(b.shape, generator=gen) for b in before]
    groups = [1, 0, 1]
    got = update_ratios(before, after, torch.tensor(groups), 2).tolist()
    assert got == pytest.approx(update_ratios_ref(before, after, groups, 2), rel=1e-5)  # float32


def test_spike_thresholds_match_reference_and_flag_a_spike():
    rng = np.random.default_rng(5)
    losses = 1.0 + 0.05 * rng.standard_normal(300)
    losses[200] = 3.0  # a spike
    window, k, min_history = 50, 6.0, 20
    med, mad, thr = spike_thresholds(losses, window, k, min_history)
    ref = spike_thresholds_ref(losses.tolist(), window, k, min_history)
    np.testing.assert_allclose(thr, ref, rtol=1e-12, equal_nan=True)
    assert np.isnan(thr[:min_history]).all() and np.isfinite(thr[min_history:]).all()
    assert np.flatnonzero(losses > thr).tolist() == [200]
    for t in (20, 120, 299):  # the online rule is the same threshold
        assert trailing_threshold(losses[max(0, t - window) : t], k)[2] == pytest.approx(thr[t])


def test_activation_stats_match_reference():
    gen = torch.Generator().manual_seed(6)
    a = torch.randn(4, 5, 6, generator=gen) * 3
    a[..., 2] = 0.0  # a dead channel
    a[0, 0, 0] = 1e-8
    got = activation_stats(a, zero_tol=1e-6, saturation=5.0).tolist()
    ref = activation_stats_ref(a, zero_tol=1e-6, saturation=5.0)
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-12)
    assert got[-1] == pytest.approx(1 / 6)


def test_quantile_coverage_matches_reference():
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(50, 3, 4, generator=gen).sort(dim=-1).values
    y = torch.randn(50, 3, generator=gen)
    got = quantile_coverage(q, y).tolist()
    assert got == pytest.approx(quantile_coverage_ref(q, y), rel=1e-12)


def test_filter_normalized_matches_reference():
    gen = torch.Generator().manual_seed(8)
    weights = [torch.randn(*s, generator=gen) for s in [(4, 3), (5,), (2, 3, 2)]]
    direction = [torch.randn(w.shape, generator=gen) for w in weights]
    got = filter_normalized(direction, weights)
    for g, r, w in zip(got, filter_normalized_ref(direction, weights), weights, strict=True):
        torch.testing.assert_close(g, r, rtol=1e-6, atol=1e-7)
        if w.dim() > 1:  # each filter has its weight filter's norm
            torch.testing.assert_close(g.flatten(1).norm(dim=1), w.flatten(1).norm(dim=1))
    assert not got[1].any()  # 1-D: zero direction


# ----------------------------------------------------------------------------- callbacks


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: GradientDiagnostics(every_n_steps=0), "diagnostics.gradients.every_n_steps"),
        (lambda: GradientDiagnostics(noise_window=1), "diagnostics.gradients.noise_window"),
        (lambda: LossSpikeDiagnostics(window=10, min_history=11), "loss_spikes.min_history"),
        (lambda: CalibrationDiagnostics(max_ece=0), "diagnostics.calibration.max_ece"),
    ],
)
def test_bad_settings_name_the_config_key(factory, message):
    with pytest.raises(ConfigError, match=message):
        factory()


def test_nan_in_a_batch_stops_the_run_and_saves_the_batch(tmp_path):
    diagnostics = _diagnostics(
        tmp_path, nonfinite=NonFiniteGuard(), gradients=GradientDiagnostics()
    )
    train = _batches(5, nan_at=2)
    with pytest.raises(NonFiniteError) as info:
        _fit(_module(), diagnostics.callbacks, train, tmp_path=tmp_path)
    path = tmp_path / "diagnostics" / "nonfinite_batch.pt"
    message = str(info.value)
    assert "non-finite loss" in message and "step 2" in message and "batch 2" in message
    assert str(path) in message and info.value.exit_code == 3
    saved = torch.load(path, weights_only=True)
    assert saved["batch_index"] == 2 and saved["step"] == 2 and saved["tensor"].startswith("loss")
    torch.testing.assert_close(saved["inputs"][0], train[2][0], equal_nan=True)
    torch.testing.assert_close(saved["targets"], train[2][1])
    rows = pd.read_parquet(tmp_path / "diagnostics" / "gradients.parquet")
    assert rows["step"].tolist() == [0, 1]  # what was recorded before the stop is kept


def test_nan_gradient_names_the_parameter(tmp_path):
    module = _module()
    weight = module.head.net.weight
    weight.register_hook(lambda g: torch.full_like(g, math.inf))
    diagnostics = _diagnostics(tmp_path, nonfinite=NonFiniteGuard())
    with pytest.raises(NonFiniteError, match=r"non-finite grad of parameter head\.net\.weight"):
        _fit(module, diagnostics.callbacks, _batches(3), tmp_path=tmp_path)
    assert (
        torch.load(tmp_path / "diagnostics" / "nonfinite_batch.pt", weights_only=True)["step"] == 0
    )


def test_threshold_warnings_print_once_per_epoch_and_count_all(caplog):
    alerts = Alerts()
    with caplog.at_level(logging.WARNING, logger="plusultra.diagnostics"):
        for step in range(5):
            alerts.cross("grad_norm", "grad_norm/total", 200.0, 100.0, "k.max", step, step // 3)
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 2  # epochs 0 and 1
    assert "grad_norm/total = 200 > 100 (k.max)" in lines[0]
    assert alerts.counts["grad_norm"] == 5 and "5 threshold warnings" in alerts.report()


def test_calibration_coverage_of_a_quantile_head_and_skip_for_regression(tmp_path, caplog):
    head = QuantileHead(8, 2, quantiles=(0.1, 0.5, 0.9))
    module = _module(head=head, loss=Pinball(quantiles=(0.1, 0.5, 0.9)))
    calib = CalibrationDiagnostics()
    diagnostics = _diagnostics(tmp_path, calibration=calib)
    val = _batches(2, seed=9)
    _fit(module, diagnostics.callbacks, _batches(3), val=val, tmp_path=tmp_path, epochs=2)
    rows = pd.read_parquet(tmp_path / "diagnostics" / "calibration.parquet")
    assert len(rows) == 2 and rows["epoch"].tolist() == [0, 1]
    with torch.no_grad():  # the last epoch's coverage, recomputed from the final weights
        q = torch.cat([module(x) for x, _ in val])
    expected = quantile_coverage(q, torch.cat([y for _, y in val])).tolist()
    got = rows.iloc[-1][[f"calibration/coverage/q{q}" for q in (0.1, 0.5, 0.9)]].tolist()
    assert got == pytest.approx(expected)

    other = _diagnostics(tmp_path / "reg", calibration=CalibrationDiagnostics())
    with caplog.at_level(logging.INFO, logger="plusultra.diagnostics"):
        _fit(_module(), other.callbacks, _batches(2), val=val, tmp_path=tmp_path, epochs=2)
    skips = [r for r in caplog.records if "calibration drift skipped" in r.getMessage()]
    assert len(skips) == 1 and "RegressionHead" in skips[0].getMessage()
    assert not (tmp_path / "reg" / "diagnostics" / "calibration.parquet").exists()


# ----------------------------------------------------------------------------- config and run


def _build(option: str, tmp_path) -> Diagnostics:
    cfg = compose_config([f"diagnostics={option}", f"hydra.runtime.output_dir={tmp_path}"])
    from hydra.core.hydra_config import HydraConfig

    HydraConfig.instance().set_config(cfg)
    return instantiate(cfg.diagnostics, _convert_="all")


def test_diagnostics_off_attaches_nothing(tmp_path):
    off = _build("off", tmp_path)
    assert off.callbacks == [] and off.summary() == {}
    default = _build("default", tmp_path)
    names = {type(c).__name__ for c in default.callbacks}
    assert names == {
        "GradientDiagnostics",
        "ActivationDiagnostics",
        "LossSpikeDiagnostics",
        "NonFiniteGuard",
        "CalibrationDiagnostics",
    }  # the landscape only with diagnostics=full
    full = _build("full", tmp_path)
    assert "LossLandscape" in {type(c).__name__ for c in full.callbacks}
    assert all(c.directory == tmp_path / "diagnostics" for c in full.callbacks)


@pytest.fixture(scope="module")
def diagnosed_run(tiny_db, tmp_path_factory) -> Path:
    """A tiny run with head=calibrated (ECE and coverage) and dense sampling."""
    from tests.test_run import run_in_process

    tmp = tmp_path_factory.mktemp("diag")
    overrides = [
        *TINY,
        "data=sqlite",
        f"data.path={tiny_db}",
        "head=calibrated",
        "trainer.limit_train_batches=4",
        "diagnostics.activations.every_n_steps=2",
        "diagnostics.gradients.noise_window=2",
        "diagnostics.gradients.update_every_n_steps=1",
        "diagnostics.gradients.max_grad_norm=1e-3",  # every step crosses it: warnings
    ]
    cfg = compose_config(overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp)
        cfg.hydra.runtime.output_dir = str(tmp / "run")
    (tmp / "run").mkdir()
    run_in_process(cfg)
    return tmp / "run"


def test_a_tiny_run_writes_parquet_tensorboard_metrics_and_report(diagnosed_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    diag = diagnosed_run / "diagnostics"
    grads = pd.read_parquet(diag / "gradients.parquet")
    assert grads["step"].tolist() == [0, 1, 2, 3]
    assert {"grad_norm/embedding", "grad_norm/block_0", "grad_norm/head"} <= set(grads.columns)
    assert grads.filter(like="update_ratio/").notna().all().all()
    assert len(pd.read_parquet(diag / "activations.parquet")) == 2  # steps 0 and 2
    assert len(pd.read_parquet(diag / "loss_spikes.parquet")) == 4
    assert len(pd.read_parquet(diag / "noise_scale.parquet")) == 2
    calib = pd.read_parquet(diag / "calibration.parquet")
    assert len(calib) == 1 and 0 <= calib["calibration/ece"].iloc[0] <= 1
    warnings = pd.read_parquet(diag / "warnings.parquet")
    assert (warnings["key"] == "diagnostics.gradients.max_grad_norm").any()

    events = EventAccumulator(str(diagnosed_run / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    for tag in (
        "grad_norm/total",
        "update_ratio/head",
        "dead/block_0",
        "loss_spikes/loss",
        "noise_scale/b_simple",
        "calibration/ece",
    ):
        assert f"supervised/diagnostics/{tag}" in tags, tag  # under the stage's prefix
    logged = [e.value for e in events.Scalars("supervised/diagnostics/grad_norm/total")]
    assert logged == pytest.approx(grads["grad_norm/total"].tolist(), rel=1e-6)

    metrics = json.loads((diagnosed_run / "metrics.json").read_text())
    assert metrics["diag_max_grad_norm"] == pytest.approx(grads["grad_norm/total"].max())
    assert metrics["diag_n_warnings"] == len(warnings) and metrics["diag_n_loss_spikes"] == 0
    assert metrics["diag_val_ece"] == pytest.approx(calib["calibration/ece"].iloc[-1])
    report = (diagnosed_run / "report.md").read_text()
    assert "## Training diagnostics" in report
    assert (diagnosed_run / "report" / "diagnostics.png").exists()


def test_under_compile_no_hooks_same_calibration_and_activations_skipped(tmp_path):
    """A compiled forward (marked as torch.compile marks it) gets no forward hooks: the
    calibration rows come from an extra uncompiled forward and equal the hooked ones."""
    from plusultra.training.diagnostics_activations import ActivationDiagnostics

    val, rows = _batches(2, seed=9), []
    for marked in (False, True):
        torch.manual_seed(0)  # the head is built before _module seeds
        module = _module(
            head=QuantileHead(8, 2, quantiles=(0.1, 0.5, 0.9)),
            loss=Pinball(quantiles=(0.1, 0.5, 0.9)),
        )
        if marked:
            impl = module._forward_impl

            def forward(*args, impl=impl):
                return impl(*args)

            forward._torchdynamo_orig_callable = impl  # what torch.compile's wrapper carries
            module._forward = forward
        out = tmp_path / str(marked)
        acts = ActivationDiagnostics(every_n_steps=1)
        diag = _diagnostics(out, calibration=CalibrationDiagnostics(), activations=acts)
        _fit(module, diag.callbacks, _batches(3), val=val, tmp_path=out)
        rows.append(pd.read_parquet(out / "diagnostics" / "calibration.parquet"))
        assert (out / "diagnostics" / "activations.parquet").exists() is not marked
        assert not module.head._forward_hooks and not module.backbone.blocks[0]._forward_hooks
    pd.testing.assert_frame_equal(rows[0], rows[1])


def test_nonfinite_error_takes_the_cli_error_path_with_exit_code_3(capsys):
    """run.py main hands every exception to `fail`: one line on stderr, exit code 3."""
    from plusultra.cli.common import fail

    message = "training stopped: non-finite loss (nan) at step 2 (epoch 0, batch 2)"
    with pytest.raises(SystemExit) as info:
        fail("plusultra", NonFiniteError(message))
    assert info.value.code == 3
    assert capsys.readouterr().err.strip() == f"plusultra: error: {message}"


@pytest.mark.slow
def test_a_run_with_diagnostics_off_writes_no_diagnostics(tiny_db, tmp_path):
    from tests.test_run import run_in_process

    cfg = compose_config([*TINY, "data=sqlite", f"data.path={tiny_db}", "diagnostics=off"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    _, run_dir = run_in_process(cfg)
    assert not (run_dir / "diagnostics").exists()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert not [k for k in metrics if k.startswith("diag_")]
    assert "Training diagnostics" not in (run_dir / "report.md").read_text()


@pytest.mark.slow
def test_cli_stops_a_diverging_run_with_exit_code_3(tiny_db, tmp_path):
    """lr=1e37 overflows the weights on the first step: the real CLI stops, names the
    parameter and the saved batch, and exits 3."""
    from tests.conftest import run_cli

    args = ["plusultra.run", *TINY, "data=sqlite", f"data.path={tiny_db}", "optim.lr=1e37",
            "optim.warmup_frac=0"]  # fmt: skip
    result = run_cli(args, tmp_path)
    assert result.returncode == 3, result.stderr[-2000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("plusultra: error: training stopped: non-finite parameter ")
    saved = Path(line.split(" is saved in ")[1].split(" (torch.load")[0])
    batch = torch.load(saved, weights_only=True)
    assert batch["step"] == 0 and batch["tensor"].startswith("parameter ")


def test_sampling_and_step_count_continue_across_fits(tmp_path):
    """Unrecorded steps are skipped; a second fit (a later curriculum stage) continues the
    step count instead of restarting it."""
    grads = GradientDiagnostics(every_n_steps=2, noise_window=None, update_every_n_steps=None)
    diagnostics = _diagnostics(tmp_path, gradients=grads, loss_spikes=LossSpikeDiagnostics())
    module = _module()
    _fit(module, diagnostics.callbacks, _batches(5), tmp_path=tmp_path)
    _fit(module, diagnostics.callbacks, _batches(3), tmp_path=tmp_path)
    assert [r["step"] for r in grads.rows] == [0, 2, 4, 6]
    spikes = pd.read_parquet(tmp_path / "diagnostics" / "loss_spikes.parquet")
    assert spikes["step"].tolist() == list(range(8))
    assert not any(k.startswith("update_ratio/") for r in grads.rows for k in r)


def test_loss_landscape_centre_is_the_trained_loss_and_weights_are_restored(tmp_path):
    from plusultra.training.diagnostics_landscape import LossLandscape

    train, val = _batches(3), _batches(1, seed=5)

    class Data(L.LightningDataModule):
        def train_dataloader(self):
            return torch.utils.data.DataLoader(train, batch_size=None)

        def val_dataloader(self):
            return torch.utils.data.DataLoader(val, batch_size=None)

    module = _module()
    diagnostics = _diagnostics(tmp_path, landscape=LossLandscape(resolution=3, n_batches=1))
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, callbacks=diagnostics.callbacks)  # fmt: skip
    trainer.fit(module, datamodule=Data())
    grid = pd.read_parquet(tmp_path / "diagnostics" / "loss_landscape.parquet")
    assert len(grid) == 9 and (tmp_path / "diagnostics" / "loss_landscape.png").is_file()
    module.eval()
    with torch.no_grad():  # the weights are back: the centre is the trained model's loss
        trained = float(module.loss_fn(module(val[0][0]), val[0][1]))
    centre = grid[(grid["alpha"] == 0) & (grid["beta"] == 0)]["loss"].item()
    assert centre == pytest.approx(trained, rel=1e-6)
    assert grid["loss"].nunique() > 1


def test_report_section_is_absent_without_diagnostics(tmp_path):
    from plusultra.evaluation.report.diagnostics import diagnostics_section

    assert diagnostics_section(tmp_path) == ([], {})
