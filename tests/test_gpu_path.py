"""The GPU path, tested on the CPU: inference on the training device and precision
(`training.device.InferenceDevice`), TF32 from `matmul_precision`, torch.compile in training
and inference, and the hardware configs' trainer and loader settings. Where CUDA itself would
be needed, the decision is checked with monkeypatching (tests never need a GPU)."""

from __future__ import annotations

import contextlib
import functools
import json
import warnings
from types import SimpleNamespace

import lightning as L
import numpy as np
import pandas as pd
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import open_dict
from torch import nn
from torch.utils.data import DataLoader

from plusultra.data.datasets.windows import WindowDataset, passthrough_collate
from plusultra.errors import ConfigError
from plusultra.models.backbones.transformer import TransformerBackbone
from plusultra.models.heads import RegressionHead
from plusultra.models.module import ForecastModule, OptimSettings
from plusultra.training import predict as predict_module
from plusultra.training.device import (
    MATMUL_PRECISIONS,
    InferenceDevice,
    canonical_precision,
    set_matmul_precision,
)
from plusultra.training.predict import predict_windows
from tests.conftest import TINY, compose_config

WINDOW = 16


def _model(compile: bool = False, seed: int = 0) -> ForecastModule:
    torch.manual_seed(seed)
    backbone = TransformerBackbone(3, d_model=16, depth=1, n_heads=2, max_len=WINDOW)
    return ForecastModule(backbone, RegressionHead(16, 2), nn.MSELoss(), OptimSettings(), compile)


def _dataset(labelled: bool = False) -> WindowDataset:
    rng = np.random.default_rng(0)
    feats = rng.standard_normal((60, 4, 3)).astype(np.float32)  # (dates, symbols, features)
    index = np.array([(t, s) for t in range(WINDOW - 1, 55) for s in range(4)])
    y = rng.standard_normal((60, 4, 2)).astype(np.float32) if labelled else None
    return WindowDataset(feats, index, WINDOW, y)


def _reference(model: nn.Module, dataset: WindowDataset) -> np.ndarray:
    """The pre-InferenceDevice loop: eval mode, fp32, the model where it is, batch by batch."""
    model.eval()
    with torch.inference_mode():
        x = dataset.__getitems__(list(range(len(dataset))))
        x = x if isinstance(x, tuple) else (x,)
        return model.signal(*x).float().numpy()


def tiny_run(tiny_db, *overrides: str):
    """A TINY run's config, set-up data module and untrained ForecastModule."""
    tiny = [*TINY, "data=sqlite", f"data.path={tiny_db}", "periods_per_year=252"]
    cfg = compose_config([*tiny, "evaluation.bootstrap=0", *overrides])
    dm = instantiate(cfg.data, features=instantiate(cfg.features, _convert_="all"))
    dm.setup()
    build = functools.partial(instantiate, _convert_="all")
    model = ForecastModule(
        build(cfg.backbone, n_features=dm.n_features),
        build(cfg.head),
        build(cfg.loss),
        build(cfg.optim),
    )
    return cfg, dm, model


def test_precision_names_map_to_autocast_and_dtype():
    expected = {  # Lightning precision -> (autocast dtype, input / weight dtype)
        "32-true": (None, torch.float32),
        "16-mixed": (torch.float16, torch.float32),
        "bf16-mixed": (torch.bfloat16, torch.float32),
        "16-true": (None, torch.float16),
        "bf16-true": (None, torch.bfloat16),
        "64-true": (None, torch.float64),
    }
    for name, (autocast, dtype) in expected.items():
        device = InferenceDevice("cpu", name)
        assert (device.autocast_dtype, device.dtype) == (autocast, dtype), name
    aliases = {"32": "32-true", 32: "32-true", "16": "16-mixed", 16: "16-mixed"}
    aliases |= {"bf16": "bf16-mixed", "64": "64-true", 64: "64-true"}
    for alias, name in aliases.items():
        assert canonical_precision(alias) == name
        assert InferenceDevice("cpu", alias).precision == name
    with pytest.raises(ConfigError, match=r"trainer.precision='transformer-engine'.*bf16-mixed"):
        InferenceDevice("cpu", "transformer-engine")


