"""Extended risk metrics: hand-computed values, loop references, bootstrap and deflated Sharpe."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import kurtosis as scipy_kurtosis
from scipy.stats import norm
from scipy.stats import skew as scipy_skew

from plusultra.errors import ConfigError, DataError
from plusultra.evaluation import risk
from plusultra.evaluation.metrics import compute_metrics
from plusultra.evaluation.risk import (
    annual_return_interval,
    cost_share,
    cvar,
    deflated_sharpe,
    drawdown_duration,
    expected_max_sharpe,
    exposure,
    information_ratio,
    return_moments,
    risk_metrics,
    sharpe_interval,
    stationary_bootstrap,
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


def bootstrap_indices_ref(rng: np.random.Generator, n_t: int, mean_block: float) -> list[int]:
    """One replicate: 2 * T scalar draws (T block tests, then T starts), then walk the blocks."""
    test = [rng.random() for _ in range(n_t)]
    start = [rng.random() for _ in range(n_t)]
    idx = []
    for t in range(n_t):
        if t == 0 or test[t] < 1.0 / mean_block:
            i = min(int(start[t] * n_t), n_t - 1)  # a new block at a uniform position
        else:
            i = (idx[-1] + 1) % n_t  # the block runs on, wrapping around
        idx.append(i)
    return idx


def quantile_ref(values: list[float], q: float) -> float:
    """Linear-interpolation quantile of sorted values (numpy's default method)."""
    xs = sorted(values)
    h = (len(xs) - 1) * q
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def stationary_bootstrap_ref(returns, statistic, n_boot, mean_block, level, seed):
    """Python loop over replicates with the same random draws as the vectorised version."""
    r = np.asarray(returns, dtype=float)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_boot):
        idx = bootstrap_indices_ref(rng, r.size, mean_block)
        value = float(statistic(r[idx][None, :])[0])
        if math.isfinite(value):
            stats.append(value)
    point = float(statistic(r[None, :])[0])
    return point, quantile_ref(stats, (1 - level) / 2), quantile_ref(stats, (1 + level) / 2)


def _mean_stat(x: np.ndarray) -> np.ndarray:
    return x.mean(axis=-1)


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


# ---------------------------------------------------------------- stationary bootstrap


@pytest.mark.parametrize("mean_block", [1, 2.5, 7, 40])
def test_resample_indices_match_loop_with_same_draws(mean_block: float) -> None:
    n_t, n_boot = 30, 25
    rng = np.random.default_rng(3)
    fast = risk._resample_indices(rng.random((n_boot, 2, n_t)), 1.0 / mean_block)
    rng = np.random.default_rng(3)
    slow = np.array([bootstrap_indices_ref(rng, n_t, mean_block) for _ in range(n_boot)])
    np.testing.assert_array_equal(fast, slow)


def test_resample_indices_blocks_wrap_around_and_have_geometric_mean_length() -> None:
    n_t = 50
    idx = risk._resample_indices(np.random.default_rng(0).random((400, 2, n_t)), 1 / 8)
    runs_on = (np.diff(idx, axis=1) % n_t) == 1  # (B, T - 1) continuation of a block
    assert ((idx[:, :-1] == n_t - 1) & (idx[:, 1:] == 0)).any()  # some block wraps
    # A new block starts with probability 1/8 at each t >= 1 (geometric lengths, mean 8); one
    # landing exactly on the next index (chance 1/T) looks like a continuation.
    assert (~runs_on).mean() == pytest.approx(1 / 8 * (1 - 1 / n_t), rel=0.05)


@pytest.mark.parametrize("chunk", [1, 97, 10_000_000])
def test_stationary_bootstrap_matches_loop_reference(monkeypatch, chunk: int) -> None:
    """Same draws and the same answer whatever the chunking of the replicates."""
    monkeypatch.setattr(risk, "_CHUNK_ELEMENTS", chunk)
    r = _random_returns(1, 60)
    stat = risk._sharpe_stat(252)
    got = stationary_bootstrap(r, stat, n_boot=150, mean_block=4, level=0.9, seed=11)
    ref = stationary_bootstrap_ref(r, stat, 150, 4, 0.9, 11)
    assert got == ref  # identical draws, identical samples: exact, not approximate
    got = stationary_bootstrap(r, _mean_stat, n_boot=150, seed=5)  # default block: 60**(1/3) -> 4
    assert got == stationary_bootstrap_ref(r, _mean_stat, 150, 4, 0.95, 5)


