"""Extended risk metrics: hand-computed values, loop references and ``risk_metrics``."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import kurtosis as scipy_kurtosis
from scipy.stats import skew as scipy_skew

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation.metrics.bootstrap import sharpe_interval
from plusultra.evaluation.metrics.risk import (
    cost_drag,
    cost_share,
    cvar,
    drawdown_duration,
    excess_annual_return,
    exposure,
    gross_returns,
    information_ratio,
    ir_benchmark,
    return_moments,
    risk_metrics,
    trade_analytics,
)

NAN = float("nan")


# ---------------------------------------------------------------- naive loop references


def drawdown_duration_ref(returns: list[float]) -> float:
    """Walk the equity curve, counting periods below the peak."""
    if not returns:
        return NAN
    equity, peak, run, longest = 1.0, 1.0, 0, 0
    for x in returns:
        equity *= 1.0 + x
        if equity < peak:
            run += 1
        else:
            peak, run = equity, 0
        longest = max(longest, run)
    return float(longest)


def cvar_ref(returns: list[float], level: float) -> float:
    """Sort, then average the ceil((1 - level) * T) smallest returns."""
    if not returns:
        return NAN
    k = max(1, math.ceil(round((1.0 - level) * len(returns), 9)))
    worst = sorted(returns)[:k]
    total = 0.0
    for x in worst:
        total += x
    return total / k


def information_ratio_ref(returns: list[float], bench: list[float], ppy: float) -> float:
    active = [a - b for a, b in zip(returns, bench, strict=True)]
    n = len(active)
    mean = sum(active) / n
    var = sum((a - mean) ** 2 for a in active) / (n - 1)
    return mean / math.sqrt(var) * math.sqrt(ppy)


def return_moments_ref(returns: list[float]) -> dict[str, float]:
    """Population central moments by explicit sums: skew m3 / m2^1.5, kurtosis m4 / m2^2."""
    n = len(returns)
    if n < 3 or max(returns) == min(returns):
        return {"skew": NAN, "kurtosis": NAN}
    mean = sum(returns) / n
    m2 = sum((x - mean) ** 2 for x in returns) / n
    m3 = sum((x - mean) ** 3 for x in returns) / n
    m4 = sum((x - mean) ** 4 for x in returns) / n
    return {"skew": m3 / m2**1.5, "kurtosis": m4 / m2**2}


def trade_analytics_ref(pnl: list[float]) -> dict[str, float]:
    wins, losses = [], []
    for x in pnl:
        if x > 0:
            wins.append(x)
        elif x < 0:
            losses.append(x)
    return {
        "win_rate": len(wins) / len(pnl) if pnl else NAN,
        "avg_win": sum(wins) / len(wins) if wins else NAN,
        "avg_loss": sum(losses) / len(losses) if losses else NAN,
        "profit_factor": sum(wins) / abs(sum(losses)) if losses else NAN,
        "n_trades": float(len(pnl)),
    }


def _random_returns(seed: int, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_t(4, size=n) * 0.01 + 0.0003


# ---------------------------------------------------------------- drawdown duration


def test_drawdown_duration_hand_computed() -> None:
    # Equity 1 -> 1.1 -> 0.88 -> 0.924: below the 1.1 peak for the last 2 periods.
    assert drawdown_duration(np.array([0.10, -0.20, 0.05])) == 2.0
    # 1, 1.1, 0.99 (1 below), 1.188 new peak, 1.1286, 1.07217, 1.07217 (3 below, open at end).
    assert drawdown_duration(np.array([0.1, -0.1, 0.2, -0.05, -0.05, 0.0])) == 3.0
    # Falls straight away from the starting 1.0: every period counts.
    assert drawdown_duration(np.array([-0.01, -0.01, 0.005])) == 3.0
    # 1, 1, 1.5, 0.75 (1 below), 1.5 (back at the peak exactly: not below), 1.65.
    assert drawdown_duration(np.array([0.0, 0.5, -0.5, 1.0, 0.1])) == 1.0


def test_drawdown_duration_zero_when_never_below_peak_and_nan_when_empty() -> None:
    assert drawdown_duration(np.array([0.01, 0.0, 0.02])) == 0.0
    assert math.isnan(drawdown_duration(np.array([])))


@pytest.mark.parametrize("seed", range(5))
def test_drawdown_duration_matches_reference(seed: int) -> None:
    r = _random_returns(seed, 500)
    assert drawdown_duration(r) == drawdown_duration_ref(r.tolist())


# ---------------------------------------------------------------- CVaR


def test_cvar_hand_computed_and_tail_size_convention() -> None:
    r = np.array([0.03, -0.05, 0.01, -0.02, 0.0, 0.02, -0.01, 0.04, -0.03, 0.05])
    # T = 10, level 0.95: 0.5 periods -> ceil -> the single worst, -0.05.
    assert cvar(r, 0.95) == pytest.approx(-0.05)
    # level 0.8: (1 - 0.8) * 10 = 1.9999999999999996 in floats, rounded to 2 -> mean(-0.05, -0.03).
    assert cvar(r, 0.8) == pytest.approx(-0.04)
    # level 0.75: 2.5 -> 3 worst -> mean(-0.05, -0.03, -0.02).
    assert cvar(r, 0.75) == pytest.approx(-0.1 / 3)
    # T = 100 at 95 %: 0.05 * 100 = 5.000000000000004 in floats, still k = 5, not 6.
    big = np.arange(100) / 1000.0 - 0.05  # -0.05, -0.049, ...
    assert cvar(big, 0.95) == pytest.approx(np.mean([-0.05, -0.049, -0.048, -0.047, -0.046]))
    assert math.isnan(cvar(np.array([])))


@pytest.mark.parametrize("level", [0.9, 0.95, 0.99])
def test_cvar_matches_reference(level: float) -> None:
    for seed in range(3):
        r = _random_returns(seed, 257)
        assert cvar(r, level) == pytest.approx(cvar_ref(r.tolist(), level), rel=1e-12)


# ---------------------------------------------------------------- exposure, costs, IR, trades


def test_exposure_hand_computed() -> None:
    w = np.array([[0.5, -0.5, 0.0], [0.0, 0.0, 0.0], [1.0, NAN, 0.25]])
    got = exposure(w)
    assert got["gross_exposure"] == pytest.approx((1.0 + 0.0 + 1.25) / 3)
    assert got["net_exposure"] == pytest.approx((0.0 + 0.0 + 1.25) / 3)
    assert got["invested_share"] == pytest.approx(2 / 3)
    assert all(math.isnan(v) for v in exposure(np.zeros((0, 3))).values())


def test_cost_share_hand_computed_and_nan_without_gross_profit() -> None:
    assert cost_share(np.array([0.02, -0.01, 0.03]), np.array([0.001, 0.002, 0.002])) == (
        pytest.approx(0.005 / 0.04)
    )
    assert cost_share(100.0, 25.0) == pytest.approx(0.25)
    assert math.isnan(cost_share(np.array([0.01, -0.01]), np.array([0.001, 0.0])))
    assert math.isnan(cost_share(np.array([-0.01]), np.array([0.001])))
    with pytest.raises(DataError, match="costs must be >= 0"):
        cost_share(np.array([0.01]), np.array([-0.001]))
    with pytest.raises(DataError, match="must be scalars or equal"):
        cost_share(np.array([0.01, 0.02]), np.array([0.001]))


def test_ir_benchmark_like_for_like() -> None:
    """Dollar-neutral books are measured against cash, net-exposed ones against buy-and-hold."""
    neutral = np.array([[0.5, -0.5], [0.3, -0.25], [np.nan, 0.0]])  # |net| 0.05 <= 0.1 * gross
    assert ir_benchmark(neutral) == "cash"
    assert ir_benchmark(np.zeros((4, 3))) == "cash"  # an empty book
    assert ir_benchmark(np.full((4, 2), 0.5)) == "buyhold"  # long-only
    assert ir_benchmark(np.array([[0.8, -0.2], [0.9, -0.3]])) == "buyhold"  # net long 130/30-like
    assert ir_benchmark(np.array([[0.6, -0.4]])) == "buyhold"  # net 0.2 > 0.1 * gross 1
    with pytest.raises(DataError, match="weights"):
        ir_benchmark(np.zeros(3))


def test_information_ratio_hand_computed_and_reference() -> None:
    # Active returns 0.01, -0.01, 0.03: mean 0.01, sample std 0.02 -> 0.5 * sqrt(4) = 1.0.
    r = np.array([0.02, 0.0, 0.05])
    b = np.array([0.01, 0.01, 0.02])
    assert information_ratio(r, b, periods_per_year=4) == pytest.approx(1.0)
    for seed in range(3):
        r, b = _random_returns(seed), _random_returns(seed + 10)
        expected = information_ratio_ref(r.tolist(), b.tolist(), 252)
        assert information_ratio(r, b) == pytest.approx(expected, rel=1e-12)
    assert math.isnan(information_ratio(r, r))  # no active return
    assert math.isnan(information_ratio(r[:1], b[:1]))
    with pytest.raises(DataError, match="must match"):
        information_ratio(r, b[:-1])


def test_trade_analytics_hand_computed() -> None:
    got = trade_analytics(np.array([10.0, -5.0, 0.0, 20.0, -15.0]))
    assert got == {
        "win_rate": 0.4,  # a zero trade is a trade that did not win
        "avg_win": 15.0,
        "avg_loss": -10.0,
        "profit_factor": 1.5,  # 30 / 20
        "n_trades": 5.0,
    }
    assert math.isnan(trade_analytics(np.array([1.0, 2.0]))["profit_factor"])
    assert trade_analytics(np.array([-1.0]))["profit_factor"] == 0.0
    empty = trade_analytics(np.array([]))
    assert empty["n_trades"] == 0.0
    assert all(math.isnan(v) for k, v in empty.items() if k != "n_trades")


def test_trade_analytics_matches_reference() -> None:
    pnl = np.round(_random_returns(7, 200), 3)  # rounding makes some trades exactly 0
    got, ref = trade_analytics(pnl), trade_analytics_ref(pnl.tolist())
    assert got.keys() == ref.keys()
    for key in ref:
        assert got[key] == pytest.approx(ref[key], rel=1e-12), key


# ---------------------------------------------------------------- skew and kurtosis


def test_return_moments_hand_computed() -> None:
    # r = 0, 0, 0, 4: mean 1, deviations -1, -1, -1, 3; m2 = 12/4 = 3, m3 = 24/4 = 6,
    # m4 = 84/4 = 21 -> skew 6 / 3^1.5 = 2/sqrt(3), kurtosis 21 / 9 = 7/3.
    got = return_moments(np.array([0.0, 0.0, 0.0, 4.0]))
    assert got["skew"] == pytest.approx(2 / math.sqrt(3), rel=1e-12)
    assert got["kurtosis"] == pytest.approx(7 / 3, rel=1e-12)
    # Symmetric two-point returns: skew 0, kurtosis 1 (the smallest possible).
    got = return_moments(np.array([0.01, -0.01, 0.01, -0.01]))
    assert got["skew"] == pytest.approx(0.0, abs=1e-12)
    assert got["kurtosis"] == pytest.approx(1.0, rel=1e-12)


@pytest.mark.parametrize("seed", range(4))
def test_return_moments_match_reference_and_scipy(seed: int) -> None:
    r = _random_returns(seed, 400)
    got, ref = return_moments(r), return_moments_ref(r.tolist())
    assert got["skew"] == pytest.approx(ref["skew"], rel=1e-9)
    assert got["kurtosis"] == pytest.approx(ref["kurtosis"], rel=1e-9)
    assert got["skew"] == pytest.approx(scipy_skew(r, bias=True), rel=1e-9)
    assert got["kurtosis"] == pytest.approx(scipy_kurtosis(r, fisher=False, bias=True), rel=1e-9)


def test_return_moments_nan_when_undefined_and_normal_near_three() -> None:
    for r in ([], [0.01], [0.01, -0.02], [0.003] * 10):
        assert all(math.isnan(v) for v in return_moments(np.array(r)).values()), r
    normal = np.random.default_rng(0).normal(0.0, 0.01, size=200_000)
    got = return_moments(normal)
    assert got["skew"] == pytest.approx(0.0, abs=0.03)
    assert got["kurtosis"] == pytest.approx(3.0, abs=0.05)  # not excess kurtosis
    with pytest.raises(DataError, match="finite"):
        return_moments(np.array([0.1, NAN, 0.2]))


# ---------------------------------------------------------------- risk_metrics


def test_risk_metrics_keys_follow_inputs() -> None:
    r = _random_returns(3, 200)
    base = {"max_drawdown_duration", "cvar_95", "skew", "kurtosis"}
    intervals = {"sharpe_lo", "sharpe_hi", "annual_return_lo", "annual_return_hi"}
    assert set(risk_metrics(r, n_boot=0)) == base
    assert set(risk_metrics(r, n_boot=50)) == base | intervals
    full = risk_metrics(
        r,
        weights=np.full((200, 2), 0.5),
        benchmark=_random_returns(4, 200),
        trade_pnl=np.array([1.0, -0.5]),
        gross_pnl=r + 0.0001,
        costs=np.full(200, 0.0001),
        n_boot=50,
    )
    assert set(full) == base | intervals | {
        "gross_exposure",
        "net_exposure",
        "invested_share",
        "cost_share",
        "information_ratio",
        "win_rate",
        "avg_win",
        "avg_loss",
        "profit_factor",
        "n_trades",
    }
    assert full["max_drawdown_duration"] == drawdown_duration_ref(r.tolist())
    assert full["cvar_95"] == pytest.approx(cvar_ref(r.tolist(), 0.95))
    moments = return_moments_ref(r.tolist())
    assert full["skew"] == pytest.approx(moments["skew"], rel=1e-9)
    assert full["kurtosis"] == pytest.approx(moments["kurtosis"], rel=1e-9)
    assert full["gross_exposure"] == 1.0 and full["invested_share"] == 1.0
    assert full["profit_factor"] == 2.0
    assert (full["sharpe_lo"], full["sharpe_hi"]) == sharpe_interval(r, n_boot=50)[1:]


def test_risk_metrics_bad_inputs() -> None:
    r = _random_returns(3, 20)
    with pytest.raises(DataError, match="both gross_pnl and costs"):
        risk_metrics(r, gross_pnl=r, n_boot=0)
    with pytest.raises(DataError, match="weights"):
        risk_metrics(r, weights=np.ones((19, 2)), n_boot=0)
    with pytest.raises(ConfigError, match="periods_per_year"):
        risk_metrics(r, periods_per_year=0)
    with pytest.raises(ConfigError, match="n_boot"):
        risk_metrics(r, n_boot=-1)
    with pytest.raises(DataError, match="finite"):
        risk_metrics(np.array([0.1, np.inf]))
    with pytest.raises(DataError, match="1-D"):
        drawdown_duration(np.ones((2, 2)))


# ---------------------------------------------------------------- excess return and cost drag


def excess_annual_return_ref(r: list[float], b: list[float], p: float) -> float:
    """Loop reference: the mean active return times the periods in a year."""
    total = 0.0
    for x, y in zip(r, b, strict=True):
        total += x - y
    return total / len(r) * p


def cost_drag_ref(r: list[float], costs: list[float], equity: list[float], p: float) -> float:
    """Loop reference: compound the book with and without its costs, per bar."""
    net = gross = 1.0
    for t, x in enumerate(r):
        net *= 1.0 + x
        gross *= 1.0 + x + (costs[t] / equity[t] if equity[t] != 0 else 0.0)
    n = len(r)
    return gross ** (p / n) - net ** (p / n)


def test_excess_annual_return_reference_and_ir_identity() -> None:
    assert excess_annual_return(np.array([0.02, 0.0]), np.array([0.01, 0.01]), 4) == 0.0
    for seed in range(3):
        r, b = _random_returns(seed), _random_returns(seed + 10)
        got = excess_annual_return(r, b)
        assert got == pytest.approx(excess_annual_return_ref(r.tolist(), b.tolist(), 252))
        tracking = np.std(r - b, ddof=1) * math.sqrt(252)
        assert information_ratio(r, b) == pytest.approx(got / tracking, rel=1e-12)
    assert math.isnan(excess_annual_return(np.array([]), np.array([])))
    with pytest.raises(DataError, match="must match"):
        excess_annual_return(r, b[:-1])


def test_cost_drag_reference_and_frictionless_zero() -> None:
    rng = np.random.default_rng(0)
    for _ in range(3):
        r = _random_returns(int(rng.integers(100)))
        equity = 1e6 * np.concatenate([[1.0], np.cumprod(1.0 + r)])
        costs = rng.uniform(0, 5e-4, r.size) * equity[:-1]  # up to 5 bp of equity a bar
        costs[3] = 0.0
        g = gross_returns(r, costs, equity)
        got = cost_drag(r, g)
        assert got == pytest.approx(cost_drag_ref(r.tolist(), costs, equity, 252), rel=1e-9)
        assert got > 0
    assert cost_drag(r, gross_returns(r, None, None)) == 0.0  # no costs: no drag
    flat = np.zeros(3)
    assert gross_returns(flat, np.ones(3), np.array([0.0, 0.0, 1.0, 1.0]))[:2].tolist() == [0, 0]
    assert math.isnan(cost_drag(np.array([]), np.array([])))
    with pytest.raises(DataError, match=r"\(T \+ 1,\)"):
        gross_returns(r, costs, equity[:-1])
