"""Learned baselines: LightGBM (early stopping on validation only), ridge's penalty chosen on
validation, and the baselines' IC, cost drag, excess return and Sharpe intervals in a backtest."""

from __future__ import annotations

import importlib.util
import math

import numpy as np
import pandas as pd
import pytest

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.backtest.baselines import (
    ridge_predictions,
    ridge_weights,
    walk_forward_ridge_weights,
)
from plusultra.evaluation.backtest.books import (
    BaselineSettings,
    MarketContext,
    baseline_book,
    lightgbm_book,
)
from plusultra.evaluation.backtest.engine import Backtest
from plusultra.evaluation.backtest.learned import (
    LightGBMParams,
    lightgbm_predictions,
    refit_stop_span,
    select_ridge_alpha,
)
from plusultra.evaluation.metrics.performance import ic_summary
from plusultra.sim.frictionless import FrictionlessSimulator
from plusultra.sim.realistic import RealisticSimulator

needs_lightgbm = pytest.mark.skipif(
    importlib.util.find_spec("lightgbm") is None, reason="pip install 'plusultra[lightgbm]'"
)

NAN = float("nan")
TRAIN_END, VAL, TEST_LO = 149, (170, 199), 220  # bars of the synthetic segments
FAST = LightGBMParams(
    num_boost_round=60, early_stopping_rounds=5, learning_rate=0.1, num_leaves=7,
    min_data_in_leaf=20, lambda_l1=0.0, lambda_l2=1.0, num_threads=1,
)  # fmt: skip


