"""Baseline weight panels: hand cases, loop references, causality, ridge closed form, NaN rules."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.backtest.baselines import (
    buy_and_hold_weights,
    equal_weight_weights,
    fit_ridge,
    mean_reversion_weights,
    momentum_weights,
    ridge_weights,
)
from plusultra.evaluation.backtest.positions import positions_from_signal
from plusultra.sim.frictionless import FrictionlessSimulator
from tests.baseline_returns import buy_and_hold_returns

NAN = float("nan")


def _market(seed: int, n_t: int = 80, n_s: int = 9, n_f: int = 3) -> dict[str, np.ndarray]:
    """A random panel with a late listing, a delisting and a gap in tradability."""
    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, size=(n_t, n_s)), axis=0))
    close[:20, 1] = NAN  # listed at t = 20
    close[60:, 2] = NAN  # last bar at t = 59
    returns = np.full((n_t, n_s), NAN)
    returns[:-1] = close[1:] / close[:-1] - 1.0  # (T, S), NaN where either close is missing
    tradable = ~np.isnan(returns)
    tradable[30:33, 4] = False  # e.g. a trading halt
    features = rng.normal(size=(n_t, n_s, n_f))
    features[rng.random((n_t, n_s)) < 0.05, 0] = NAN
    targets = np.where(tradable, returns, NAN)  # 1-bar forward return as the label
    return {
        "close": close,
        "returns": np.where(tradable, returns, NAN),
        "tradable": tradable,
        "features": features,
        "targets": targets,
    }


BASELINE_NAMES = ["buyhold", "equal_weight", "mean_reversion", "momentum", "ridge"]


def _call(name: str, m: dict[str, np.ndarray], train_end: int = 20) -> np.ndarray:
    """Each baseline with its inputs from a market dict and short lookbacks.

    Ridge rows before ``train_end`` are in-sample; the causality test checks ``t >= train_end``.
    """
    if name == "buyhold":
        return buy_and_hold_weights(m["returns"], m["tradable"])
    if name == "equal_weight":
        return equal_weight_weights(m["tradable"])
    if name == "momentum":
        return momentum_weights(m["close"], m["tradable"], lookback=20, skip=3, quantile=0.25)
    if name == "mean_reversion":
        return mean_reversion_weights(m["close"], m["tradable"], lookback=4, quantile=0.25)
    return ridge_weights(m["features"], m["targets"], m["tradable"], train_end, alpha=0.5)


# ---------------------------------------------------------------- naive loop references


def long_short_ref(signal: np.ndarray, quantile: float) -> np.ndarray:
    """Per row: sort (signal, column) pairs, short the first k, long the last k."""
    out = np.zeros(signal.shape)
    for t in range(signal.shape[0]):
        pairs = sorted(
            (signal[t, s], s) for s in range(signal.shape[1]) if signal[t, s] == signal[t, s]
        )
        n = len(pairs)
        if n < 2 or pairs[0][0] == pairs[-1][0]:
            continue
        k = min(n // 2, max(1, math.floor(round(quantile * n, 9))))
        for _, s in pairs[:k]:
            out[t, s] = -0.5 / k
        for _, s in pairs[n - k :]:
            out[t, s] = 0.5 / k
    return out


def past_return_ref(close, tradable, start: int, end: int) -> np.ndarray:
    """close[t - end] / close[t - start] - 1 by a loop over (t, s)."""
    sig = np.full(close.shape, NAN)
    for t in range(start, close.shape[0]):
        for s in range(close.shape[1]):
            a, b = close[t - start, s], close[t - end, s]
            if tradable[t, s] and a > 0 and b > 0:
                sig[t, s] = b / a - 1.0
    return sig


def buy_and_hold_ref(returns: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """Holdings in currency: buy 1/n at t = 0, sell to cash at the first non-tradable bar."""
    n_t, n_s = returns.shape
    held = [bool(tradable[0, s]) for s in range(n_s)]
    holding = [1.0 / sum(held) if held[s] else 0.0 for s in range(n_s)]
    cash = 0.0
    out = np.zeros((n_t, n_s))
    for t in range(n_t):
        for s in range(n_s):
            if held[s] and not tradable[t, s]:
                cash += holding[s]
                holding[s], held[s] = 0.0, False
        book = cash + sum(holding)
        for s in range(n_s):
            out[t, s] = holding[s] / book if held[s] else 0.0
        for s in range(n_s):
            if held[s]:
                holding[s] *= 1.0 + returns[t, s]
    return out


# ---------------------------------------------------------------- equal weight, buy and hold


def test_equal_weight_hand_example() -> None:
    tradable = np.array([[True, True, False, True], [False, False, False, False], [True] * 4])
    expected = np.array([[1 / 3, 1 / 3, 0, 1 / 3], [0, 0, 0, 0], [0.25] * 4])
    np.testing.assert_allclose(equal_weight_weights(tradable), expected)


def test_buy_and_hold_hand_example() -> None:
    returns = np.array(
        [
            [0.10, -0.10, 0.5],  # symbol 2 is not tradable at 0: never bought
            [0.00, 0.20, 0.5],
            [0.10, NAN, 0.5],  # symbol 1 delisted: sold at its last value 0.54
            [0.00, 0.00, 0.5],
        ]
    )
    tradable = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 1], [1, 1, 1]], dtype=bool)
    expected = np.array(
        [
            [0.5, 0.5, 0.0],
            [0.55, 0.45, 0.0],  # values 0.55 and 0.45 of a book of 1.0
            [0.55 / 1.09, 0.0, 0.0],  # 0.55 held, 0.54 cash
            [0.605 / 1.145, 0.0, 0.0],  # tradable again, but the cash is never reinvested
        ]
    )
    np.testing.assert_allclose(buy_and_hold_weights(returns, tradable), expected, rtol=1e-14)


@pytest.mark.parametrize("seed", range(3))
def test_buy_and_hold_matches_reference_and_simulates_to_buy_and_hold_returns(seed: int) -> None:
    m = _market(seed)
    w = buy_and_hold_weights(m["returns"], m["tradable"])
    np.testing.assert_allclose(w, buy_and_hold_ref(m["returns"], m["tradable"]), rtol=1e-12)
    sim = FrictionlessSimulator(1.0).run(w, m["returns"])
    np.testing.assert_allclose(
        sim.portfolio_returns, buy_and_hold_returns(m["returns"]), rtol=1e-12, atol=1e-15
    )
    # Trades only at t = 0 (buy) and when a held symbol stops being tradable (sell).
    sells = np.flatnonzero(sim.turnover[1:] > 1e-12) + 1
    assert set(sells) <= {30, 59, 79}  # the halt of symbol 4, the delisting of 2, the last bar


# ---------------------------------------------------------------- long/short baselines


def test_long_short_leg_size_convention() -> None:
    close = np.vstack([np.full(10, 100.0), 100.0 + np.arange(10.0)])  # returns rise with column
    w = momentum_weights(close, np.ones((2, 10), dtype=bool), lookback=1, skip=0, quantile=0.2)
    # n = 10, quantile 0.2: k = 2 per leg, +-0.25 each; gross 1, net 0.
    np.testing.assert_allclose(w[1], [-0.25, -0.25, 0, 0, 0, 0, 0, 0, 0.25, 0.25])
    np.testing.assert_array_equal(w[0], 0.0)  # t < lookback: no signal
    # n = 4, quantile 0.2: 0.8 -> at least 1 per leg.
    sub = np.ones((2, 10), dtype=bool)
    sub[1, 4:] = False
    w = momentum_weights(close, sub, lookback=1, skip=0, quantile=0.2)
    np.testing.assert_allclose(w[1], [-0.5, 0, 0, 0.5, 0, 0, 0, 0, 0, 0])
    # n = 5, quantile 0.5: 2.5 -> k = min(5 // 2, 2) = 2; the middle symbol stays flat.
    sub[1, :5] = True
    w = momentum_weights(close, sub, lookback=1, skip=0, quantile=0.5)
    np.testing.assert_allclose(w[1], [-0.25, -0.25, 0, 0.25, 0.25, 0, 0, 0, 0, 0])


def test_long_short_ties_all_equal_and_single_symbol_rows() -> None:
    close = np.array(
        [
            [100.0, 100.0, 100.0, 100.0],
            [110.0, 110.0, 110.0, 120.0],  # ties at the bottom: the lower column is shorted
            [100.0, 100.0, 100.0, 100.0],
            [110.0, 110.0, 110.0, 110.0],  # all equal: no cross-section
            [100.0, 100.0, 100.0, 100.0],
            [110.0, NAN, NAN, NAN],  # one valid symbol
        ]
    )
    w = momentum_weights(close, np.ones(close.shape, dtype=bool), lookback=1, skip=0, quantile=0.25)
    np.testing.assert_allclose(w[1], [-0.5, 0.0, 0.0, 0.5])
    np.testing.assert_array_equal(w[3], 0.0)
    np.testing.assert_array_equal(w[5], 0.0)


def test_momentum_hand_example() -> None:
    # lookback 3, skip 1: the signal at t = 3 is close[2] / close[0] - 1.
    close = np.array(
        [
            [10.0, 10.0, 10.0, 10.0],
            [11.0, 9.0, 10.0, 10.0],
            [12.0, 8.0, 10.5, 9.5],  # +20 %, -20 %, +5 %, -5 %
            [1.0, 100.0, 10.0, 10.0],  # ignored at t = 3 (skipped)
        ]
    )
    w = momentum_weights(close, np.ones((4, 4), dtype=bool), lookback=3, skip=1, quantile=0.25)
    np.testing.assert_array_equal(w[:3], 0.0)
    np.testing.assert_allclose(w[3], [0.5, -0.5, 0.0, 0.0])


def test_mean_reversion_hand_example() -> None:
    close = np.array([[10.0, 10.0, 10.0, 10.0], [12.0, 8.0, 10.5, 9.5]])
    w = mean_reversion_weights(close, np.ones((2, 4), dtype=bool), lookback=1, quantile=0.25)
    np.testing.assert_allclose(w[1], [-0.5, 0.5, 0.0, 0.0])  # short the winner, buy the loser


@pytest.mark.parametrize("seed", range(3))
def test_momentum_and_mean_reversion_match_references(seed: int) -> None:
    m = _market(seed)
    close, tradable = m["close"], m["tradable"]
    got = momentum_weights(close, tradable, lookback=20, skip=3, quantile=0.3)
    expected = long_short_ref(past_return_ref(close, tradable, 20, 3), 0.3)
    np.testing.assert_allclose(got, expected, atol=1e-15)
    got = mean_reversion_weights(close, tradable, lookback=4, quantile=0.2)
    expected = long_short_ref(-past_return_ref(close, tradable, 4, 0), 0.2)
    np.testing.assert_allclose(got, expected, atol=1e-15)


# ---------------------------------------------------------------- ridge


def test_fit_ridge_equals_augmented_least_squares() -> None:
    # Ridge with an unpenalised intercept = least squares on [X 1; sqrt(alpha) I 0] vs [y; 0].
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    y = x @ np.array([0.5, -1.0, 2.0]) + 0.3 + rng.normal(scale=0.1, size=40)
    for alpha in (0.0, 0.7, 25.0):
        design = np.vstack(
            [
                np.hstack([x, np.ones((40, 1))]),
                np.hstack([math.sqrt(alpha) * np.eye(3), np.zeros((3, 1))]),
            ]
        )
        sol = np.linalg.lstsq(design, np.concatenate([y, np.zeros(3)]), rcond=None)[0]
        w, b = fit_ridge(x, y, alpha)
        np.testing.assert_allclose(w, sol[:3], rtol=1e-10)
        assert b == pytest.approx(sol[3], rel=1e-10)
    w, b = fit_ridge(x, y, 0.0)
    np.testing.assert_allclose(w, [0.5, -1.0, 2.0], atol=0.05)  # recovers the truth


def test_ridge_weights_equal_closed_form_on_toy_problem() -> None:
    # Toy: T = 6, S = 4, F = 2; target = 2 f0 - f1 exactly, train on t <= 3.
    rng = np.random.default_rng(1)
    x = rng.normal(size=(6, 4, 2))
    y = 2.0 * x[..., 0] - x[..., 1]
    y[4:] = NAN  # labels after train_end are unknown
    tradable = np.ones((6, 4), dtype=bool)
    tradable[5, 3] = False
    alpha = 0.5
    xs, ys = x[:4].reshape(-1, 2), y[:4].reshape(-1)
    xc, yc = xs - xs.mean(axis=0), ys - ys.mean()
    coef = np.linalg.solve(xc.T @ xc + alpha * np.eye(2), xc.T @ yc)
    pred = x @ coef + (ys.mean() - xs.mean(axis=0) @ coef)
    pred[5, 3] = NAN
    got = ridge_weights(x, y, tradable, train_end=3, alpha=alpha, method="zscore")
    np.testing.assert_allclose(got, positions_from_signal(pred, "zscore"), rtol=1e-10, atol=1e-15)
    assert got[5, 3] == 0.0


def test_ridge_fits_only_up_to_train_end_and_zeroes_missing_features() -> None:
    m = _market(2)
    w = ridge_weights(m["features"], m["targets"], m["tradable"], train_end=40)
    later = m["targets"].copy()
    later[41:] = np.random.default_rng(5).normal(size=later[41:].shape)  # labels after train_end
    np.testing.assert_array_equal(
        w, ridge_weights(m["features"], later, m["tradable"], train_end=40)
    )
    missing = np.isnan(m["features"]).any(axis=2) | ~m["tradable"]
    assert (w[missing] == 0.0).all()
    assert not np.array_equal(w, ridge_weights(m["features"], later, m["tradable"], train_end=60))


# ---------------------------------------------------------------- every baseline


@pytest.mark.parametrize("name", BASELINE_NAMES)
def test_every_baseline_contract(name: str) -> None:
    m = _market(0)
    w = _call(name, m)
    assert w.shape == m["tradable"].shape
    assert np.isfinite(w).all()
    assert (w[~m["tradable"]] == 0.0).all()  # non-tradable -> weight 0
    assert (np.abs(w).sum(axis=1) <= 1.0 + 1e-12).all()
    sim = FrictionlessSimulator(1.0).run(w, m["returns"])  # runs on the same simulator
    assert np.isfinite(sim.portfolio_returns).all()
    if name in ("momentum", "mean_reversion", "ridge"):
        active = np.abs(w).sum(axis=1) > 0
        assert active.sum() > 30
        np.testing.assert_allclose(np.abs(w[active]).sum(axis=1), 1.0)  # gross 1
        np.testing.assert_allclose(w[active].sum(axis=1), 0.0, atol=1e-12)  # dollar neutral


@pytest.mark.parametrize("name", BASELINE_NAMES)
@pytest.mark.parametrize("t", [25, 45, 70])
def test_every_baseline_is_causal(name: str, t: int) -> None:
    """Perturbing everything not known at close t leaves rows <= t unchanged."""
    m = _market(1)
    before = _call(name, m)
    rng = np.random.default_rng(t)
    p = {k: v.copy() for k, v in m.items()}
    p["close"][t + 1 :] *= np.exp(rng.normal(0, 0.3, size=p["close"][t + 1 :].shape))
    p["returns"][t:] = rng.normal(0, 0.3, size=p["returns"][t:].shape)  # returns[t] ends at t + 1
    p["tradable"][t + 1 :] = rng.random(p["tradable"][t + 1 :].shape) < 0.5
    p["returns"] = np.where(p["tradable"], np.nan_to_num(p["returns"]), NAN)
    p["features"][t + 1 :] = rng.normal(size=p["features"][t + 1 :].shape)
    p["targets"][t + 1 :] = rng.normal(size=p["targets"][t + 1 :].shape)
    after = _call(name, p)
    np.testing.assert_array_equal(after[: t + 1], before[: t + 1])
    assert not np.array_equal(after, before)


# ---------------------------------------------------------------- bad inputs


def test_bad_inputs_raise() -> None:
    m = _market(0)
    close, tradable = m["close"], m["tradable"]
    with pytest.raises(DataError, match="bool"):
        equal_weight_weights(tradable.astype(float))
    with pytest.raises(DataError, match="shape"):
        momentum_weights(close, tradable[:-1])
    with pytest.raises(ConfigError, match="quantile"):
        momentum_weights(close, tradable, quantile=0.6)
    with pytest.raises(ConfigError, match="lookback"):
        momentum_weights(close, tradable, lookback=21, skip=21)
    with pytest.raises(ConfigError, match="lookback"):
        mean_reversion_weights(close, tradable, lookback=0)
    with pytest.raises(DataError, match="no symbol is tradable"):
        buy_and_hold_weights(m["returns"], np.zeros_like(tradable))
    bad = m["returns"].copy()
    bad[10, 0] = NAN
    with pytest.raises(DataError, match=r"returns\[10, 0\] is NaN"):
        buy_and_hold_weights(bad, tradable)
    args = (m["features"], m["targets"], tradable)
    with pytest.raises(ConfigError, match="train_end"):
        ridge_weights(*args, train_end=80)
    with pytest.raises(ConfigError, match="rank, sign, weights, zscore"):
        ridge_weights(*args, train_end=40, method="magic")
    with pytest.raises(ConfigError, match="alpha"):
        ridge_weights(*args, train_end=40, alpha=-1.0)
    with pytest.raises(DataError, match="no training sample"):
        ridge_weights(m["features"], np.full_like(m["targets"], NAN), tradable, train_end=40)
    with pytest.raises(DataError, match="3-D"):
        ridge_weights(m["targets"], m["targets"], tradable, train_end=40)


# ---------------------------------------------------------------- the backtest engine


def _engine_case(seed: int = 0, n_t: int = 320, n_s: int = 6) -> dict:
    """Dates, symbols, market context and model forecasts for `Backtest.run`; symbol 1 is
    delisted at bar 300 (its last bar, `tradable` False from there as the data module does).
    12-1 momentum needs 252 bars of history, so backtests start at bar 270."""
    import pandas as pd

    from plusultra.evaluation.backtest.engine import MarketContext

    rng = np.random.default_rng(seed)
    close = 50.0 * np.exp(np.cumsum(rng.normal(0.0, 0.02, (n_t, n_s)), axis=0))
    open_ = close * np.exp(rng.normal(0.0, 0.01, (n_t, n_s)))
    close[301:, 1] = open_[301:, 1] = NAN
    tradable = np.isfinite(close)
    tradable[300:, 1] = False  # assets.delisted = the date of bar 300
    volume = rng.lognormal(np.log(1e7), 0.5, (n_t, n_s))
    dates = pd.bdate_range("2020-01-01", periods=n_t).to_numpy()
    symbols = [f"S{i}" for i in range(n_s)]
    context = MarketContext(
        close=close,
        open=open_,
        volume=volume,
        volatility=np.full((n_t, n_s), 0.02),
        features=rng.normal(size=(n_t, n_s, 3)),
        targets=np.where(tradable, rng.normal(size=(n_t, n_s)), NAN),
        label_end=30,
    )
    rows = [(s, d, rng.normal()) for d in dates for s in symbols]
    preds = pd.DataFrame(rows, columns=["symbol", "timestamp", "pred_1"])
    returns = np.full((n_t, n_s), NAN)
    returns[:-1] = close[1:] / close[:-1] - 1.0
    return dict(
        preds=preds,
        dates=dates,
        symbols=symbols,
        tradable=tradable,
        returns=returns,
        context=context,
    )


def _backtest(case: dict, simulator, lo: int = 270, hi: int = 319, **kwargs):
    from plusultra.evaluation.backtest.engine import Backtest

    bt = Backtest(bootstrap=0, **kwargs)
    return bt.run(
        case["preds"],
        case["dates"],
        case["symbols"],
        case["tradable"],
        case["returns"],
        simulator,
        lo,
        hi,
        context=case["context"],
    )


def _free_realistic(**kwargs):
    from plusultra.sim.realistic import RealisticSimulator

    free = dict(
        commission_bps=0.0,
        half_spread_bps=0.0,
        impact_coef=0.0,
        participation_cap=None,
        borrow_bps_annual=0.0,
    )
    return RealisticSimulator(**(free | kwargs))


@pytest.mark.parametrize("realistic", [False, True])
def test_engine_model_and_every_baseline_earn_nothing_of_the_decision_bar(realistic) -> None:
    """Opens that never move: under next_open nothing is earned, whatever the closes do
    (every book fills and is valued at opens); under same_close the closes are earned."""
    case = _engine_case(1)
    case["context"].open = np.where(np.isfinite(case["context"].close), 100.0, NAN)
    sim = _free_realistic() if realistic else FrictionlessSimulator()
    result = _backtest(case, sim)
    assert result.execution == "next_open"
    returns = result.daily.filter(like="_return")
    assert set(returns.columns) == {f"{n}_return" for n in ["strategy", *BASELINE_NAMES]}
    np.testing.assert_allclose(returns.to_numpy(), 0.0, atol=1e-12)
    same = FrictionlessSimulator(execution="same_close")
    if realistic:
        same = _free_realistic(execution="same_close")
    optimistic = _backtest(case, same).daily.filter(like="_return")
    assert (np.abs(optimistic.to_numpy()).max(axis=0) > 1e-3).all()


def test_engine_next_open_return_of_row_t_is_open_t_plus_1_to_open_t_plus_2() -> None:
    case = _engine_case(2)
    from plusultra.evaluation.backtest.engine import Backtest, decision_mask

    result = _backtest(case, FrictionlessSimulator(), lo=270, hi=310)
    o = case["context"].open
    decide = decision_mask(case["tradable"], 1)
    w = Backtest(bootstrap=0).weights(case["preds"], case["dates"], case["symbols"], decide)
    w = w[270:311]
    earned = o[272:313] / o[271:312] - 1.0
    expected = np.nansum(np.where(w != 0, w * earned, 0.0), axis=1)
    np.testing.assert_allclose(result.daily["strategy_return"].to_numpy(), expected, atol=1e-12)


@pytest.mark.parametrize("realistic", [False, True])
def test_engine_perturbing_the_next_open_changes_the_fill(realistic) -> None:
    case = _engine_case(3)
    sim = _free_realistic() if realistic else FrictionlessSimulator()
    before = _backtest(case, sim).daily
    t = 290  # a decision bar inside the range
    case["context"].open = case["context"].open.copy()
    case["context"].open[t + 1] *= 1.05
    after = _backtest(case, sim).daily
    row = before.index.get_loc(case["dates"][t])
    assert after["strategy_return"].iloc[row] != pytest.approx(
        before["strategy_return"].iloc[row], abs=1e-9
    )
    np.testing.assert_array_equal(
        after["strategy_return"].iloc[: row - 1], before["strategy_return"].iloc[: row - 1]
    )


def test_engine_same_close_equals_the_close_to_close_backtest() -> None:
    from plusultra.evaluation.backtest.engine import Backtest, decision_mask

    case = _engine_case(4)
    result = _backtest(case, FrictionlessSimulator(execution="same_close"), hi=310)
    assert result.execution == "same_close"
    decide = decision_mask(case["tradable"], 0)
    assert np.array_equal(decide, case["tradable"])  # same_close: the old tradable mask
    w = Backtest(bootstrap=0).weights(case["preds"], case["dates"], case["symbols"], decide)
    old = FrictionlessSimulator().run(w[270:311], case["returns"][270:311])
    np.testing.assert_allclose(result.daily["strategy_return"], old.portfolio_returns, atol=1e-12)


def test_engine_delisting_and_the_last_bars() -> None:
    """No position is taken that cannot be exited on a listed bar; the range ends so that the
    last decision has its exit fill; bars that stop without a delisting are an error."""
    case = _engine_case(5)
    n_t = len(case["dates"])
    for mode, lag in (("next_open", 1), ("next_close", 1), ("same_close", 0)):
        result = _backtest(case, FrictionlessSimulator(execution=mode), hi=n_t - 1)
        assert result.daily.index[-1] == case["dates"][n_t - 2 - lag]
    from plusultra.evaluation.backtest.engine import decision_mask

    decide = decision_mask(case["tradable"], 1)
    assert decide[298, 1] and not decide[299, 1]  # exits at bar 300 at the latest
    assert decide[-1, 0]  # listed to the calendar's end: its future is unknown, no cap
    broken = _engine_case(5)
    broken["tradable"][300, 1] = True  # bars stop after bar 300, no delisting date
    with pytest.raises(DataError, match="S1 has no bar after .* assets.delisted is not set"):
        _backtest(broken, FrictionlessSimulator())


def test_engine_close_only_data_fills_at_the_next_close(caplog) -> None:
    case = _engine_case(6)
    case["context"].open = np.full_like(case["context"].close, NAN)
    case["context"].volume = np.full_like(case["context"].close, NAN)
    with caplog.at_level("WARNING", logger="plusultra"):
        result = _backtest(case, _free_realistic(participation_cap=0.01))
    assert result.execution == "next_close"
    assert "no open prices" in caplog.text and "no participation cap" in caplog.text
    with pytest.raises(DataError, match="simulator.execution=next_open"):
        _backtest(case, FrictionlessSimulator(execution="next_open"))


def test_engine_baselines_report_turnover_and_a_like_for_like_information_ratio() -> None:
    case = _engine_case(7)
    result = _backtest(case, FrictionlessSimulator())
    for name, metrics in result.baselines.items():
        assert np.isfinite(metrics["turnover"]), name
        assert metrics["information_ratio_benchmark"] == (
            "buyhold" if name in ("buyhold", "equal_weight") else "cash"
        )
    assert result.metrics["information_ratio_benchmark"] == "cash"  # rank book: dollar neutral
    assert result.metrics["information_ratio"] == pytest.approx(result.metrics["sharpe"])
    assert result.baselines["buyhold"]["turnover"] < result.baselines["momentum"]["turnover"]


@pytest.mark.parametrize("mode", ["next_open", "next_close", "same_close"])
def test_engine_realistic_without_frictions_equals_frictionless(mode) -> None:
    """Same fills, marks and exits (a delisted symbol exits on its delisting bar) in both
    simulators, for the model and every baseline."""
    case = _engine_case(8)
    free = _backtest(case, FrictionlessSimulator(execution=mode)).daily
    real = _backtest(case, _free_realistic(execution=mode)).daily
    cols = [c for c in free.columns if c.endswith("_return")] + ["gross_exposure"]
    np.testing.assert_allclose(real[cols].to_numpy(), free[cols].to_numpy(), atol=1e-9)


def test_engine_positions_for_attribution_are_the_traded_ones() -> None:
    from plusultra.evaluation.backtest.engine import Backtest

    case = _engine_case(9)
    result = _backtest(case, FrictionlessSimulator())
    bt = Backtest(bootstrap=0)
    args = (case["preds"], case["dates"], case["symbols"], case["tradable"], result.earned)
    traded = bt.with_positions(*args, execution=result.execution)
    intended = bt.with_positions(*args)
    s1 = traded["symbol"] == "S1"
    day = traded["timestamp"] == case["dates"][299]  # its last tradable bar before delisting
    assert traded.loc[s1 & day, "position"].item() == 0.0
    assert intended.loc[s1 & day, "position"].item() != 0.0
    row = traded["timestamp"] == case["dates"][280]
    np.testing.assert_array_equal(traded.loc[row, "realized_return"], result.earned[280])


def test_engine_without_market_context_fills_at_the_next_close() -> None:
    """Forecasts backtested from close-to-close returns alone: closes rebuilt, no opens."""
    from plusultra.evaluation.backtest.engine import Backtest, MarketContext

    case = _engine_case(10)
    bt = Backtest(bootstrap=0, baselines=["equal_weight", "momentum"])
    args = (case["preds"], case["dates"], case["symbols"], case["tradable"], case["returns"])
    bare = bt.run(*args, FrictionlessSimulator(), 270, 319)
    closes = MarketContext(close=case["context"].close)
    full = bt.run(*args, FrictionlessSimulator(), 270, 319, context=closes)
    assert bare.execution == full.execution == "next_close"
    np.testing.assert_allclose(bare.daily.to_numpy(), full.daily.to_numpy(), atol=1e-12)


def test_engine_net_cap_scales_the_traded_weights() -> None:
    """evaluation.net caps |sum w| per bar (the cap the portfolio losses train under)."""
    from plusultra.evaluation.backtest.engine import Backtest, decision_mask

    case = _engine_case(3)
    decide = decision_mask(case["tradable"], 1)
    args = (case["preds"], case["dates"], case["symbols"], decide)
    free = Backtest(bootstrap=0, position_method="weights", gross=1.0).weights(*args)
    capped = Backtest(bootstrap=0, position_method="weights", gross=1.0, net=0.05).weights(*args)
    assert (np.abs(free.sum(axis=1)) > 0.05 + 1e-9).any()  # the cap binds somewhere
    assert (np.abs(capped.sum(axis=1)) <= 0.05 + 1e-12).all()
    assert (np.abs(capped).sum(axis=1) <= 1.0 + 1e-12).all()
    with pytest.raises(ConfigError, match="evaluation.net"):
        Backtest(net=0.0)


@pytest.mark.parametrize("method", ["rank", "zscore", "sign", "weights"])
@pytest.mark.parametrize("signal_step", [None, 1, 2])
def test_positions_at_equals_with_positions_on_the_last_bar(method, signal_step) -> None:
    """The service's array path gives the weights of `with_positions` on one bar's rows:
    a subset of symbols, a NaN forecast, a symbol not tradable, every execution mode."""
    import pandas as pd

    from plusultra.evaluation.backtest.engine import Backtest

    rng = np.random.default_rng(3)
    symbols = [f"S{i}" for i in range(7)]
    cols = np.array([5, 0, 2, 3, 6])
    forecasts = rng.normal(0, 0.01, (len(cols), 3))
    forecasts[3, :] = np.nan
    tradable = np.ones(len(symbols), dtype=bool)
    tradable[2] = False
    when = pd.Timestamp("2024-05-02")
    frame = pd.DataFrame({"symbol": [symbols[c] for c in cols], "timestamp": when})
    for k in range(3):
        frame[f"pred_{k + 1}"] = forecasts[:, k]
    bt = Backtest(bootstrap=0, position_method=method, signal_step=signal_step, net=0.4)
    for execution in (None, "next_open", "next_close", "same_close"):
        args = (frame, np.array([when]), symbols, tradable[None])
        want = bt.with_positions(*args, execution=execution)
        got = bt.positions_at(forecasts, cols, tradable, execution=execution)
        np.testing.assert_array_equal(got, want["position"].to_numpy())
    assert got[2] == 0.0 and got[3] == 0.0  # not tradable; no forecast
    with pytest.raises(ConfigError, match="signal_step=4"):
        Backtest(bootstrap=0, signal_step=4).positions_at(forecasts, cols, tradable)
