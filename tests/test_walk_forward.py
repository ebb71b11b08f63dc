"""Walk-forward evaluation with rolling refits: the blocks, the refitted ridge baseline, and end
to end runs (block 0 is the single-fit model, later blocks move, the past never sees the future).
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from plusultra.cli.predict import predict
from plusultra.data.datasets.windows import Segments
from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.backtest import baselines as strategies
from plusultra.evaluation.backtest.positions import positions_from_signal
from plusultra.training.walk_forward import Fold, WalkForward
from tests.test_data import _perturb_after
from tests.test_run import _tiny_cfg, run_in_process

# ----------------------------------------------------------------------------- blocks

SEG = Segments(
    train=(15, 200), val=(238, 280), test=(318, 399), train_end=202, val_end=282, embargo=36
)


def test_no_refit_is_one_block_over_the_test_segment():
    assert WalkForward().folds(SEG.train, SEG.test, SEG.embargo) == [
        Fold(0, 318, 399, 15, 200, refit=False)
    ]


@pytest.mark.parametrize("every", [1, 7, 20, 82, 500])
@pytest.mark.parametrize("train_bars", [None, 50])
def test_blocks_tile_the_test_segment_and_train_only_on_known_labels(every, train_bars):
    horizon = 2
    folds = WalkForward(refit_every=every, train_bars=train_bars).folds(
        SEG.train, SEG.test, SEG.embargo
    )
    bars = np.concatenate([np.arange(f.lo, f.hi + 1) for f in folds])
    np.testing.assert_array_equal(bars, np.arange(318, 400))  # every test bar, once, in order
    assert [f.fold for f in folds] == list(range(len(folds)))
    assert all(f.hi - f.lo + 1 == every for f in folds[:-1])
    assert folds[0].refit is False and (folds[0].fit_lo, folds[0].fit_hi) == SEG.train
    for f in folds[1:]:
        assert f.refit
        assert f.fit_hi == f.lo - SEG.embargo
        assert f.fit_hi + horizon < f.lo  # the last training label ended before the block
        want_lo = SEG.train[0] if train_bars is None else max(15, f.fit_hi - train_bars + 1)
        assert f.fit_lo == want_lo


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"refit_every": 0}, "walk_forward.refit_every must be null or an integer >= 1"),
        ({"refit_every": True}, "walk_forward.refit_every"),
        ({"refit_every": 2.5}, "walk_forward.refit_every"),
        ({"train_bars": 0}, "walk_forward.train_bars"),
        ({"epochs": 0}, "walk_forward.epochs"),
        ({"epochs": None}, "walk_forward.epochs"),
        ({"warm_start": "yes"}, "walk_forward.warm_start"),
    ],
)
def test_bad_settings_are_refused_by_name(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        WalkForward(**kwargs)


def test_a_refit_without_training_bars_is_refused():
    seg = Segments(
        train=(15, 20), val=(30, 40), test=(50, 90), train_end=22, val_end=42, embargo=60
    )
    with pytest.raises(DataError, match="block 1 .* has no training bar"):
        WalkForward(refit_every=10).folds(seg.train, seg.test, seg.embargo)


# ----------------------------------------------------------------------------- ridge refits


def _ridge_panel(seed=0, t=120, s=6, f=3):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(t, s, f))
    y = x @ np.array([0.5, -0.2, 0.1]) + 0.3 * rng.normal(size=(t, s))
    tradable = np.ones((t, s), dtype=bool)
    tradable[:, -1] = np.arange(t) % 4 != 0
    return x, y, tradable


def _naive_ridge_rows(x, y, tradable, fit_lo, fit_hi, lo, hi, alpha=1.0):
    """Reference: collect the training samples one by one, fit, predict rows lo..hi."""
    xs, ys = [], []
    for t in range(fit_lo, fit_hi + 1):
        for s in range(x.shape[1]):
            if tradable[t, s] and np.isfinite(y[t, s]) and np.isfinite(x[t, s]).all():
                xs.append(x[t, s])
                ys.append(y[t, s])
    w, b = strategies.fit_ridge(np.array(xs), np.array(ys), alpha)
    pred = np.where(tradable, x @ w + b, np.nan)
    return positions_from_signal(pred, "rank")[lo : hi + 1]


def test_walk_forward_ridge_matches_a_per_block_reference():
    x, y, tradable = _ridge_panel()
    refits = [(0, 59, 70, 84), (0, 74, 85, 99), (30, 89, 100, 119)]
    got = strategies.walk_forward_ridge_weights(x, y, tradable, refits)
    for fit_lo, fit_hi, lo, hi in refits:
        want = _naive_ridge_rows(x, y, tradable, fit_lo, fit_hi, lo, hi)
        np.testing.assert_allclose(got[lo : hi + 1], want, atol=1e-12)
    assert not got[:70].any()  # outside the blocks: flat


def test_walk_forward_ridge_ignores_labels_outside_each_training_window():
    x, y, tradable = _ridge_panel()
    refits = [(10, 59, 70, 84), (20, 74, 85, 99)]
    base = strategies.walk_forward_ridge_weights(x, y, tradable, refits)
    moved = y.copy()
    moved[:10] += 5.0  # before every window
    moved[75:] -= 5.0  # after every window
    np.testing.assert_array_equal(
        strategies.walk_forward_ridge_weights(x, moved, tradable, refits), base
    )
    moved[60:75] += 5.0  # inside the second block's window only
    again = strategies.walk_forward_ridge_weights(x, moved, tradable, refits)
    np.testing.assert_array_equal(again[70:85], base[70:85])
    assert not np.allclose(again[85:100], base[85:100])


def test_ridge_train_start_after_train_end_is_refused():
    x, y, tradable = _ridge_panel()
    with pytest.raises(ConfigError, match="train_start=50 must be <= train_end=40"):
        strategies.ridge_weights(x, y, tradable, 40, train_start=50)


# ----------------------------------------------------------------------------- end to end

EVERY = 20


@pytest.fixture(scope="module")
def runs(tiny_db, tmp_path_factory):
    """The same tiny experiment without and with refits every 20 bars (same seed)."""
    out = {}
    for name, extra in (("single", []), ("refit", [f"walk_forward.refit_every={EVERY}"])):
        tmp = tmp_path_factory.mktemp(name)
        _, out[name] = run_in_process(_tiny_cfg(tiny_db, tmp, "seed=11", *extra))
    return out


def _preds(run_dir):
    return pd.read_parquet(run_dir / "predictions.parquet")


def test_refit_run_writes_its_blocks(runs):
    run_dir = runs["refit"]
    blocks = pd.read_parquet(run_dir / "walk_forward.parquet")
    data = json.loads((run_dir / "data.json").read_text())
    lo, hi = data["segments"]["test"]
    assert len(blocks) == -(-(hi - lo + 1) // EVERY)
    assert blocks["refit"].tolist() == [False] + [True] * (len(blocks) - 1)
    assert (blocks["lo"].diff().dropna() == EVERY).all()
    assert (blocks.loc[1:, "fit_hi"] == blocks.loc[1:, "lo"] - data["segments"]["embargo"]).all()
    assert (blocks["fit_samples"].diff().dropna() > 0).all()  # expanding window
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["walk_forward_blocks"] == len(blocks)
    tested = blocks[blocks.test_samples > 0]
    want = np.average(tested.test_loss, weights=tested.test_samples)
    assert metrics["test_loss"] == pytest.approx(want, rel=1e-9)
    assert (run_dir / "checkpoints" / "walk_forward.ckpt").is_file()
    single = pd.read_parquet(runs["single"] / "walk_forward.parquet")
    assert len(single) == 1 and not single["refit"].any()
    assert not (runs["single"] / "checkpoints" / "walk_forward.ckpt").exists()
    report = (run_dir / "report.md").read_text()
    assert "By walk-forward block" in report
    assert "Dotted lines: the model (and ridge) refitted" in report  # refits marked on equity
    single_report = (runs["single"] / "report.md").read_text()
    assert "By walk-forward block" not in single_report and "Dotted lines" not in single_report


def test_block_zero_is_the_single_fit_model_and_refits_move_later_blocks(runs):
    blocks = pd.read_parquet(runs["refit"] / "walk_forward.parquet")
    first_end = blocks["end"].iloc[0]
    a, b = _preds(runs["single"]), _preds(runs["refit"])
    pd.testing.assert_frame_equal(a[["symbol", "timestamp"]], b[["symbol", "timestamp"]])
    early = a.timestamp <= first_end
    np.testing.assert_allclose(a.loc[early, "pred_1"], b.loc[early, "pred_1"], rtol=1e-5)
    assert not np.allclose(a.loc[~early, "pred_1"], b.loc[~early, "pred_1"])
    # the ridge baseline is refitted on the same schedule
    ta = pd.read_parquet(runs["single"] / "backtest.parquet")
    tb = pd.read_parquet(runs["refit"] / "backtest.parquet")
    in_first = ta.index <= first_end
    np.testing.assert_allclose(ta.ridge_return[in_first], tb.ridge_return[in_first], atol=1e-12)
    assert not np.allclose(ta.ridge_return[~in_first], tb.ridge_return[~in_first])
    np.testing.assert_array_equal(ta.buyhold_return, tb.buyhold_return)


def test_predict_uses_the_last_refit(runs, tiny_db, tmp_path):
    run_dir = runs["refit"]
    last_start = pd.read_parquet(run_dir / "walk_forward.parquet")["start"].iloc[-1]
    out = pd.read_parquet(
        predict(run_dir, str(tiny_db), tmp_path / "p.parquet", 256, None, None, progress=False)
    )
    ours = _preds(run_dir)
    ours = ours[ours.timestamp >= last_start]
    merged = ours.merge(out, on=["symbol", "timestamp"], suffixes=("", "_cli"))
    assert len(merged) == len(ours) > 0
    np.testing.assert_allclose(merged.pred_1, merged.pred_1_cli, rtol=1e-5, atol=1e-7)


def test_refits_never_see_the_future(tiny_db, tmp_path):
    """Rewrite every row after T, the first bar of the third block: every prediction at t <= T,
    including T's own from a model refitted just before it, is unchanged; later ones move.

    Refits train on every window of a short rolling window (all batches), so a label leaking
    from even one bar after T would change the refit and the predictions at T.
    """
    wf = [f"walk_forward.refit_every={EVERY}", "walk_forward.train_bars=10"]
    wf += ["trainer.limit_train_batches=null", "walk_forward.epochs=2"]
    _, base_dir = run_in_process(_tiny_cfg(tiny_db, tmp_path / "base", "seed=11", *wf))
    blocks = pd.read_parquet(base_dir / "walk_forward.parquet")
    cutoff = pd.Timestamp(blocks["start"].iloc[2])
    moved_db = tmp_path / "moved.sqlite"
    shutil.copy(tiny_db, moved_db)
    _perturb_after(moved_db, str(cutoff.date()))
    _, moved_dir = run_in_process(_tiny_cfg(moved_db, tmp_path / "moved", "seed=11", *wf))
    a, b = _preds(base_dir), _preds(moved_dir)
    past_a, past_b = a[a.timestamp <= cutoff], b[b.timestamp <= cutoff]
    assert (past_a.timestamp > blocks["end"].iloc[1]).any()  # the past includes a refitted block
    pd.testing.assert_frame_equal(
        past_a.drop(columns="realized_return").reset_index(drop=True),
        past_b.drop(columns="realized_return").reset_index(drop=True),
        rtol=1e-6,
    )
    fut_a, fut_b = a[a.timestamp > cutoff], b[b.timestamp > cutoff]
    assert not np.allclose(fut_a.pred_1, fut_b.pred_1), "the perturbation must move the future"


def test_rolling_cold_refits(tiny_db, tmp_path):
    """train_bars gives a rolling window; warm_start=false refits from the initial weights."""
    _, run_dir = run_in_process(
        _tiny_cfg(
            tiny_db,
            tmp_path,
            "walk_forward.refit_every=30",
            "walk_forward.train_bars=100",
            "walk_forward.warm_start=false",
        )
    )
    blocks = pd.read_parquet(run_dir / "walk_forward.parquet")
    refits = blocks[blocks.refit]
    assert len(refits) >= 1
    assert (refits.fit_hi - refits.fit_lo + 1 == 100).all()
    assert np.isfinite(_preds(run_dir).pred_1).all()


def test_the_run_records_its_execution_mode(runs, caplog):
    """The resolved fill timing reaches metrics.json, the catalogue row and the report header;
    every walk-forward block and baseline is backtested with it."""
    from datetime import UTC, datetime

    from plusultra.catalogue.rows import build_row

    run_dir = runs["refit"]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["execution"] == "next_open"  # the fixture has opens
    assert metrics["test_information_ratio_benchmark"] == "cash"
    for name in ("buyhold", "equal_weight", "momentum", "mean_reversion", "ridge"):
        assert metrics[f"test_{name}_turnover"] >= 0, name
    assert "Execution: next bar open" in (run_dir / "report.md").read_text()
    now = datetime.now(UTC)

    def row_of(metrics: dict) -> dict:
        return build_row(
            run_id="r",
            run_dir=run_dir,
            status="completed",
            error=None,
            started_at=now,
            finished_at=now,
            git_rev="x",
            overrides=[],
            choices={},
            config={},
            metrics=metrics,
        )

    with caplog.at_level("WARNING"):
        row = row_of(metrics)
    assert row["execution"] == "next_open" and "not a number" not in caplog.text
    assert row["optimistic_execution"] is False
    same = row_of({**metrics, "execution": "same_close"})
    assert same["optimistic_execution"] is True  # labelled in the catalogue
    # the last decision has its exit fill: bar T - 3 fills at T - 2's open, exits at T - 1's
    lo, hi = json.loads((run_dir / "data.json").read_text())["segments"]["test"]
    backtest = pd.read_parquet(run_dir / "backtest.parquet")
    stamps = np.sort(pd.read_parquet(run_dir / "predictions.parquet")["timestamp"].unique())
    assert backtest.index.max() == stamps[-3]  # the last two bars are fill and exit only
    assert hi == lo + len(stamps) - 1 and len(backtest) == hi - lo - 1