def test_stationary_bootstrap_is_seeded_and_nan_when_undefined() -> None:
    r = _random_returns(2, 100)
    assert stationary_bootstrap(r, _mean_stat, 200, seed=1) == stationary_bootstrap(
        r, _mean_stat, 200, seed=1
    )
    assert stationary_bootstrap(r, _mean_stat, 200, seed=1) != stationary_bootstrap(
        r, _mean_stat, 200, seed=2
    )
    assert all(math.isnan(v) for v in stationary_bootstrap(np.array([]), _mean_stat))
    point, lo, hi = sharpe_interval(np.full(10, 0.01), n_boot=50)  # flat: Sharpe undefined
    assert math.isnan(point) and math.isnan(lo) and math.isnan(hi)


def test_interval_points_equal_compute_metrics() -> None:
    r = _random_returns(4, 400)
    m = compute_metrics(r, 252)
    point, lo, hi = sharpe_interval(r, 252, n_boot=300)
    assert point == pytest.approx(m["sharpe"], rel=1e-12)
    assert lo < point < hi
    point, lo, hi = annual_return_interval(r, 252, n_boot=300)
    assert point == pytest.approx(m["annual_return"], rel=1e-12)
    assert lo < point < hi


def test_sharpe_interval_covers_truth_and_shrinks_with_length() -> None:
    # iid normal returns, mean 0.0005 and std 0.01 per day: true annual Sharpe 0.05 * sqrt(252).
    true_sharpe = 0.05 * math.sqrt(252)
    rng = np.random.default_rng(2024)
    covered, n_series = 0, 20
    for _ in range(n_series):
        r = rng.normal(0.0005, 0.01, size=1000)
        _, lo, hi = sharpe_interval(r, n_boot=400, seed=1)
        covered += lo <= true_sharpe <= hi
    assert covered >= 16  # nominal 95 %: 19 of 20 expected, 16 allows for chance
    widths = {}
    for n_t in (500, 4000):
        r = rng.normal(0.0005, 0.01, size=n_t)
        _, lo, hi = sharpe_interval(r, n_boot=500, seed=1)
        assert lo <= true_sharpe <= hi
        widths[n_t] = hi - lo
    # The width scales like 1 / sqrt(T): about sqrt(8) ~ 2.8 times narrower.
    assert 2.0 < widths[500] / widths[4000] < 4.0


def test_stationary_bootstrap_large_input_is_chunked() -> None:
    r = _random_returns(9, 5000)
    point, lo, hi = sharpe_interval(r, n_boot=2000)
    assert lo < point < hi
    assert risk._CHUNK_ELEMENTS < 5000 * 2000  # the run above needed several chunks


def test_stationary_bootstrap_bad_arguments() -> None:
    r = _random_returns(0, 20)
    with pytest.raises(ConfigError, match="n_boot"):
        stationary_bootstrap(r, _mean_stat, n_boot=0)
    with pytest.raises(ConfigError, match="mean_block"):
        stationary_bootstrap(r, _mean_stat, mean_block=0.5)
    with pytest.raises(ConfigError, match="level"):
        stationary_bootstrap(r, _mean_stat, level=1.0)
    with pytest.raises(DataError, match="finite"):
        stationary_bootstrap(np.array([0.1, NAN]), _mean_stat)


# ---------------------------------------------------------------- deflated Sharpe


