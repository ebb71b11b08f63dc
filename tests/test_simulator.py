"""Frictionless simulator (vectorised vs reference loop, hand case) and passive baselines."""

from __future__ import annotations

import math

import numpy as np
import pytest

from plusultra.errors import ConfigError, DataError
from plusultra.sim.frictionless import FrictionlessSimulator, SimResult, simulate_reference
from tests.baseline_returns import buy_and_hold_returns, equal_weight_returns

NAN = float("nan")
FIELDS = ("portfolio_returns", "equity", "turnover", "gross_exposure", "net_exposure")


def _random_scenario(seed: int, n_t: int = 60, n_s: int = 7) -> tuple[np.ndarray, np.ndarray]:
    """Returns with late listings, early delistings and holes; leveraged long/short weights."""
    rng = np.random.default_rng(seed)
    returns = rng.normal(0.0005, 0.02, size=(n_t, n_s))
    returns[: rng.integers(1, n_t // 3), 0] = NAN  # listed late
    returns[rng.integers(n_t // 2, n_t) :, 1] = NAN  # delisted
    returns[rng.random((n_t, n_s)) < 0.05] = NAN  # holes
    gross = rng.uniform(0.5, 3.0, size=(n_t, 1))  # leverage up to 3x
    raw = rng.normal(0.0, 1.0, size=(n_t, n_s))
    weights = raw / np.abs(raw).sum(axis=1, keepdims=True) * gross
    weights[rng.random((n_t, n_s)) < 0.05] = NAN  # NaN weight = 0
    not_holdable = np.isnan(returns)
    weights[not_holdable] = np.where(rng.random(not_holdable.sum()) < 0.5, 0.0, NAN)
    return weights, returns


def _assert_same(a: SimResult, b: SimResult, cash: float) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        if name == "equity":
            x, y = x / cash, y / cash
        np.testing.assert_allclose(x, y, rtol=0, atol=1e-10, err_msg=name)


# --- simulator -------------------------------------------------------------------------------


def test_hand_computed_two_symbols_three_steps() -> None:
    weights = np.array([[0.5, 0.25], [1.0, 0.0], [0.5, -0.5]])
    returns = np.array([[0.10, -0.10], [0.20, 0.05], [-0.10, 0.10]])
    # t=0: 0.5*0.10 + 0.25*(-0.10) = 0.025; 25 % cash earns 0.
    # t=1: 1.0*0.20 = 0.20.   t=2: 0.5*(-0.10) - 0.5*0.10 = -0.10.
    # Drift after t=0: positions 0.55 and 0.225 of an equity of 1.025, so the trade to
    # [1, 0] is (1.025 - 0.55) / 1.025 + 0.225 / 1.025 = 0.7 / 1.025.
    # Drift after t=1: [1.2, 0] / 1.2 = [1, 0]; trade to [0.5, -0.5] is 0.5 + 0.5 = 1.0.
    expected = {
        "portfolio_returns": [0.025, 0.20, -0.10],
        "equity": [100.0, 102.5, 123.0, 110.7],
        "turnover": [0.75, 0.7 / 1.025, 1.0],
        "gross_exposure": [0.75, 1.0, 1.0],
        "net_exposure": [0.75, 1.0, 0.0],
    }
    for result in (
        FrictionlessSimulator(initial_cash=100.0).run(weights, returns),
        simulate_reference(weights, returns, initial_cash=100.0),
    ):
        for name, values in expected.items():
            np.testing.assert_allclose(getattr(result, name), values, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_matches_reference(seed: int) -> None:
    weights, returns = _random_scenario(seed)
    fast = FrictionlessSimulator(initial_cash=250_000.0).run(weights, returns)
    slow = simulate_reference(weights, returns, initial_cash=250_000.0)
    assert fast.equity.shape == (61,) and fast.turnover.shape == (60,)
    assert np.isfinite(fast.equity).all()
    _assert_same(fast, slow, 250_000.0)


def test_equity_is_initial_cash_times_compounded_returns() -> None:
    weights, returns = _random_scenario(11)
    res = FrictionlessSimulator().run(weights, returns)
    assert res.equity[0] == 1_000_000.0
    np.testing.assert_allclose(res.equity[1:] / res.equity[:-1] - 1.0, res.portfolio_returns)


def test_constant_weights_single_symbol_rebalance_turnover() -> None:
    # Hold 100 % of a symbol that goes +10 %: the drifted weight stays 1, so no trade after t=0.
    res = FrictionlessSimulator().run(np.ones((3, 1)), np.full((3, 1), 0.10))
    np.testing.assert_allclose(res.turnover, [1.0, 0.0, 0.0], atol=1e-15)
    np.testing.assert_allclose(res.equity, 1e6 * 1.1 ** np.arange(4))


def test_nan_weights_are_zero() -> None:
    weights, returns = _random_scenario(3)
    zeroed = np.where(np.isnan(weights), 0.0, weights)
    sim = FrictionlessSimulator()
    _assert_same(sim.run(weights, returns), sim.run(zeroed, returns), 1e6)


def test_ruined_book_matches_reference() -> None:
    weights = np.array([[1.0], [0.5]])
    returns = np.array([[-1.0], [0.1]])
    fast = FrictionlessSimulator().run(weights, returns)
    slow = simulate_reference(weights, returns)
    np.testing.assert_allclose(fast.equity, [1e6, 0.0, 0.0])
    np.testing.assert_allclose(fast.turnover, [1.0, 0.5])
    _assert_same(fast, slow, 1e6)


def test_empty_panel() -> None:
    res = FrictionlessSimulator(initial_cash=5.0).run(np.zeros((0, 3)), np.zeros((0, 3)))
    assert res.equity.tolist() == [5.0]
    assert res.portfolio_returns.shape == res.turnover.shape == (0,)


def test_nonzero_weight_on_nan_return_names_first_index() -> None:
    returns = np.zeros((4, 3))
    returns[1, 2] = returns[2, 0] = NAN
    weights = np.full((4, 3), 0.1)
    for fn in (FrictionlessSimulator().run, simulate_reference):
        with pytest.raises(DataError, match=r"\(t=1, s=2\)"):
            fn(weights, returns)


@pytest.mark.parametrize(
    ("weights", "returns", "match"),
    [
        (np.zeros((3, 2)), np.zeros((3, 3)), "does not match"),
        (np.zeros(3), np.zeros(3), "2-D"),
        (np.array([[np.inf]]), np.zeros((1, 1)), r"weights\[0, 0\]"),
        (np.zeros((1, 1)), np.array([[-np.inf]]), r"returns\[0, 0\]"),
    ],
)
def test_bad_panels_raise_data_error(weights: np.ndarray, returns: np.ndarray, match: str) -> None:
    with pytest.raises(DataError, match=match):
        FrictionlessSimulator().run(weights, returns)
    with pytest.raises(DataError, match=match):
        simulate_reference(weights, returns)


@pytest.mark.parametrize("cash", [0.0, -1.0, math.nan])
def test_initial_cash_must_be_positive(cash: float) -> None:
    with pytest.raises(ConfigError, match="initial_cash"):
        FrictionlessSimulator(initial_cash=cash)
    with pytest.raises(ConfigError, match="initial_cash"):
        simulate_reference(np.zeros((1, 1)), np.zeros((1, 1)), initial_cash=cash)


# --- baselines -------------------------------------------------------------------------------


def _buy_and_hold_loop(returns: np.ndarray) -> np.ndarray:
    """Per-symbol values in currency: buy 1/n of each t=0 symbol, sell to cash on first NaN."""
    n_t, n_s = returns.shape
    bought = [s for s in range(n_s) if not math.isnan(returns[0, s])]
    values = {s: 1.0 / len(bought) for s in bought}
    cash = 0.0
    out = []
    for t in range(n_t):
        before = cash + sum(values.values())
        for s in list(values):
            if math.isnan(returns[t, s]):
                cash += values.pop(s)  # delisted: sold at its last value
            else:
                values[s] *= 1.0 + returns[t, s]
        out.append((cash + sum(values.values())) / before - 1.0)
    return np.array(out)


def _equal_weight_loop(returns: np.ndarray) -> np.ndarray:
    out = []
    for row in returns:
        equity = 1.0
        valid = [x for x in row if not math.isnan(x)]
        values = [equity / len(valid) * (1.0 + x) for x in valid]
        out.append(sum(values) - 1.0 if valid else 0.0)
    return np.array(out)


def test_baselines_hand_computed() -> None:
    returns = np.array(
        [
            [0.10, -0.10, NAN],  # C not tradable at t=0: never bought by buy-and-hold
            [0.20, NAN, 0.05],  # B delisted: 0.45 moves to cash for good
            [-0.10, 0.30, 0.00],
        ]
    )
    # Buy and hold: A 0.5 -> 0.55 -> 0.66 -> 0.594, B 0.5 -> 0.45 -> cash.
    # Book: 1.0 -> 1.0 -> 1.11 -> 1.044.
    np.testing.assert_allclose(
        buy_and_hold_returns(returns), [0.0, 0.11, 1.044 / 1.11 - 1.0], atol=1e-15
    )
    # Equal weight: mean of the tradable returns of each row.
    np.testing.assert_allclose(equal_weight_returns(returns), [0.0, 0.125, 0.2 / 3.0], atol=1e-15)


@pytest.mark.parametrize("seed", range(4))
def test_baselines_match_loops(seed: int) -> None:
    _, returns = _random_scenario(seed, n_t=80, n_s=9)
    returns[5, :] = NAN  # a row with nothing tradable
    np.testing.assert_allclose(
        buy_and_hold_returns(returns), _buy_and_hold_loop(returns), atol=1e-12
    )
    np.testing.assert_allclose(
        equal_weight_returns(returns), _equal_weight_loop(returns), atol=1e-12
    )


def test_equal_weight_equals_simulator_with_equal_weights() -> None:
    _, returns = _random_scenario(7)
    valid = ~np.isnan(returns)
    weights = valid / np.maximum(valid.sum(axis=1, keepdims=True), 1)
    sim = FrictionlessSimulator().run(weights, returns)
    np.testing.assert_allclose(equal_weight_returns(returns), sim.portfolio_returns, atol=1e-14)


def test_buy_and_hold_ruined_book_returns_zero_after() -> None:
    out = buy_and_hold_returns(np.array([[-1.0], [0.5]]))
    np.testing.assert_allclose(out, [-1.0, 0.0])


def test_baseline_bad_input() -> None:
    with pytest.raises(DataError, match="t=0"):
        buy_and_hold_returns(np.array([[NAN, NAN], [0.1, 0.1]]))
    with pytest.raises(DataError, match="2-D"):
        equal_weight_returns(np.zeros(4))
    with pytest.raises(DataError, match=r"returns\[1, 0\]"):
        equal_weight_returns(np.array([[0.0], [np.inf]]))
    assert buy_and_hold_returns(np.zeros((0, 2))).shape == (0,)


# --- execution timing (prices in, plusultra.execution) ----------------------------------------


def _price_scenario(seed: int, n_t: int = 40, n_s: int = 5, lag: int = 1):
    """(T + 1 + lag, S) opens and closes, a late listing, and weights on listed symbols only."""
    rng = np.random.default_rng(seed)
    bars = n_t + 1 + lag
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, (bars, n_s)), axis=0))
    open_ = close * np.exp(rng.normal(0, 0.01, (bars, n_s)))
    close[:6, 0] = open_[:6, 0] = NAN  # listed at bar 6
    raw = rng.normal(0.0, 1.0, (n_t, n_s))
    weights = raw / np.abs(raw).sum(axis=1, keepdims=True) * rng.uniform(0.5, 2.0, (n_t, 1))
    weights[: 6 - lag, 0] = 0.0  # no fill price before the listing
    weights[rng.random(weights.shape) < 0.05] = NAN
    return weights, open_, close


@pytest.mark.parametrize("mode", ["next_open", "next_close", "same_close"])
@pytest.mark.parametrize("seed", range(3))
def test_fill_path_reference_matches_vectorised(mode: str, seed: int) -> None:
    weights, open_, close = _price_scenario(seed, lag=0 if mode == "same_close" else 1)
    fast = FrictionlessSimulator(50_000.0, execution=mode).run(weights, close=close, open=open_)
    slow = simulate_reference(weights, None, 50_000.0, close=close, open=open_, execution=mode)
    assert fast.execution == slow.execution == mode
    _assert_same(fast, slow, 50_000.0)


def test_next_open_hand_case() -> None:
    # Decided at close 0, bought at open 1 (100), valued at open 2 (110): +10 %; decided at
    # close 1, sold at open 2. Bar 0's own move (close 0 -> 1) and close 1 never count.
    open_ = np.array([[90.0], [100.0], [110.0], [121.0]])
    close = np.array([[95.0], [300.0], [105.0], [120.0]])
    res = FrictionlessSimulator(100.0).run(np.array([[1.0], [0.0]]), close=close, open=open_)
    assert res.execution == "next_open"
    np.testing.assert_allclose(res.portfolio_returns, [0.10, 0.0])
    np.testing.assert_allclose(res.equity, [100.0, 110.0, 110.0])
    closes = FrictionlessSimulator(100.0, execution="next_close")
    np.testing.assert_allclose(
        closes.run(np.array([[1.0], [0.0]]), close=close, open=open_).portfolio_returns,
        [105.0 / 300.0 - 1.0, 0.0],
    )


@pytest.mark.parametrize("mode", ["next_open", "next_close"])
def test_a_position_decided_at_t_earns_nothing_of_bar_t(mode: str) -> None:
    """Moving bar t's close (and t + 1's close under next_open) leaves P&L of t unchanged."""
    weights, open_, close = _price_scenario(4)
    sim = FrictionlessSimulator(execution=mode)
    before = sim.run(weights, close=close, open=open_).portfolio_returns
    t = 20
    bumped = close.copy()
    bumped[t] *= 1.3
    if mode == "next_open":
        bumped[t + 1] *= 1.3
    after = sim.run(weights, close=bumped, open=open_).portfolio_returns
    assert after[t] == before[t]


def test_perturbing_the_next_open_changes_the_fill() -> None:
    weights, open_, close = _price_scenario(5)
    sim = FrictionlessSimulator()
    t = 15
    moved = open_.copy()
    moved[t + 1] *= 1.05
    before = sim.run(weights, close=close, open=open_)
    after = sim.run(weights, close=close, open=moved)
    assert after.portfolio_returns[t] != pytest.approx(before.portfolio_returns[t], abs=1e-6)
    earlier = slice(0, t - 1)  # decisions whose fills and exits come before open t + 1
    a, b = after.portfolio_returns, before.portfolio_returns
    np.testing.assert_array_equal(a[earlier], b[earlier])


def test_same_close_is_the_old_close_to_close_simulation() -> None:
    weights, open_, close = _price_scenario(6, lag=0)
    returns = close[1:] / close[:-1] - 1.0
    old = FrictionlessSimulator().run(weights, returns)
    new = FrictionlessSimulator(execution="same_close").run(weights, close=close, open=open_)
    _assert_same(new, old, 1e6)


def test_close_only_prices_fill_at_the_next_close_and_next_open_is_refused() -> None:
    weights, _, close = _price_scenario(7)
    res = FrictionlessSimulator().run(weights, close=close, open=np.full_like(close, NAN))
    assert res.execution == "next_close"
    with pytest.raises(DataError, match="simulator.execution=next_open"):
        FrictionlessSimulator(execution="next_open").run(weights, close=close)
    with pytest.raises(ConfigError, match="simulator.execution"):
        FrictionlessSimulator(execution="tomorrow")
    with pytest.raises(DataError, match="T \\+ 1 bars"):
        FrictionlessSimulator(execution="same_close").run(weights, close=close)


@pytest.mark.parametrize("mode", ["next_open", "next_close", "same_close"])
def test_prices_earn_execution_returns(mode: str) -> None:
    """Given prices, the simulator earns exactly `plusultra.execution.execution_returns`."""
    from plusultra.execution import execution_returns

    lag = 0 if mode == "same_close" else 1
    weights, open_, close = _price_scenario(8, lag=lag)
    earned = execution_returns(mode, open_, close)[: weights.shape[0]]
    sim = FrictionlessSimulator(execution=mode)
    _assert_same(sim.run(weights, close=close, open=open_), sim.run(weights, earned), 1e6)