def test_from_a_real_trainer_and_a_cuda_trainer():
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", logger=False)
    device = InferenceDevice.from_trainer(trainer)
    assert device == InferenceDevice(torch.device("cpu"), "bf16-mixed") and not device.pin_memory
    # what a CUDA trainer exposes (strategy.root_device, precision): the decision, no GPU needed
    cuda = SimpleNamespace(strategy=SimpleNamespace(root_device=torch.device("cuda", 1)))
    device = InferenceDevice.from_trainer(SimpleNamespace(**vars(cuda), precision="16-mixed"))
    assert device.device == torch.device("cuda", 1) and device.pin_memory
    assert device.autocast_dtype == torch.float16


def test_from_config_accelerators_and_overrides(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert InferenceDevice.from_config("cpu", "32-true").device == torch.device("cpu")
    assert InferenceDevice.from_config("auto", "32-true").device == torch.device("cpu")
    assert InferenceDevice.from_config("gpu", "bf16-mixed", "cpu").device.type == "cpu"
    with pytest.raises(ConfigError, match=r"accelerator='gpu'.*needs CUDA.*--device cpu"):
        InferenceDevice.from_config("gpu", "bf16-mixed")
    with pytest.raises(ConfigError, match="not a torch device"):
        InferenceDevice.from_config("cpu", "32-true", "warp-drive")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    for accelerator in ("gpu", "cuda", "auto"):
        device = InferenceDevice.from_config(accelerator, "bf16-mixed")
        assert device.device == torch.device("cuda", 0) and device.pin_memory
    assert InferenceDevice.from_config("gpu", "bf16", "cuda:3").device == torch.device("cuda", 3)


def test_fp32_cpu_predictions_equal_the_plain_loop():
    """The derived settings of a CPU fp32 trainer give exactly the old predictions."""
    model, dataset = _model(), _dataset()
    expected = _reference(model, dataset)
    model.train()
    trainer = L.Trainer(accelerator="cpu", precision="32-true", logger=False)
    got = predict_windows(model, dataset, 50, False, InferenceDevice.from_trainer(trainer))
    assert got.dtype == np.float32 and got.shape == (len(dataset), 2)
    np.testing.assert_array_equal(got, expected)
    np.testing.assert_array_equal(predict_windows(model, dataset, 7, False), expected)
    assert model.training  # its mode restored


def test_bf16_autocast_on_cpu_is_close_and_float32():
    model, dataset = _model(), _dataset()
    expected = _reference(model, dataset)
    got = predict_windows(model, dataset, 64, False, InferenceDevice("cpu", "bf16-mixed"))
    assert got.dtype == np.float32
    assert not np.array_equal(got, expected)  # autocast really ran in bf16
    np.testing.assert_allclose(got, expected, atol=0.05 * np.abs(expected).max())


def test_true_precision_runs_in_its_dtype_and_restores_the_default_dtype():
    model, dataset = _model(), _dataset()
    expected = _reference(model, dataset)
    model.to(torch.bfloat16)  # what Lightning's bf16-true does to the module
    got = predict_windows(model, dataset, 64, False, InferenceDevice("cpu", "bf16-true"))
    assert got.dtype == np.float32 and torch.get_default_dtype() == torch.float32
    np.testing.assert_allclose(got, expected, atol=0.1 * np.abs(expected).max())


def test_cuda_decision_path_moves_pins_autocasts_and_moves_back(monkeypatch):
    """Inference on cuda:0 in bf16-mixed, with CUDA replaced by recorders: the model goes to
    cuda:0 and back to the CPU, batches are pinned and copied non-blocking, autocast is CUDA
    bf16, the result is float32 on the CPU."""
    model, dataset = _model(), _dataset()
    expected = _reference(model, dataset)
    model.train()
    calls = {"to": [], "put": [], "autocast": [], "pin": []}
    real_to = model.to

    def fake_to(*args, **kwargs):  # record where the model is sent, keep it on the CPU
        calls["to"].append(torch.device(args[0]) if args else kwargs.get("device"))
        return real_to("cpu")

    def fake_put(self, tensor):
        calls["put"].append(self.pin_memory)  # pinned + non_blocking on CUDA
        return tensor

    @contextlib.contextmanager
    def fake_autocast(device_type, dtype):
        calls["autocast"].append((device_type, dtype))
        yield

    real_loader = predict_module.DataLoader

    def fake_loader(*args, **kwargs):
        calls["pin"].append(kwargs["pin_memory"])
        return real_loader(*args, **{**kwargs, "pin_memory": False})

    monkeypatch.setattr(model, "to", fake_to)
    monkeypatch.setattr(InferenceDevice, "put", fake_put)
    monkeypatch.setattr(torch, "autocast", fake_autocast)
    monkeypatch.setattr(predict_module, "DataLoader", fake_loader)
    got = predict_windows(model, dataset, 64, False, InferenceDevice("cuda:0", "bf16-mixed"))
    assert calls["to"] == [torch.device("cuda", 0), torch.device("cpu")]
    assert calls["pin"] == [True] and calls["put"] and all(calls["put"])
    assert calls["autocast"] == [("cuda", torch.bfloat16)]
    assert got.dtype == np.float32 and model.training
    np.testing.assert_array_equal(got, expected)  # the fakes ran it on the CPU in fp32


def test_model_ends_on_its_original_device_after_an_error():
    model = _model()
    broken = WindowDataset(np.zeros((20, 1, 5), np.float32), np.array([[18, 0]]), WINDOW)
    with pytest.raises(RuntimeError):  # 5 features into a 3-feature model
        predict_windows(model, broken, 8, False, InferenceDevice("cpu", "bf16-mixed"))
    assert model.training and next(model.parameters()).device.type == "cpu"
    assert torch.get_default_dtype() == torch.float32


@pytest.fixture
def restore_matmul():
    before = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    yield
    torch.set_float32_matmul_precision(before[0])
    torch.backends.cudnn.allow_tf32 = before[1]


def test_matmul_precision_sets_tf32_in_matmuls_and_cudnn_together(restore_matmul):
    for precision in MATMUL_PRECISIONS:
        set_matmul_precision(precision)
        tf32 = precision != "highest"
        assert torch.get_float32_matmul_precision() == precision
        assert torch.backends.cuda.matmul.allow_tf32 is tf32
        assert torch.backends.cudnn.allow_tf32 is tf32
    with pytest.raises(ConfigError, match="matmul_precision='fast'"):
        set_matmul_precision("fast")


def test_compile_wraps_what_training_and_inference_call(monkeypatch):
    """compile=true: the compiled function is what training steps and predictions run."""
    calls = []

    def fake_compile(fn, **kwargs):
        @functools.wraps(fn)
        def compiled(*args, **kw):
            calls.append(torch.is_grad_enabled())
            return fn(*args, **kw)

        return compiled

    monkeypatch.setattr(torch, "compile", fake_compile)
    model, dataset = _model(compile=True), _dataset(labelled=True)
    x, y = dataset.__getitems__([0, 1, 2, 3])
    model.log = lambda *a, **k: None  # no trainer attached
    model.training_step((x, y), 0).backward()
    assert calls == [True]
    predict_windows(model, _dataset(), 64, False, InferenceDevice("cpu", "bf16-mixed"))
    assert len(calls) > 1 and not any(calls[1:])  # inference: compiled, without autograd


@pytest.mark.slow
def test_compiled_training_then_inference_mode_equals_eager(monkeypatch):
    """compile=true with a real torch.compile (AOTAutograd; inductor needs a C++ toolchain and
    minutes here): a bf16-mixed Lightning fit, then predictions under inference_mode on the
    trainer's device and precision, equal those of an eager model with the same weights."""
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend="aot_eager"))
    compiled = _model(compile=True)
    assert hasattr(compiled._forward, "_torchdynamo_orig_callable")  # really compiled
    trainer = L.Trainer(
        accelerator="cpu",
        precision="bf16-mixed",
        max_epochs=1,
        limit_train_batches=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    loader = DataLoader(_dataset(labelled=True), batch_size=32, collate_fn=passthrough_collate)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(compiled, train_dataloaders=loader)
    eager = _model()
    eager.load_state_dict(compiled.state_dict())
    for device in (InferenceDevice.from_trainer(trainer), InferenceDevice("cpu")):
        got = predict_windows(compiled, _dataset(), 64, False, device)
        want = predict_windows(eager, _dataset(), 64, False, device)
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2 * np.abs(want).max())