def test_deflated_sharpe_paper_example() -> None:
    """Bailey & Lopez de Prado (2014), numerical example: DSR ~ 0.9004.

    Annual Sharpe 2.5 and annual variance of trial Sharpes 0.5 over N = 100 trials, T = 1250
    daily returns (250 a year), skew -3, kurtosis 10. Per period:
    SR = 2.5 / sqrt(250) = 0.158113883, V = 0.5 / 250 = 0.002.
    Z(1 - 1/100) = 2.326347874, Z(1 - 1/(100 e)) = 2.680210445, gamma = 0.5772156649:
    SR0 = sqrt(0.002) * (0.4227843351 * 2.326347874 + 0.5772156649 * 2.680210445)
        = 0.04472135955 * 2.530611... = 0.1131720 (the paper's 0.1132).
    z = (0.158113883 - 0.1131720) * sqrt(1249)
        / sqrt(1 + 3 * 0.158113883 + 9 / 4 * 0.025) = 1.283816, Phi(z) = 0.900397.
    """
    sr, var = 2.5 / math.sqrt(250), 0.5 / 250
    sr0 = math.sqrt(0.002) * (0.4227843351 * 2.326347874 + 0.5772156649 * 2.680210445)
    assert sr0 == pytest.approx(0.1131720, abs=1e-7)
    z = (0.158113883 - sr0) * math.sqrt(1249) / math.sqrt(1 + 3 * 0.158113883 + 2.25 * 0.025)
    assert z == pytest.approx(1.283816, abs=1e-6)
    got = deflated_sharpe(
        sr, n_trials=100, sharpe_variance=var, n_periods=1250, skew=-3, kurtosis=10
    )
    assert got == pytest.approx(0.900397, abs=1e-6)
    assert got == pytest.approx(0.9004, abs=5e-5)  # the value printed in the paper
    assert got == pytest.approx(norm.cdf(z), abs=1e-6)


def test_expected_max_sharpe_is_the_papers_sr0_and_used_by_deflated_sharpe() -> None:
    assert expected_max_sharpe(100, 0.002) == pytest.approx(0.1131720, abs=1e-7)
    assert expected_max_sharpe(1, 0.5) == 0.0
    # Scales with sqrt(V): an annual variance gives an annual SR0 (x sqrt(250) here).
    assert expected_max_sharpe(100, 0.5) == pytest.approx(
        expected_max_sharpe(100, 0.002) * math.sqrt(250), rel=1e-12
    )
    sr0s = [expected_max_sharpe(n, 0.01) for n in (2, 10, 100, 1000)]
    assert sr0s == sorted(sr0s)  # more trials, higher bar
    # DSR is exactly Phi of the probabilistic Sharpe against SR0.
    sr, n_t = 0.12, 500
    z = (sr - expected_max_sharpe(20, 0.003)) * math.sqrt(n_t - 1) / math.sqrt(1 + sr**2 / 2)
    assert deflated_sharpe(sr, 20, 0.003, n_t, 0.0, 3.0) == pytest.approx(norm.cdf(z), rel=1e-12)
    with pytest.raises(ConfigError, match="n_trials"):
        expected_max_sharpe(0, 0.01)
    with pytest.raises(DataError, match="sharpe_variance"):
        expected_max_sharpe(5, -0.01)
    with pytest.raises(DataError, match="sharpe_variance"):
        expected_max_sharpe(5, NAN)


def test_deflated_sharpe_one_trial_is_probabilistic_sharpe_and_more_trials_deflate() -> None:
    # One trial: SR0 = 0; normal returns (skew 0, kurtosis 3): z = SR sqrt(T-1) / sqrt(1 + SR^2/2).
    sr, n = 0.1, 101
    expected = norm.cdf(0.1 * 10 / math.sqrt(1 + 0.01 / 2))
    assert deflated_sharpe(sr, 1, 0.01, n, 0.0, 3.0) == pytest.approx(expected, rel=1e-12)
    values = [deflated_sharpe(sr, k, 0.001, n, 0.0, 3.0) for k in (1, 10, 100, 1000)]
    assert values == sorted(values, reverse=True) and values[-1] < values[0]
    assert math.isnan(deflated_sharpe(sr, 10, 0.001, 1, 0.0, 3.0))  # T < 2
    assert math.isnan(deflated_sharpe(1.0, 10, 0.001, 100, 5.0, 3.0))  # variance term <= 0


def test_deflated_sharpe_bad_arguments() -> None:
    with pytest.raises(ConfigError, match="n_trials"):
        deflated_sharpe(0.1, 0, 0.001, 100, 0.0, 3.0)
    with pytest.raises(DataError, match="sharpe_variance"):
        deflated_sharpe(0.1, 10, -0.001, 100, 0.0, 3.0)
    with pytest.raises(DataError, match="skew"):
        deflated_sharpe(0.1, 10, 0.001, 100, NAN, 3.0)


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