def _panel(seed: int = 0, n_t: int = 300, n_s: int = 10, n_f: int = 4) -> dict:
    """Features with a weak nonlinear signal in the return a decision earns, a few NaN, a
    trading gap."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n_t, n_s, n_f))
    y = 0.3 * x[..., 0] + 0.2 * np.abs(x[..., 1]) + rng.normal(size=(n_t, n_s))
    x[rng.random((n_t, n_s)) < 0.03, 2] = NAN
    tradable = np.ones((n_t, n_s), dtype=bool)
    tradable[100:120, 3] = False
    step = np.zeros_like(y)
    step[2:] = 0.01 * y[:-2]  # y[t] is earned from the fill at t + 1 to t + 2 (next_close)
    close = 50.0 * np.exp(np.cumsum(step, axis=0))
    return {"features": x, "targets": np.where(tradable, y, NAN), "tradable": tradable,
            "close": close}  # fmt: skip


def _context(p: dict, **kw) -> MarketContext:
    return MarketContext(
        close=p["close"], features=p["features"], targets=p["targets"], label_end=TRAIN_END,
        **{"val_span": VAL} | kw,
    )  # fmt: skip


def _future(p: dict, t0: int, rng_seed: int = 9) -> dict:
    """`p` with every target from `t0` on and every feature from `t0 + 30` on redrawn."""
    rng = np.random.default_rng(rng_seed)
    q = {k: v.copy() for k, v in p.items()}
    q["targets"][t0:] = rng.normal(size=q["targets"][t0:].shape) * 5.0
    q["features"][t0 + 30 :] = rng.normal(size=q["features"][t0 + 30 :].shape) * 5.0
    return q


# ---------------------------------------------------------------- LightGBM


@needs_lightgbm
def test_lightgbm_learns_and_is_deterministic() -> None:
    p = _panel()
    args = (p["features"], p["targets"], p["tradable"], TRAIN_END, VAL, FAST, 3)
    pred, best = lightgbm_predictions(*args)
    again, best2 = lightgbm_predictions(*args)
    np.testing.assert_array_equal(pred, again)  # same seed, fixed threads: the same booster
    assert best == best2 and 1 <= best <= FAST.num_boost_round
    assert np.isnan(pred[100:120, 3]).all()  # not tradable: no forecast
    assert np.isnan(pred[np.isnan(p["features"][..., 2])]).all()  # a NaN feature: none
    ic = ic_summary(pred[TEST_LO:], p["targets"][TEST_LO:])["ic"]
    assert ic > 0.2  # it found the signal out of sample


@needs_lightgbm
def test_test_labels_never_reach_the_fit_or_the_early_stopping() -> None:
    """Redraw every test-segment target and every feature after bar 250: the booster (its
    rounds and forecasts) and every val/test weight before bar 250 are unchanged."""
    p = _panel()
    q = _future(p, TEST_LO)
    s = BaselineSettings(lightgbm=FAST, seed=1)
    pred, extra = lightgbm_book(_context(p), p["tradable"], s)
    pred_q, extra_q = lightgbm_book(_context(q), q["tradable"], s)
    assert extra == extra_q
    np.testing.assert_array_equal(pred[:250], pred_q[:250])
    for lo, hi in (VAL, (TEST_LO, 249)):
        w = baseline_book("lightgbm", _context(p), p["tradable"], None, lo, hi, s).weights
        w_q = baseline_book("lightgbm", _context(q), q["tradable"], None, lo, hi, s).weights
        np.testing.assert_array_equal(w, w_q)
        assert np.abs(w).sum() > 0
    # the perturbation is real: the later forecasts do change
    assert not np.array_equal(np.nan_to_num(pred[250:]), np.nan_to_num(pred_q[250:]))


@needs_lightgbm
def test_validation_labels_drive_the_early_stopping() -> None:
    """Control of the test above: redrawing only validation targets changes the booster."""
    p = _panel()
    q = {k: v.copy() for k, v in p.items()}
    q["targets"][VAL[0] : VAL[1] + 1] *= -1.0  # the signal reversed on validation
    a = lightgbm_predictions(p["features"], p["targets"], p["tradable"], TRAIN_END, VAL, FAST)
    b = lightgbm_predictions(q["features"], q["targets"], q["tradable"], TRAIN_END, VAL, FAST)
    assert b[1] < a[1]  # stops earlier: more rounds only hurt on the reversed validation
    assert not np.array_equal(np.nan_to_num(a[0]), np.nan_to_num(b[0]))


def test_lightgbm_refuses_overlapping_or_missing_validation() -> None:
    p = _panel()
    with pytest.raises(DataError, match="must end before the early-stopping bars"):
        lightgbm_predictions(p["features"], p["targets"], p["tradable"], 180, VAL, FAST)
    with pytest.raises(DataError, match="val_span"):
        lightgbm_predictions(p["features"], p["targets"], p["tradable"], TRAIN_END, None, FAST)


@needs_lightgbm
def test_walk_forward_refits_each_block_on_its_past_only() -> None:
    """Block 0 is the validation-stopped fit; block k >= 1 is refitted on its fit window,
    stopped on the window's last bars; a block's forecasts ignore targets after its fit window
    and features after the block."""
    p = _panel()
    s = BaselineSettings(lightgbm=FAST, seed=0)
    refits = [(9, TRAIN_END, 220, 239), (9, 200, 240, 259), (9, 220, 260, 299)]
    pred, extra = lightgbm_book(_context(p, refits=refits), p["tradable"], s)
    first, best0 = lightgbm_predictions(
        p["features"], p["targets"], p["tradable"], TRAIN_END, VAL, FAST, 0
    )
    np.testing.assert_array_equal(pred[220:240], first[220:240])
    assert np.isnan(pred[:220]).all()
    rounds = [best0]
    for fit_lo, fit_hi, lo, hi in refits[1:]:
        stop = refit_stop_span(fit_lo, fit_hi, FAST.refit_valid_share)
        assert stop[1] == fit_hi and stop[0] > fit_lo
        ref, n = lightgbm_predictions(
            p["features"], p["targets"], p["tradable"], stop[0] - 1, stop, FAST, 0, fit_lo
        )
        np.testing.assert_array_equal(pred[lo : hi + 1], ref[lo : hi + 1])
        rounds.append(n)
        q = {k: v.copy() for k, v in p.items()}
        q["targets"][fit_hi + 1 :] = 7.0
        q["features"][hi + 1 :] = 7.0
        again, _ = lightgbm_book(_context(q, refits=refits), q["tradable"], s)
        np.testing.assert_array_equal(again[lo : hi + 1], pred[lo : hi + 1])
    assert extra["best_iteration"] == pytest.approx(np.mean(rounds))


@pytest.mark.parametrize(
    ("key", "value"),
    [("num_boost_round", 0), ("feature_fraction", 1.5), ("lambda_l1", -1.0), ("max_depth", 0),
     ("refit_valid_share", 1.0), ("num_threads", True)],
)  # fmt: skip
def test_lightgbm_params_are_checked(key: str, value) -> None:
    with pytest.raises(ConfigError, match=f"evaluation.lightgbm.{key}"):
        LightGBMParams(**{key: value})


def test_missing_lightgbm_package_is_a_config_error(monkeypatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "lightgbm" else real(name)
    )
    with pytest.raises(ConfigError, match=r"evaluation.baselines.*plusultra\[lightgbm\]"):
        Backtest(baselines=["buyhold", "lightgbm"])
    Backtest(baselines=["buyhold", "ridge"])  # without it nothing asks for the package


# ---------------------------------------------------------------- ridge on validation


def _val_ic_ref(pred: np.ndarray, y: np.ndarray, lo: int, hi: int) -> float:
    """Loop reference: mean over bars of the Pearson correlation of the finite pairs."""
    ics = []
    for t in range(lo, hi + 1):
        ok = np.isfinite(pred[t]) & np.isfinite(y[t])
        if ok.sum() >= 3 and np.std(pred[t][ok]) > 0 and np.std(y[t][ok]) > 0:
            ics.append(np.corrcoef(pred[t][ok], y[t][ok])[0, 1])
    return float(np.mean(ics))


def test_ridge_alpha_is_the_best_validation_ic_and_ignores_test() -> None:
    p = _panel(seed=4, n_f=12)  # many noise features: the penalty matters
    alphas = [0.1, 1.0, 100.0, 1e5]
    args = (p["features"], p["targets"], p["tradable"], TRAIN_END)
    alpha, pred = select_ridge_alpha(*args, alphas, VAL)
    scores = [_val_ic_ref(ridge_predictions(*args, a), p["targets"], *VAL) for a in alphas]
    assert alpha == alphas[int(np.argmax(scores))]
    np.testing.assert_array_equal(pred, ridge_predictions(*args, alpha))
    q = _future(p, TEST_LO)
    alpha_q, pred_q = select_ridge_alpha(
        q["features"], q["targets"], q["tradable"], TRAIN_END, alphas, VAL
    )
    assert alpha_q == alpha
    np.testing.assert_array_equal(pred_q[:250], pred[:250])


def test_one_ridge_alpha_keeps_the_previous_ridge_exactly() -> None:
    p = _panel()
    c = _context(p, val_span=None)
    book = baseline_book("ridge", c, p["tradable"], None, 170, 299, BaselineSettings())
    ref = ridge_weights(p["features"], p["targets"], p["tradable"], TRAIN_END, 1.0)
    np.testing.assert_array_equal(book.weights, ref[170:300])
    assert book.extra == {"alpha": 1.0}
    with pytest.raises(DataError, match="val_span"):  # several alphas need validation
        baseline_book("ridge", c, p["tradable"], None, 170, 299, BaselineSettings((1.0, 2.0)))


def test_walk_forward_ridge_keeps_the_previous_refits_exactly() -> None:
    p = _panel()
    refits = [(9, TRAIN_END, 220, 239), (9, 200, 240, 259), (9, 220, 260, 299)]
    c = _context(p, refits=refits)
    book = baseline_book("ridge", c, p["tradable"], None, 220, 299, BaselineSettings())
    ref = walk_forward_ridge_weights(p["features"], p["targets"], p["tradable"], refits)
    np.testing.assert_array_equal(book.weights, ref[220:300])


# ---------------------------------------------------------------- in a backtest


def _engine_inputs(p: dict):
    n_t, n_s = p["targets"].shape
    rng = np.random.default_rng(5)
    dates = pd.bdate_range("2020-01-01", periods=n_t).to_numpy()
    symbols = [f"S{i}" for i in range(n_s)]
    preds = pd.DataFrame(
        [(s, d, rng.normal()) for d in dates for s in symbols],
        columns=["symbol", "timestamp", "pred_1"],
    )
    ctx = _context(p, volume=np.full((n_t, n_s), 1e9), volatility=np.full((n_t, n_s), 0.01))
    returns = np.full((n_t, n_s), NAN)
    returns[:-1] = p["close"][1:] / p["close"][:-1] - 1.0
    return preds, dates, symbols, p["tradable"], returns, ctx


@needs_lightgbm
@pytest.mark.parametrize("realistic", [False, True])
def test_backtest_reports_learned_baselines_and_new_metrics(realistic: bool) -> None:
    p = _panel()
    preds, dates, symbols, tradable, returns, ctx = _engine_inputs(p)
    sim = RealisticSimulator(periods_per_year=252) if realistic else FrictionlessSimulator()
    names = ["buyhold", "equal_weight", "ridge", "lightgbm"]
    bt = Backtest(baselines=names, bootstrap=50, seed=3, ridge_alphas=[0.1, 10.0], lightgbm=FAST)
    val = bt.run(preds, dates, symbols, tradable, returns, sim, *VAL, context=ctx)
    test = bt.run(preds, dates, symbols, tradable, returns, sim, TEST_LO, 297, context=ctx)
    assert len(ctx.fits) == 1  # LightGBM fitted once for both segments
    for res in (val, test):
        for name in ["model", *names]:
            m = res.metrics if name == "model" else res.baselines[name]
            if realistic:  # commission, spread, impact and borrow
                assert m["cost_drag"] > 0.0
            else:
                assert m["cost_drag"] == 0.0
            assert math.isfinite(m["excess_annual_return"])
            if name != "buyhold":  # its IR against itself is undefined
                active_sd = m["excess_annual_return"] / m["information_ratio"]
                assert active_sd > 0  # IR = excess / tracking error, same sign
            if name != "model":
                assert m["sharpe_lo"] <= m["sharpe"] <= m["sharpe_hi"]
        for name in ("ridge", "lightgbm"):
            assert {"ic", "ic_ir", "rank_ic", "rank_ic_ir"} <= set(res.baselines[name])
        assert res.baselines["ridge"]["alpha"] in (0.1, 10.0)
        assert res.baselines["lightgbm"]["best_iteration"] >= 1
        assert "ic" not in res.baselines["equal_weight"]
    assert test.baselines["lightgbm"]["ic"] > 0.2  # the synthetic signal, out of sample


@needs_lightgbm
def test_learned_ic_uses_the_models_ic_function() -> None:
    p = _panel()
    preds, dates, symbols, tradable, returns, ctx = _engine_inputs(p)
    bt = Backtest(baselines=["lightgbm"], bootstrap=0, lightgbm=FAST)
    res = bt.run(preds, dates, symbols, tradable, returns, FrictionlessSimulator(), 220, 290,
                 context=ctx)  # fmt: skip
    book = baseline_book("lightgbm", ctx, tradable, None, 220, 290, bt.learned)
    want = ic_summary(book.signal, res.earned[220:291])
    assert {k: res.baselines["lightgbm"][k] for k in want} == want