@pytest.mark.parametrize("hardware", ["rtx4090", "h100"])
def test_gpu_hardware_decides_cuda_bf16_pinned_loaders_and_tf32(
    hardware, tiny_db, monkeypatch, restore_matmul
):
    """A composed hardware config: inference on cuda in bf16 autocast, TF32 on, and the data
    module's loaders pinned with persistent workers (no GPU: the decisions only)."""
    cfg = compose_config([f"hardware={hardware}", "data=sqlite", f"data.path={tiny_db}", *TINY])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    device = InferenceDevice.from_config(cfg.trainer.accelerator, cfg.trainer.precision)
    assert device == InferenceDevice("cuda:0", "bf16-mixed") and device.pin_memory
    set_matmul_precision(cfg.matmul_precision)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    dm = instantiate(cfg.data, features=instantiate(cfg.features, _convert_="all"))
    dm.setup()
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        assert loader.pin_memory and loader.persistent_workers
        assert loader.num_workers == cfg.data.num_workers > 0


def test_cpu_hardware_loaders_are_plain(tiny_db):
    cfg = compose_config(["data=sqlite", f"data.path={tiny_db}", *TINY])
    device = InferenceDevice.from_config(cfg.trainer.accelerator, cfg.trainer.precision)
    assert device == InferenceDevice("cpu", "32-true") and cfg.matmul_precision == "highest"
    dm = instantiate(cfg.data, features=instantiate(cfg.features, _convert_="all"))
    dm.setup()
    loader = dm.train_dataloader()
    assert not loader.pin_memory and not loader.persistent_workers and loader.num_workers == 0


