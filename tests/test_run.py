"""End to end in-process: the real config, shrunk, trains, evaluates and writes its outputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from plusultra.cli.predict import predict
from plusultra.run import train
from tests.test_data import _perturb_after


def run_in_process(cfg: DictConfig) -> tuple[float, Path]:
    """Run the task function the way Hydra does: HydraConfig set, task config without `hydra`."""
    HydraConfig.instance().set_config(cfg)
    run_dir = Path(cfg.hydra.runtime.output_dir)
    task = cfg.copy()
    with open_dict(task):
        del task["hydra"]
    return train(task), run_dir


WRITE_ORDER: dict[str, set[str]] = {}


@pytest.fixture(scope="module")
def finished_run(tiny_db, tmp_path_factory):
    """One tiny run shared by the tests below (trains for a few batches)."""
    from tests.conftest import TINY, compose_config

    tmp = tmp_path_factory.mktemp("e2e")
    cfg = compose_config([*TINY, "data=sqlite", f"data.path={tiny_db}", "seed=11"])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp)
        cfg.hydra.runtime.output_dir = str(tmp / "run")
    (tmp / "run").mkdir()
    import plusultra.run as run_module

    order = WRITE_ORDER  # what the run dir held when the reports and metrics.json were written

    def spy(name, real):
        def wrapped(run_dir, *args, **kwargs):
            order[name] = {p.name for p in Path(run_dir).iterdir()}
            return real(run_dir, *args, **kwargs)

        return wrapped

    with pytest.MonkeyPatch.context() as mp:
        for name in ("write_reports", "write_metrics"):
            mp.setattr(run_module, name, spy(name, getattr(run_module, name)))
        value, run_dir = run_in_process(cfg)
    return value, run_dir, tiny_db


def test_run_writes_every_output(finished_run):
    value, run_dir, _ = finished_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert value == pytest.approx(metrics["val_loss"])
    for key in (
        "val_loss",
        "test_loss",
        "test_sharpe",
        "test_total_return",
        "test_max_drawdown",
        "test_sortino",
        "test_calmar",
        "test_hit_rate",
        "test_turnover",
        "test_annual_return",
        "test_annual_volatility",
        "test_buyhold_sharpe",
        "test_buyhold_total_return",
        "test_equal_weight_sharpe",
        "test_momentum_sharpe",
        "test_mean_reversion_sharpe",
        "test_ridge_sharpe",
        "test_sharpe_lo",
        "test_sharpe_hi",
        "test_annual_return_lo",
        "test_max_drawdown_duration",
        "test_cvar_95",
        "test_information_ratio",
        "test_skew",
        "test_kurtosis",
        "walk_forward_blocks",
        "n_params",
        "train_samples",
        "test_samples",
    ):
        assert key in metrics, key
        if key.startswith("test_") and not key.endswith(("_loss", "_samples")):
            assert key.replace("test_", "val_", 1) in metrics, key  # the same backtest on val
    assert metrics["n_params"] > 0 and metrics["test_max_drawdown"] <= 0
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    assert list(preds.columns) == [
        "symbol",
        "timestamp",
        "pred_1",
        "pred_2",
        "position",
        "realized_return",
    ]
    assert np.isfinite(preds[["pred_1", "pred_2", "position"]].to_numpy()).all()
    gross = preds.groupby("timestamp")["position"].apply(lambda p: p.abs().sum())
    np.testing.assert_allclose(gross.to_numpy()[:-1], 1.0)
    for name in (
        "report.md",
        "config.yaml",
        "normalisation.json",
        "data.json",
        "backtest.parquet",
        "val_backtest.parquet",
        "checkpoints/best.ckpt",
    ):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    # training curves under the curriculum stage's prefix; evaluation's val/* after it
    stage = {"supervised/train/loss_step", "supervised/train/loss_epoch", "supervised/val/loss"}
    assert stage | {"val/loss", "val/naive_loss"} <= tags
    assert len(events.Scalars("supervised/train/loss_step")) >= 1
    assert len(events.Scalars("val/loss")) >= 1
    html = (run_dir / "report.html").read_text()
    # 5 performance plots (frictionless: no cost plot) + the drift and diagnostics plots
    assert html.count('src="data:image/png;base64,') == 7
    assert "http://" not in html and "https://" not in html
    report = (run_dir / "report.md").read_text()
    assert "Sharpe" in report and "buy & hold" in report


def test_validation_backtest_and_metrics_json_written_last(finished_run):
    """Val metrics: one backtest of the val segment by the model selected on val; metrics.json
    is written after every other output (reports included), so its presence marks a run done."""
    _, run_dir, _ = finished_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    segments = json.loads((run_dir / "data.json").read_text())["segment_dates"]
    val = pd.read_parquet(run_dir / "val_backtest.parquet")
    assert str(val.index.min().date()) == segments["val"][0]
    assert str(val.index.max().date()) <= segments["val"][1]
    assert metrics["val_n_periods"] == len(val)
    assert np.prod(1 + val["strategy_return"]) - 1 == pytest.approx(metrics["val_total_return"])
    assert metrics["val_loss"] == pytest.approx(metrics["supervised_best_val_loss"])  # restored
    assert {"buyhold_return", "ridge_return"} <= set(val.columns)  # baselines on val too
    order = WRITE_ORDER
    assert "metrics.json" not in order["write_reports"]
    assert {"report.html", "report.md", "predictions.parquet"} <= order["write_metrics"]
    assert "metrics.json" not in order["write_metrics"]
    from plusultra.evaluation.report.summary import summary_rows

    (sharpe,) = [r for r in summary_rows(metrics) if r[0] == "Sharpe"]
    assert sharpe[1] == f"{metrics['val_sharpe']:.2f}"  # the val column of the summary


def test_test_predictions_are_in_the_test_segment(finished_run):
    _, run_dir, _ = finished_run
    data = json.loads((run_dir / "data.json").read_text())
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    first_test = pd.Timestamp(data["segment_dates"]["test"][0])
    assert preds["timestamp"].min() >= first_test
    backtest = pd.read_parquet(run_dir / "backtest.parquet")
    assert {"strategy_return", "strategy_equity", "buyhold_equity"} <= set(backtest.columns)


def test_predict_cli_reproduces_the_runs_test_predictions(finished_run, tmp_path):
    """`plusultra-predict` and the run share one code path: same rows, same numbers."""
    _, run_dir, db = finished_run
    out = predict(run_dir, str(db), tmp_path / "p.parquet", 256, None, None, progress=False)
    full = pd.read_parquet(out)
    ours = pd.read_parquet(run_dir / "predictions.parquet")
    merged = ours.merge(full, on=["symbol", "timestamp"], suffixes=("", "_cli"))
    assert len(merged) == len(ours)
    np.testing.assert_allclose(merged["pred_1"], merged["pred_1_cli"], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(merged["position"], merged["position_cli"], atol=1e-9)
    assert full["timestamp"].min() < ours["timestamp"].min()  # every window, not only test


def test_predictions_before_t_do_not_move_when_the_future_changes(finished_run, tmp_path):
    """Perturb every row after T: the trained model's predictions at t <= T are identical."""
    _, run_dir, db = finished_run
    base = pd.read_parquet(
        predict(run_dir, str(db), tmp_path / "a.parquet", 256, None, None, progress=False)
    )
    stamps = np.sort(base["timestamp"].unique())
    cutoff = pd.Timestamp(stamps[len(stamps) // 2])
    moved_db = tmp_path / "moved.sqlite"
    shutil.copy(db, moved_db)
    _perturb_after(moved_db, str(cutoff.date()))
    moved = pd.read_parquet(
        predict(run_dir, str(moved_db), tmp_path / "b.parquet", 256, None, None, progress=False)
    )
    past_a = base[base.timestamp <= cutoff].reset_index(drop=True)
    past_b = moved[moved.timestamp <= cutoff].reset_index(drop=True)
    # forecasts and positions at t <= T are identical; the realized return of a decision at t
    # is its outcome under next-open fills (open t+1 -> open t+2), known at bar t + 2, so it may
    # change only for the last two decisions t = T - 1, T (it is never a model input)
    outcome = "realized_return"
    pd.testing.assert_frame_equal(past_a.drop(columns=outcome), past_b.drop(columns=outcome))
    assert json.loads((run_dir / "metrics.json").read_text())["execution"] == "next_open"
    before = past_a.timestamp < stamps[len(stamps) // 2 - 1]
    pd.testing.assert_series_equal(past_a.loc[before, outcome], past_b.loc[before, outcome])
    fut_a = base[base.timestamp > cutoff]["pred_1"].to_numpy()
    fut_b = moved[moved.timestamp > cutoff]["pred_1"].to_numpy()
    assert not np.allclose(fut_a, fut_b), "the perturbation must change future predictions"


def test_predict_rejects_an_unfinished_run(finished_run, tmp_path):
    from plusultra.errors import DataError

    _, run_dir, db = finished_run
    partial = tmp_path / "partial"
    shutil.copytree(run_dir, partial)
    (partial / "metrics.json").unlink()
    with pytest.raises(DataError, match="not a finished run: missing metrics.json"):
        predict(partial, str(db), tmp_path / "x.parquet", 256, None, None, progress=False)


def test_seeded_runs_are_reproducible(tiny_db, tmp_path):
    """Same seed, same config: the same validation loss (pinned behaviour of a tiny run)."""
    from tests.conftest import TINY, compose_config

    losses = []
    for i in range(2):
        cfg = compose_config([*TINY, "data=sqlite", f"data.path={tiny_db}", "seed=5"])
        with open_dict(cfg):
            cfg.paths.output_dir = str(tmp_path / str(i))
            cfg.hydra.runtime.output_dir = str(tmp_path / str(i) / "run")
        (tmp_path / str(i) / "run").mkdir(parents=True)
        losses.append(run_in_process(cfg)[0])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)


def _tiny_cfg(tiny_db, tmp_path, *extra):
    from tests.conftest import TINY, compose_config

    cfg = compose_config([*TINY, "data=sqlite", f"data.path={tiny_db}", *extra])
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path)
        cfg.hydra.runtime.output_dir = str(tmp_path / "run")
    (tmp_path / "run").mkdir(parents=True, exist_ok=True)
    return cfg


def test_fast_dev_run_end_to_end(tiny_db, tmp_path):
    """Lightning's smoke mode (one batch, no checkpoints) still produces a complete run."""
    value, run_dir = run_in_process(_tiny_cfg(tiny_db, tmp_path, "trainer.fast_dev_run=true"))
    assert np.isfinite(value)
    assert (run_dir / "metrics.json").is_file() and (run_dir / "predictions.parquet").is_file()


# val/loss of the seed-5 tiny run on the seed-3 tiny fixture (hybrid with its SSM mixer, Mamba-2
# parameterisation and SSD scan since issue 11; since exact resume, each epoch's order is drawn
# from (sampler seed, epoch) and each stage starts from a seed derived from the run's),
# recorded on torch 2.13.0 CPU.
PINNED_VAL_LOSS = 1.99255


def test_tiny_run_loss_is_pinned(tiny_db, tmp_path):
    """Seeded tiny run: val loss equals the recorded value (catches silent behaviour changes)."""
    value, _ = run_in_process(_tiny_cfg(tiny_db, tmp_path, "seed=5"))
    assert value == pytest.approx(PINNED_VAL_LOSS, abs=1e-4)


@pytest.mark.parametrize(
    ("head", "loss"),
    [
        ("quantile", "pinball"),
        ("calibrated", "calibrated"),
        ("policy", "sharpe"),
        ("regression", "risk_aware"),
        ("regression", "huber"),
        ("policy", "cvar"),
    ],
)
def test_every_head_trains_end_to_end(tiny_db, tmp_path, head, loss):
    """Each head option with a loss that accepts it: a complete run with finite metrics."""
    value, run_dir = run_in_process(_tiny_cfg(tiny_db, tmp_path, f"head={head}", f"loss={loss}"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(value) and np.isfinite(metrics["val_naive_loss"])
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    steps = [c for c in preds.columns if c.startswith("pred_")]
    assert steps == (["pred_1"] if head == "policy" else ["pred_1", "pred_2"])
    if head == "policy":
        assert preds["pred_1"].between(-1, 1).all()
    if head == "calibrated":
        assert 0 <= metrics["val_calibration_error"] <= 1


def test_incompatible_head_and_loss_is_a_config_error(tiny_db, tmp_path):
    from plusultra.errors import ConfigError

    with pytest.raises(Exception) as info:
        run_in_process(_tiny_cfg(tiny_db, tmp_path, "head=quantile", "loss=mse"))
    chain, e = [], info.value
    while e is not None:
        chain.append(e)
        e = e.__cause__ or e.__context__
    assert any(isinstance(c, ConfigError) and "does not accept head kind" in str(c) for c in chain)


@pytest.mark.parametrize(
    "backbone",
    sorted(p.stem for p in (Path(__file__).parents[1] / "conf" / "backbone").glob("*.yaml")),
)
def test_every_backbone_trains_end_to_end(tiny_db, tmp_path, backbone):
    """Each backbone option trains a few steps through the real pipeline."""
    extra = {"moe": ["depth=24"], "multiscale": ["window=32"]}.get(backbone, [])
    value, run_dir = run_in_process(_tiny_cfg(tiny_db, tmp_path, f"backbone={backbone}", *extra))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(value) and metrics["n_params"] > 0
    if backbone == "moe":
        assert metrics["val_aux_loss"] > 0 and 0 <= metrics["val_moe_dropped_frac"] <= 1
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run_dir / "tensorboard"))
        events.Reload()
        assert "supervised/train/aux_loss_step" in events.Tags()["scalars"]  # stage prefix


def test_market_state_embedding_is_an_ablation_switch(tiny_db, tmp_path):
    """data.conditioning adds embedded regime labels to the inputs; predict reuses them."""
    from plusultra.data.io.fixture import generate_fixture

    tiny_db = generate_fixture(tmp_path / "long.sqlite", 6, 700, seed=3)  # regime warm-up ~270
    on = ["data.conditioning=[volatility,liquidity]", "market_state.dim=4"]
    _, with_run = run_in_process(_tiny_cfg(tiny_db, tmp_path / "on", *on))
    _, without_run = run_in_process(_tiny_cfg(tiny_db, tmp_path / "off"))
    m_on = json.loads((with_run / "metrics.json").read_text())
    m_off = json.loads((without_run / "metrics.json").read_text())
    tables = 4 * (4 + 4)  # dim x (3 classes + unknown) per label
    assert m_on["n_params"] > m_off["n_params"] + tables - 1
    state = torch.load(with_run / "checkpoints" / "best.ckpt", weights_only=True)["state_dict"]
    assert state["embedding.tables.0.weight"].shape == (4, 4)
    data = json.loads((with_run / "data.json").read_text())
    assert data["loader"]["conditioning"] == ["volatility", "liquidity"]
    out = predict(with_run, str(tiny_db), tmp_path / "p.parquet", 256, None, None, progress=False)
    ours = pd.read_parquet(with_run / "predictions.parquet")
    merged = ours.merge(pd.read_parquet(out), on=["symbol", "timestamp"], suffixes=("", "_cli"))
    assert len(merged) == len(ours)
    np.testing.assert_allclose(merged["pred_1"], merged["pred_1_cli"], rtol=1e-5, atol=1e-7)


def test_realistic_simulator_backtest(tiny_db, tmp_path):
    """simulator=realistic: costs reach the metrics; every baseline runs on the same simulator."""
    _, base_dir = run_in_process(_tiny_cfg(tiny_db, tmp_path / "f", "seed=3"))
    _, real_dir = run_in_process(
        _tiny_cfg(
            tiny_db, tmp_path / "r", "seed=3", "simulator=realistic", "simulator.commission_bps=10"
        )
    )
    free = json.loads((base_dir / "metrics.json").read_text())
    real = json.loads((real_dir / "metrics.json").read_text())
    assert free["test_loss"] == pytest.approx(real["test_loss"])  # same model
    assert real["test_total_return"] < free["test_total_return"]  # costs bite
    assert real["test_cost_share"] is None or real["test_cost_share"] > 0
    for name in ("buyhold", "equal_weight", "momentum", "mean_reversion", "ridge"):
        assert f"test_{name}_sharpe" in real
    assert real["test_n_trades"] > 0 and 0 <= real["test_win_rate"] <= 1
    lo, hi = real["test_sharpe_lo"], real["test_sharpe_hi"]
    assert lo <= real["test_sharpe"] <= hi


def test_run_records_the_periods_per_year_it_used(finished_run):
    """Daily business-day bars: 252, derived (the root key is null), in metrics and report."""
    _, run_dir, _ = finished_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["periods_per_year"] == 252
    report = (run_dir / "report.md").read_text()
    assert "Annualisation: 252 bars a year" in report
    config = (run_dir / "config.yaml").read_text()  # the resolved config plusultra-predict reads
    assert "periods_per_year: 252" in config and "periods_per_year: null" not in config