@pytest.fixture
def spy_predict(monkeypatch) -> list[InferenceDevice | None]:
    """The `device` of every `predict_windows` call."""
    seen = []
    real = predict_module.predict_windows

    def spy(model, dataset, batch_size=1024, progress=True, device=None):
        seen.append(device)
        return real(model, dataset, batch_size, progress, device)

    monkeypatch.setattr(predict_module, "predict_windows", spy)
    return seen


def test_evaluate_predicts_on_the_trainer_device_and_precision(tiny_db, spy_predict):
    """After a bf16-mixed fit on the CPU, the validation backtest and every walk-forward block
    (refitted ones too) predict under bf16 autocast, and the model stays on its device."""
    from plusultra.training.evaluate import evaluate
    from plusultra.training.walk_forward import WalkForward

    cfg, dm, model = tiny_run(tiny_db)
    build = functools.partial(instantiate, _convert_="all")
    settings = dict(accelerator="cpu", precision="bf16-mixed", logger=False, max_epochs=1)
    settings |= dict(enable_progress_bar=False, enable_model_summary=False)
    settings |= dict(limit_train_batches=2, limit_val_batches=1, num_sanity_val_steps=0)

    def make_trainer(*extra, **overrides):
        return L.Trainer(**(settings | {"enable_checkpointing": False} | overrides))

    trainer = make_trainer()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(model, datamodule=dm)
        walk = WalkForward(refit_every=40)
        result = evaluate(
            model, dm, trainer, make_trainer, walk, build(cfg.evaluation), build(cfg.simulator)
        )
    assert len(result.walk.blocks) >= 2 and result.walk.blocks[1].refit
    assert spy_predict == [InferenceDevice("cpu", "bf16-mixed")] * (1 + len(result.walk.blocks))
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.slow
def test_a_run_predicts_everywhere_on_the_trainer_precision(tiny_db, tmp_path, spy_predict):
    """`plusultra trainer.precision=bf16-mixed` on CPU: the validation backtest and the
    walk-forward test predictions run under bf16 autocast (not fp32), and plusultra-predict uses
    the run's precision by default (equal to the run's predictions) or the one it is given."""
    from plusultra.cli.predict import predict
    from tests.test_run import run_in_process

    seen = spy_predict
    overrides = ["data=sqlite", f"data.path={tiny_db}", "trainer.precision=bf16-mixed"]
    cfg = compose_config([*TINY, *overrides, "walk_forward.refit_every=40"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    (tmp_path / "run").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, run_dir = run_in_process(cfg)
    # validation backtest + at least two walk-forward blocks (one refitted)
    assert len(seen) >= 3 and set(seen) == {InferenceDevice("cpu", "bf16-mixed")}

    ours = pd.read_parquet(run_dir / "predictions.parquet")
    same = pd.read_parquet(predict(run_dir, str(tiny_db), tmp_path / "a.pq", 256, None, None))
    assert seen[-1] == InferenceDevice("cpu", "bf16-mixed")  # the run's precision
    merged = ours.merge(same, on=["symbol", "timestamp"], suffixes=("", "_cli"))
    last = pd.read_parquet(run_dir / "walk_forward.parquet")["start"].max()
    merged = merged[merged["timestamp"] >= last]  # the CLI predicts with the last block's model
    assert len(merged) > 0
    np.testing.assert_allclose(merged["pred_1"], merged["pred_1_cli"], rtol=1e-5, atol=1e-7)
    fp32 = tmp_path / "b.pq"
    predict(run_dir, str(tiny_db), fp32, 256, None, None, False, None, "cpu", "32-true")
    assert seen[-1] == InferenceDevice("cpu", "32-true")


# ------------------------------------------------------------------ experiments/benchmarks/gpu.py


def test_flop_count_of_a_linear_stack_matches_the_hand_formula():
    """Forward: 2*B*in*out per Linear. Training step: + grad weights (2*B*in*out per layer) and
    grad inputs (2*B*in*out, except the first layer: its input needs no gradient)."""
    from experiments.benchmarks.gpu import count_flops

    b, dims = 8, [12, 32, 16, 4]
    torch.manual_seed(0)
    layers = [nn.Linear(i, o) for i, o in zip(dims[:-1], dims[1:], strict=True)]
    net = nn.Sequential(*layers)
    x = torch.randn(b, dims[0])
    per_layer = [2 * b * i * o for i, o in zip(dims[:-1], dims[1:], strict=True)]
    with torch.no_grad():
        assert count_flops(lambda: net(x)) == sum(per_layer)
    step = count_flops(lambda: net(x).pow(2).sum().backward())
    assert step == sum(per_layer) * 3 - per_layer[0]


def test_peak_flops_by_device_name_and_mfu_arithmetic():
    from experiments.benchmarks.gpu import mfu, peak_bf16_flops

    assert peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert peak_bf16_flops("NVIDIA H100 PCIe") == 756e12
    assert peak_bf16_flops("NVIDIA H200") == 989e12
    assert peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert peak_bf16_flops("NVIDIA GeForce RTX 4090") == 165.2e12
    assert peak_bf16_flops("NVIDIA L4") == 121e12 and peak_bf16_flops("NVIDIA L40S") == 362e12
    assert peak_bf16_flops("Tesla T4") is None
    assert mfu(4e12, 0.01, 1e15) == pytest.approx(0.4)  # 4 TFLOP in 10 ms = 400 TFLOP/s
    assert mfu(4e12, 0.01, None) is None


def test_gpu_benchmark_step_and_report_on_cpu():
    """The measured step (run here on the CPU, without memory figures) and its table row."""
    from experiments.benchmarks.gpu import markdown, measure

    config = {
        "_target_": "plusultra.models.backbones.transformer.TransformerBackbone",
        **dict(d_model=16, depth=1, n_heads=2, mlp_ratio=4.0, dropout=0.0, max_len=WINDOW),
    }
    row = measure("transformer", config, WINDOW, 3, 4, False, 2, device="cpu") | {"status": "ok"}
    assert row["flops_per_step"] > 0 and row["samples_per_s"] > 0
    assert row["peak_memory_gib"] is None
    size = {"size": ["depth=1"], "n_features": 3}
    text = markdown([row], "NVIDIA H100 PCIe", 756e12, 2, size)
    assert "| transformer | eager | 4 |" in text and "1.00x" in text and "n/a | ok |" in text
    assert "MFU omitted" in markdown([row], "Tesla T4", None, 2, size)


def test_gpu_benchmark_skips_without_cuda(tmp_path, monkeypatch):
    """No CUDA: a clear message, exit 0, the JSON says why, docs/benchmarks.md untouched."""
    from experiments.benchmarks import _report, gpu

    def refuse(*args, **kwargs):
        raise AssertionError("docs/benchmarks.md must not be written without CUDA")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu, "write_section", refuse)
    before = _report.DOC.read_bytes()
    out = tmp_path / "gpu.json"
    assert gpu.main(["--quick", "--out", str(out)]) == 0
    assert _report.DOC.read_bytes() == before
    assert "no CUDA device" in json.loads(out.read_text())["skipped"]


def test_gpu_benchmark_halves_the_batch_on_oom_and_names_other_failures(monkeypatch):
    from experiments.benchmarks import gpu

    calls = []

    def fake_measure(name, config, window, n_features, batch, compiled, steps):
        calls.append(batch)
        if batch > 8:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory")
        return {"backbone": name, "batch": batch}

    monkeypatch.setattr(gpu, "measure", fake_measure)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: None)
    size = {"configs": {"hybrid": {}}, "window": WINDOW, "n_features": 3}
    row = gpu.measure_or_shrink("hybrid", size, 32, False, 1)
    assert calls == [32, 16, 8] and row["status"] == "ok at batch 8 (OOM at 32)"
    assert gpu.measure_or_shrink("hybrid", size, 64, True, 1)["status"] == "OOM down to batch 16"

    def broken(*args):
        raise ValueError("no kernel\nfor this")

    monkeypatch.setattr(gpu, "measure", broken)
    row = gpu.measure_or_shrink("hybrid", size, 32, True, 1)
    assert row == {
        "backbone": "hybrid",
        "mode": "compiled",
        "batch": 32,
        "status": "failed: ValueError: no kernel",
    }


def test_without_settings_the_model_runs_where_it_is_in_its_dtype():
    model = _model()
    assert InferenceDevice.of_model(model) == InferenceDevice("cpu", "32-true")
    assert InferenceDevice.of_model(model.to(torch.float64)) == InferenceDevice("cpu", "64-true")
    got = predict_windows(model, _dataset(), 64, False)  # float64 weights: float64 inputs
    assert got.dtype == np.float32 and got.shape == (len(_dataset()), 2)


@pytest.mark.parametrize("outer_inference_mode", [False, True])
def test_moved_weights_stay_trainable(outer_inference_mode):
    """A move that copies every weight (as cpu <-> cuda does) made under inference mode would
    leave inference tensors that autograd refuses in the next fit (a walk-forward refit); the
    moves happen outside it, also when the caller is in inference mode (Lightning's validation
    loop runs the pruning backtest)."""
    model = _model()

    def copying_to(*args, **kwargs):  # a CPU stand-in for a device move: new tensors
        nn.Module.to(model, torch.float64)
        return nn.Module.to(model, torch.float32)

    model.to = copying_to
    outer = torch.inference_mode() if outer_inference_mode else contextlib.nullcontext()
    with outer:
        predict_windows(model, _dataset(), 64, False, InferenceDevice("cpu", "bf16-mixed"))
    assert not any(p.is_inference() for p in model.parameters())
    model(torch.randn(4, WINDOW, 3)).pow(2).mean().backward()  # trains again
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------ on a CUDA device (-m gpu)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_cuda_inference_after_a_bf16_fit_and_a_refit(tiny_db, spy_predict):
    """On a real GPU: a bf16-mixed fit, then the validation backtest and walk-forward (with a
    refit) predict on cuda:0 under bf16 autocast; the model ends on the CPU with trainable
    weights, and the predictions are close to a float32 CPU pass."""
    from plusultra.training.evaluate import evaluate
    from plusultra.training.walk_forward import WalkForward

    cfg, dm, model = tiny_run(tiny_db, "data.pin_memory=true")
    build = functools.partial(instantiate, _convert_="all")
    settings = dict(accelerator="gpu", devices=1, precision="bf16-mixed", logger=False)
    settings |= dict(max_epochs=1, limit_train_batches=2, limit_val_batches=1)
    settings |= dict(num_sanity_val_steps=0, enable_progress_bar=False)

    def make_trainer(*extra, **overrides):
        return L.Trainer(**(settings | {"enable_checkpointing": False} | overrides))

    trainer = make_trainer()
    trainer.fit(model, datamodule=dm)
    walk = WalkForward(refit_every=40, warm_start=False)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    evaluate(model, dm, trainer, make_trainer, walk, build(cfg.evaluation), build(cfg.simulator),
             initial)  # fmt: skip
    assert set(spy_predict) == {InferenceDevice("cuda:0", "bf16-mixed")}
    assert all(p.device.type == "cpu" and not p.is_inference() for p in model.parameters())
    dataset = dm.inference_dataset("val")
    on_gpu = predict_windows(model, dataset, 256, False, InferenceDevice("cuda:0", "bf16-mixed"))
    on_cpu = predict_windows(model, dataset, 256, False, InferenceDevice("cpu"))
    assert on_gpu.dtype == np.float32
    np.testing.assert_allclose(on_gpu, on_cpu, atol=0.05 * np.abs(on_cpu).max())
